import json

import pytest
import torch
from safetensors.torch import load_file

from gptlab.cli import main
from gptlab.config import build_config
from gptlab.data.prepare import prepare
from gptlab.errors import GptlabError
from gptlab.training.metrics import read_metrics
from gptlab.training.trainer import Trainer, resume, train


@pytest.fixture
def prepared(corpus_file, tmp_path):
    out = tmp_path / "data"
    prepare([str(corpus_file)], out)
    return out


def config(**overrides):
    # dropout > 0 so that the RNG state matters; grad_accum 2 so that the sampler runs mid-step
    base = {
        "max_iters": 12,
        "eval_interval": 6,
        "checkpoint_interval": 4,
        "eval_iters": 2,
        "log_interval": 1,
        "grad_accum": 2,
        "batch_size": 4,
        "dropout": 0.1,
        "device": "cpu",
        "sample_tokens": 0,
    }
    return build_config("tiny", {**base, **overrides})


def interrupt_at(monkeypatch, step):
    """Make training die (as a killed process would) just before it runs `step` + 1."""
    real = Trainer.train_step

    def train_step(self):
        if self.step == step:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(Trainer, "train_step", train_step)


def curve(run):
    return [(r["kind"], r["step"], r.get("loss"), r.get("lr"), r.get("val_loss")) for r in read_metrics(run)]


@pytest.mark.parametrize(
    "optimizer",
    [
        "adamw",
        pytest.param(
            "muon",
            marks=pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs PyTorch >= 2.9"),
        ),
    ],
)
def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(prepared, tmp_path, monkeypatch, optimizer):
    straight = tmp_path / "straight"
    train(config(optimizer=optimizer), prepared, straight)

    broken = tmp_path / "broken"
    interrupt_at(monkeypatch, 10)  # last/ was written at step 8 (checkpoint_interval); steps 9, 10 are lost
    with pytest.raises(KeyboardInterrupt):
        train(config(optimizer=optimizer), prepared, broken)
    assert max(r["step"] for r in read_metrics(broken)) == 10
    monkeypatch.undo()
    resume(broken)

    assert curve(broken) == curve(straight)  # every loss, lr and evaluation, step for step, exactly
    a, b = load_file(straight / "last" / "model.safetensors"), load_file(broken / "last" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_resume_refuses_what_it_cannot_continue(prepared, tmp_path, corpus_file):
    with pytest.raises(GptlabError, match="not a gptlab run"):
        resume(tmp_path)
    run = tmp_path / "run"
    train(config(max_iters=4, eval_interval=4), prepared, run)
    with pytest.raises(GptlabError, match="already finished its 4 steps"):
        resume(run)

    other = tmp_path / "other.txt"  # the same characters in another order: same tokenizer, other text
    other.write_text("\n".join(reversed(corpus_file.read_text().splitlines())) + "\n")
    prepare([str(other)], tmp_path / "other_data")
    with pytest.raises(GptlabError, match="content hash differs"):
        resume(run, {"max_iters": 8}, data_dir=tmp_path / "other_data")
    with pytest.raises(GptlabError, match="changes the model"):
        resume(run, {"n_layer": 3})

    (run / "last" / "trainer.pt").unlink()
    with pytest.raises(GptlabError, match="no resumable checkpoint"):
        resume(run, {"max_iters": 8})


def test_resume_from_the_command_line_trains_on(prepared, tmp_path, capsys):
    run = tmp_path / "run"
    train(config(max_iters=4, eval_interval=4), prepared, run)
    assert main(["train", "--resume", str(run), "--max_iters", "6"]) == 0
    assert "resuming at step 4" in capsys.readouterr().out
    assert json.loads((run / "last" / "config.json").read_text())["step"] == 6
    assert [r["step"] for r in read_metrics(run) if r["kind"] == "eval"] == [0, 4, 6]
    assert main(["train", "--resume", str(run), "--out", str(tmp_path / "x")]) == 2
    assert "drop --out" in capsys.readouterr().err
    assert (
        main(
            ["train", "--data", str(prepared), "--out", str(tmp_path / "x"), "--init-from", str(run), "--n_layer", "3"]
        )
        == 2
    )
    assert "only --dropout may change" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_a_resume_honours_the_optimizer_settings_given_with_it(prepared, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(config(max_iters=4, eval_interval=4), prepared, run)
    seen, moments = [], []
    real_run = Trainer.run

    def run_and_record(self, *args, **kwargs):
        seen.extend(dict(g) for opt in self.optimizers for g in opt.param_groups)
        moments.extend(state["exp_avg"] for opt in self.optimizers for state in opt.state.values())
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "run", run_and_record)
    resume(run, {"max_iters": 6, "beta2": 0.9, "weight_decay": 0.05})
    assert [g["betas"] for g in seen] == [(0.9, 0.9), (0.9, 0.9)]  # the checkpoint's groups said (0.9, 0.99)
    assert [g["weight_decay"] for g in seen] == [0.05, 0.0]
    assert moments and all(m.abs().sum() > 0 for m in moments)  # the Adam moments themselves came back
