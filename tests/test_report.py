import json
from pathlib import Path

from gptlab.checkpoint import load_checkpoint
from gptlab.cli import main
from gptlab.evaluation.eval import evaluate_split
from gptlab.evaluation.report import write_report
from gptlab.training.metrics import read_metrics


def test_report_holds_config_data_losses_metrics_throughput_and_samples(tiny_run, tmp_path):
    page = write_report(tiny_run, tmp_path / "report.md", samples=2, sample_tokens=50)
    text = page.read_text()
    for heading in ("## Model and training", "## Data", "## Loss", "## Throughput", "## Samples"):
        assert heading in text
    assert (tmp_path / "report_loss.png").stat().st_size > 1000 and "![loss curves](report_loss.png)" in text
    assert "| model.n_layer | 2 |" in text and "| train.max_iters | 60 |" in text
    data_dir = json.loads((tiny_run / "config.json").read_text())["data_dir"]
    meta = json.loads((Path(data_dir) / "meta.json").read_text())
    assert f"{meta['sizes']['val_tokens']:,} tokens" in text and "char, vocabulary" in text
    evals = [r for r in read_metrics(tiny_run) if r["kind"] == "eval"]
    assert f"{evals[-1]['val_loss']:.4f}" in text
    result = evaluate_split(load_checkpoint(tiny_run), "val")
    assert f"{result.bits_per_byte:.4f} ± {result.per_byte_ci():.4f}" in text
    assert text.count("```text") == 2
    assert "tokens/s (median" in text
    assert not list(tmp_path.glob(".*.tmp"))


def test_report_from_the_command_line(tiny_run, tmp_path, capsys):
    assert main(["report", str(tiny_run), "--out", str(tmp_path / "r.md"), "--no-eval"]) == 0
    assert f"wrote {tmp_path / 'r.md'}" in capsys.readouterr().out
    assert "Whole val split" not in (tmp_path / "r.md").read_text()
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a run directory" in err
