"""The presets sized to a time budget on a 2-core CPU (issue 19): `shakespeare-char-5min` (Tiny
Shakespeare in 300 s) and `shakespeare-char-2min` (what `make demo` trains). What they reach in
their time is proved by benchmarks/five_minutes.py and the README's demo line, not by a test; this
checks that each trains as written and improves on a run of a few seconds."""

import pytest

from gptlab.config import build_config, load_preset
from gptlab.data.prepare import prepare
from gptlab.training.metrics import read_metrics
from gptlab.training.schedule import lr_at
from gptlab.training.trainer import train


@pytest.mark.parametrize("preset", ["shakespeare-char-5min", "shakespeare-char-2min"])
def test_time_budget_preset_trains_and_improves_on_a_short_run(preset, corpus_file, tmp_path):
    prepare([str(corpus_file)], tmp_path / "data")
    short = {"max_iters": 40, "eval_interval": 20, "eval_iters": 4, "sample_tokens": 0, "device": "cpu"}
    cfg = build_config(preset, short)
    result = train(cfg, tmp_path / "data", tmp_path / "run", progress=False)
    evals = [row for row in read_metrics(tmp_path / "run") if row["kind"] == "eval"]
    assert [row["step"] for row in evals] == [0, 20, 40] and result.steps == 40
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0, evals  # from ~ln(vocab) towards the text


@pytest.mark.parametrize("preset", ["shakespeare-char-5min", "shakespeare-char-2min"])
def test_time_budget_preset_holds_its_peak_then_decays_to_zero(preset):
    t = load_preset(preset).train
    assert t.lr_schedule == "wsd" and t.min_lr == 0.0
    decay_start = t.max_iters - round(t.decay_fraction * t.max_iters)
    assert lr_at(t.warmup_iters, t) == lr_at(decay_start, t) == t.learning_rate
    assert lr_at(t.max_iters - 1, t) < 0.01 * t.learning_rate
