"""Metrics as JSON lines (optionally mirrored to TensorBoard), and the loss-curve picture drawn from them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gptlab.atomic import write_text_atomic
from gptlab.checkpoint import RunDir
from gptlab.errors import GptlabError


def require_tensorboard() -> None:
    try:
        import torch.utils.tensorboard  # noqa: F401  (needs the tensorboard package)
    except ImportError:
        raise GptlabError(
            "--tensorboard true needs the tensorboard package: pip install 'gptlab[tensorboard]', or leave it off"
        ) from None


class MetricsLog:
    """Appends one JSON object per line: {"kind": "train"|"eval", "step": ..., ...}; with
    tensorboard, each number also goes to RUN/tensorboard as the scalar "kind/name"."""

    def __init__(self, run_dir: Path, tensorboard: bool = False, start_step: int = 0):
        self.path = RunDir(run_dir).metrics
        self.tensorboard = None
        if tensorboard:
            require_tensorboard()
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides what an interrupted run logged after the checkpoint it resumes from.
            self.tensorboard = SummaryWriter(
                str(RunDir(run_dir).tensorboard), purge_step=start_step + 1 if start_step else None
            )

    def write(self, kind: str, step: int, **values: Any) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
        if self.tensorboard is not None:
            for name, value in values.items():
                self.tensorboard.add_scalar(f"{kind}/{name}", value, step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop the rows logged after `step`: what an interrupted run did past the checkpoint it resumes from."""
    path = RunDir(run_dir).metrics
    if not path.is_file():
        return
    keep = [row for row in parse_rows(path.read_text(), path) if row["step"] <= step]
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in keep))


def parse_rows(text: str, path: Path | str = "metrics.jsonl") -> list[dict[str, Any]]:
    """The JSON rows of metrics.jsonl; a last line cut short by a crash mid-write is dropped."""
    lines = [line for line in text.splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue
            row = None
        if not (isinstance(row, dict) and isinstance(row.get("kind"), str) and isinstance(row.get("step"), int)):
            raise GptlabError(
                f"{path} line {i + 1} is not a metrics row (a JSON object with kind and step): the file is corrupt; "
                "restore it or train again"
            )
        rows.append(row)
    return rows


def read_metrics(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = RunDir(path).metrics
    try:
        return parse_rows(path.read_text(), path)
    except UnicodeDecodeError:
        raise GptlabError(f"{path} is not text: the file is corrupt; restore it or train again") from None


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
        ax.plot(
            [r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", alpha=0.3, label="train (batch)"
        )
    if evals:
        ax.plot(
            [r["step"] for r in evals],
            [r["train_loss"] for r in evals],
            "o-",
            color="tab:blue",
            label="train (estimate)",
        )
        ax.plot(
            [r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", color="tab:orange", label="val (estimate)"
        )
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(Path(run_dir).name)
    ax.grid(alpha=0.3)
    ax.legend()
    out = Path(out) if out else RunDir(run_dir).loss_plot
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
