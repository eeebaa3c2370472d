import json

import pytest
import torch

from gptlab.checkpoint import load_checkpoint, load_trainer_state
from gptlab.config import TrainConfig, build_config
from gptlab.data.prepare import prepare
from gptlab.errors import GptlabError
from gptlab.models import GPT
from gptlab.training.metrics import read_metrics
from gptlab.training.schedule import lr_at
from gptlab.training.trainer import train


def test_accumulated_micro_batches_give_the_gradient_of_the_whole_batch(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config)
    x = torch.randint(0, tiny_config.vocab_size, (8, 16))
    y = torch.randint(0, tiny_config.vocab_size, (8, 16))
    _, loss = model(x, y)
    loss.backward()
    whole = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    for xs, ys in zip(x.chunk(4), y.chunk(4)):  # N=4 micro-batches of B=2, scaled as the trainer does
        _, loss = model(xs, ys)
        (loss / 4).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, whole[n], atol=1e-6, rtol=1e-5)


def test_schedule_warms_up_then_decays_to_min_lr():
    cfg = TrainConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=110)
    lrs = [lr_at(s, cfg) for s in range(120)]
    assert lrs[0] < lrs[5] < lrs[9] <= 1e-3
    assert abs(lrs[10] - 1e-3) < 1e-9 and abs(lrs[60] - 5.5e-4) < 1e-9
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[115] == 1e-4


@pytest.fixture
def prepared(corpus_file, tmp_path):
    out = tmp_path / "data"
    prepare([str(corpus_file)], out)
    return out


def tiny_run_config(**overrides):
    base = {"max_iters": 30, "eval_interval": 10, "eval_iters": 2, "log_interval": 5, "device": "cpu"}
    return build_config("tiny", {**base, **overrides})


def test_training_writes_checkpoints_metrics_and_plot(prepared, tmp_path):
    run = tmp_path / "run"
    result = train(tiny_run_config(), prepared, run)
    assert {"config.json", "metrics.jsonl", "loss.png", "best", "last"} <= {p.name for p in run.iterdir()}
    rows = read_metrics(run)
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 10, 20, 30]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5
    assert all(r["tokens_per_s"] > 0 for r in rows if r["kind"] == "train")
    assert result.best_val_loss == min(r["val_loss"] for r in evals)
    best = json.loads((run / "best" / "config.json").read_text())
    assert best["val_loss"] == result.best_val_loss
    state = load_trainer_state(run / "last")
    assert state["step"] == 30 and len(state["optimizers"]) == 1


def test_checkpoint_reload_gives_identical_logits(prepared, tmp_path):
    run = tmp_path / "run"
    train(tiny_run_config(max_iters=10), prepared, run)
    ckpt = load_checkpoint(run / "last")
    again = load_checkpoint(run / "last")
    idx = torch.randint(0, ckpt.config.model.vocab_size, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(idx)[0], again.model(idx)[0], rtol=0, atol=0)
    assert ckpt.model.lm_head.weight is ckpt.model.transformer.wte.weight  # still tied after loading
    assert ckpt.tokenizer.vocab_size == ckpt.config.model.vocab_size


def test_same_seed_same_run(prepared, tmp_path):
    a = train(tiny_run_config(max_iters=10), prepared, tmp_path / "a")
    b = train(tiny_run_config(max_iters=10), prepared, tmp_path / "b")
    assert a.final_val_loss == b.final_val_loss


def test_run_directory_is_not_silently_replaced(prepared, tmp_path):
    run = tmp_path / "run"
    train(tiny_run_config(max_iters=5), prepared, run)
    with pytest.raises(GptlabError, match="--overwrite"):
        train(tiny_run_config(max_iters=5), prepared, run)
    other = tmp_path / "not_a_run"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(GptlabError, match="not a gptlab run"):
        train(tiny_run_config(max_iters=5), prepared, other, overwrite=True)
    assert (other / "notes.txt").read_text() == "mine"


def test_block_size_longer_than_the_data_is_refused(prepared, tmp_path):
    with pytest.raises(GptlabError, match="fewer than block_size"):
        train(tiny_run_config(block_size=100_000), prepared, tmp_path / "run")


def test_after_eval_sees_every_evaluation_and_can_end_training_early(prepared, tmp_path):
    seen = []

    def after_eval(step, losses):
        seen.append((step, losses["val"]))
        return step >= 20  # stop at the evaluation of step 20 of 30

    result = train(tiny_run_config(), prepared, tmp_path / "run", after_eval=after_eval)
    evals = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "eval"]
    assert seen == [(r["step"], r["val_loss"]) for r in evals] and [s for s, _ in seen] == [0, 10, 20]
    assert result.steps == 20 and load_trainer_state(tmp_path / "run" / "last")["step"] == 20
    assert max(r["step"] for r in read_metrics(tmp_path / "run")) == 20  # no step was trained after it
