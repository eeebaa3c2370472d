"""Training that is interrupted or goes wrong keeps what it had: signals save and say how to resume,
a NaN loss stops (or skips) without touching good checkpoints, old checkpoints rotate."""

from __future__ import annotations

import math
import os
import signal

import pytest
import torch

from gptlab.checkpoint import load_checkpoint, load_trainer_state
from gptlab.cli import main
from gptlab.config import build_config
from gptlab.data.prepare import prepare
from gptlab.errors import GptlabError
from gptlab.models import GPT
from gptlab.training.metrics import read_metrics
from gptlab.training.trainer import train


@pytest.fixture
def prepared(corpus_file, tmp_path):
    prepare([str(corpus_file)], tmp_path / "data")
    return tmp_path / "data"


def tiny(**overrides):
    base = {
        "max_iters": 8,
        "eval_interval": 100,
        "eval_iters": 1,
        "log_interval": 1,
        "sample_tokens": 0,
        "device": "cpu",
    }
    return build_config("tiny", {**base, **overrides})


def at_training_step(monkeypatch, step: int, action) -> None:
    """Call action() during training step `step` (1-based), from inside the model's forward pass."""
    calls = {"n": 0}
    forward = GPT.forward

    def counting_forward(self, idx, targets=None, cache=None):
        logits, loss = forward(self, idx, targets, cache)
        if self.training:
            calls["n"] += 1
            if calls["n"] == step:
                loss = action(loss)
        return logits, loss

    monkeypatch.setattr(GPT, "forward", counting_forward)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_a_checkpoint_and_says_how_to_resume(prepared, tmp_path, monkeypatch, capsys, sig):
    run = tmp_path / "run"
    at_training_step(monkeypatch, 3, lambda loss: (os.kill(os.getpid(), sig), loss)[1])
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    code = main(
        [
            "train",
            "--data",
            str(prepared),
            "--out",
            str(run),
            "--preset",
            "tiny",
            "--max_iters",
            "8",
            "--eval_interval",
            "100",
            "--eval_iters",
            "1",
            "--sample_tokens",
            "0",
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 128 + sig
    assert f"stopped by {signal.Signals(sig).name} after step 3" in err and f"gptlab train --resume {run}" in err
    assert "error" not in err  # a stop the user asked for is not reported as an error
    assert load_trainer_state(run / "last")["step"] == load_checkpoint(run / "last").info["step"] == 3
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # put back


def test_a_nan_loss_stops_before_the_update_and_names_the_last_good_checkpoint(prepared, tmp_path, monkeypatch):
    run = tmp_path / "run"
    at_training_step(monkeypatch, 5, lambda loss: loss * math.nan)
    with pytest.raises(
        GptlabError, match=rf"loss became nan at step 5; .*last good checkpoint is {run / 'last'} \(step 0\)"
    ):
        train(tiny(), prepared, run, progress=False)
    ckpt = load_checkpoint(run / "last")
    assert ckpt.info["step"] == 0 and load_checkpoint(run / "best").info["step"] == 0
    assert all(torch.isfinite(p).all() for p in ckpt.model.parameters())


def test_nonfinite_loss_skip_skips_only_that_update(prepared, tmp_path, monkeypatch):
    at_training_step(monkeypatch, 5, lambda loss: loss * math.inf)
    result = train(tiny(nonfinite_loss="skip"), prepared, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows if r["kind"] == "skipped"] == [5]
    assert math.isfinite(result.final_val_loss)
    assert all(torch.isfinite(p).all() for p in load_checkpoint(tmp_path / "run" / "last").model.parameters())


def test_keep_last_keeps_the_newest_checkpoints_beside_last_and_best(prepared, tmp_path):
    run = tmp_path / "run"
    train(tiny(max_iters=4, checkpoint_interval=1, keep_last=2), prepared, run, progress=False)
    history = sorted((run / "checkpoints").iterdir())
    assert [p.name for p in history] == ["step-00000003", "step-00000004"]
    assert [load_checkpoint(p).info["step"] for p in history] == [3, 4]
    assert load_checkpoint(run / "last").info["step"] == 4 and (run / "best").is_dir()


def test_keep_last_on_the_command_line_takes_dashes(prepared, tmp_path):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(prepared),
                "--out",
                str(run),
                "--preset",
                "tiny",
                "--max-iters",
                "2",
                "--eval-interval",
                "100",
                "--checkpoint-interval",
                "1",
                "--eval-iters",
                "1",
                "--sample-tokens",
                "0",
                "--device",
                "cpu",
                "--keep-last",
                "2",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]
