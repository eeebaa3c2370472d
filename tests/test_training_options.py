import pytest
import torch

from gptlab.checkpoint import RunDir, load_checkpoint, load_trainer_state
from gptlab.config import build_config
from gptlab.data.batches import TokenData
from gptlab.data.prepare import prepare
from gptlab.device import peak_flops
from gptlab.errors import GptlabError
from gptlab.models.info import flops_per_token
from gptlab.training.distributed import SINGLE
from gptlab.training.metrics import read_metrics
from gptlab.training.trainer import Trainer, train

CPU = torch.device("cpu")


@pytest.fixture
def prepared(corpus_file, tmp_path):
    out = tmp_path / "data"
    prepare([str(corpus_file)], out)
    return out


def tiny(**overrides):
    base = {"max_iters": 8, "eval_interval": 8, "eval_iters": 2, "log_interval": 4, "device": "cpu", "sample_tokens": 0}
    return build_config("tiny", {**base, **overrides})


def tiny_trainer(prepared, tmp_path, **overrides) -> Trainer:
    cfg = tiny(**overrides)
    data = TokenData(prepared)
    cfg.model.vocab_size = data.vocab_size
    return Trainer(cfg, data, tmp_path / "run", SINGLE, CPU)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mixed_precision_trains(prepared, tmp_path, dtype):
    result = train(tiny(dtype=dtype, max_iters=10, eval_interval=10, learning_rate=1e-2), prepared, tmp_path / "run")
    evals = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "eval"]
    assert result.final_val_loss < evals[0]["val_loss"] - 0.3
    scaler = load_trainer_state(tmp_path / "run" / "last")["scaler"]
    assert ("scale" in scaler) == (dtype == "float16")  # the GradScaler runs (and is saved) only for fp16


def test_fp16_overflow_skips_the_step_and_backs_off_the_scale(prepared, tmp_path):
    trainer = tiny_trainer(prepared, tmp_path, dtype="float16")
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # fp16 gradients overflow at this scale
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train_step()
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))  # step skipped
    assert trainer.scaler.get_scale() == 2.0**39
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    trainer.train_step()
    assert not all(torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))


def test_compile_option_compiles_the_training_forward(prepared, tmp_path, monkeypatch):
    compiled = []

    def fake_compile(module):  # torch.compile itself is too slow for the test suite
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    trainer = tiny_trainer(prepared, tmp_path, compile=True)
    assert compiled == [trainer.model] and trainer.forward is trainer.model
    tiny_trainer(prepared, tmp_path)
    assert len(compiled) == 1  # off by default


def test_flops_per_token_and_mfu(prepared, tmp_path, tiny_config):
    L, C, T, V = tiny_config.n_layer, tiny_config.n_embd, tiny_config.block_size, tiny_config.vocab_size
    # per block: c_attn 3C^2 + c_proj C^2 + c_fc 4C^2 + mlp c_proj 4C^2; the (tied) head V*C; attention 12*L*C*T
    assert flops_per_token(tiny_config) == 6 * (12 * L * C * C + V * C) + 12 * L * C * T
    assert peak_flops(CPU) is None and peak_flops(CPU, 5e12) == 5e12
    train(tiny(peak_flops=1e9), prepared, tmp_path / "run")
    rows = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    fpt = flops_per_token(load_checkpoint(tmp_path / "run").config.model)
    assert rows and all(r["mfu"] == pytest.approx(fpt * r["tokens_per_s"] / 1e9) for r in rows)
    train(tiny(), prepared, tmp_path / "run2")  # no known peak on a CPU: no MFU column
    assert all("mfu" not in r for r in read_metrics(tmp_path / "run2"))


def test_text_samples_are_written_at_each_evaluation(prepared, tmp_path):
    train(tiny(sample_tokens=40, eval_interval=4), prepared, tmp_path / "run")
    text = RunDir(tmp_path / "run").samples.read_text()
    sections = text.split("--- step ")[1:]
    assert [s.split(",")[0] for s in sections] == ["0", "4", "8"]
    assert all(len(s.split("\n", 1)[1].strip()) >= 20 for s in sections)  # decoded text, not ids
    assert sections[0] != sections[-1]  # the same seed each time: what changed is the model


def test_tensorboard_mirrors_the_metrics(prepared, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny(tensorboard=True), prepared, tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    logged = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert [e.step for e in events.Scalars("train/loss")] == [r["step"] for r in logged]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([r["loss"] for r in logged])
    assert {"eval/val_loss", "train/tokens_per_s"} <= set(events.Tags()["scalars"])


def test_init_from_starts_where_the_checkpoint_left_off(prepared, tmp_path, corpus_file):
    first = train(tiny(max_iters=10, eval_interval=10), prepared, tmp_path / "first")
    tuned = tmp_path / "tuned"
    train(tiny(max_iters=4, eval_interval=4, n_layer=3, dropout=0.1), prepared, tuned, init_from=tmp_path / "first")
    evals = [r for r in read_metrics(tuned) if r["kind"] == "eval"]
    assert evals[0]["val_loss"] == first.final_val_loss  # same weights, same evaluation batches
    cfg = load_checkpoint(tuned / "last").config.model
    assert cfg.n_layer == 2 and cfg.dropout == 0.1  # the architecture comes from the checkpoint
    assert load_trainer_state(tuned / "last")["step"] == 4  # a new run: the optimizer starts afresh

    other = tmp_path / "other.txt"
    other.write_text("zebra quartz vex " * 200)  # other characters: another char vocabulary
    prepare([str(other)], tmp_path / "other_data")
    with pytest.raises(GptlabError, match="another tokenizer"):
        train(tiny(), tmp_path / "other_data", tmp_path / "bad", init_from=tmp_path / "first")
