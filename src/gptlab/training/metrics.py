"""Metrics as JSON lines, and the loss-curve picture drawn from them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"


class MetricsLog:
    """Appends one JSON object per line: {"kind": "train"|"eval", "step": ..., ...}."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / METRICS

    def write(self, kind: str, step: int, **values: Any) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = path / METRICS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss(run_dir: Path, out: Path | None = None) -> Path:
    """Training loss per step (faint) and the periodic train/val estimates (bold)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", alpha=0.3, label="train (batch)")
    if evals:
        ax.plot([r["step"] for r in evals], [r["train_loss"] for r in evals], "o-", color="tab:blue", label="train (estimate)")
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", color="tab:orange", label="val (estimate)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(Path(run_dir).name)
    ax.grid(alpha=0.3)
    ax.legend()
    out = Path(out) if out else Path(run_dir) / LOSS_PLOT
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
