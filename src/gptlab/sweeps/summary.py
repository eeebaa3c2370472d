"""Many runs in one table, sorted by best val loss: a sweep's summary (SWEEP/summary.md, summary.csv,
params.png, curves.png) and `gptlab compare RUN...`, which prints the same table for any runs.

A row's time is its training time with evaluations excluded (from the tokens/s logged in
metrics.jsonl, as `gptlab report` computes it), so rows of one table compare steps with steps.
"""

from __future__ import annotations

import csv
import io
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptlab.atomic import write_text_atomic
from gptlab.checkpoint import RunDir
from gptlab.config import build_config
from gptlab.errors import GptlabError
from gptlab.evaluation.report import markdown_table, throughput
from gptlab.sweeps.space import Param
from gptlab.training.metrics import read_metrics


@dataclass
class Row:
    name: str  # the run directory's name (a sweep's trial-NNNN)
    status: str  # complete | pruned | failed | running | waiting | interrupted; compare: complete | unfinished
    params: dict[str, Any]
    curve: list[tuple[int, float]]  # val loss at each evaluation, by step
    steps: int  # steps trained
    max_iters: int
    seconds: float | None  # training time, evaluations excluded
    error: str = ""

    @property
    def best(self) -> tuple[int, float] | None:
        """(step, val loss) of the lowest val loss."""
        return min(self.curve, key=lambda point: point[1]) if self.curve else None

    @property
    def saved_seconds(self) -> float:
        """Of a trial stopped early: the training it skipped, at its own pace."""
        if not self.seconds or not self.steps:
            return 0.0
        return self.seconds * (self.max_iters - self.steps) / self.steps


def config_values(run: dict[str, Any]) -> dict[str, Any]:
    """A run's config.json "run" object as flat key -> value (keys are unique across sections)."""
    return {key: value for section in ("model", "train") for key, value in run[section].items()}


def run_row(run_dir: Path) -> Row:
    """A row for any run directory, from its config.json and metrics.jsonl."""
    run = RunDir(run_dir)
    record = run.read_record()
    if not run.metrics.is_file():
        raise GptlabError(f"{run.path} has no {run.metrics.name}: it never started training; give runs that trained")
    rows = read_metrics(run.metrics)
    speed = throughput(rows, record["run"])
    max_iters = record["run"]["train"]["max_iters"]
    steps = max((r["step"] for r in rows), default=0)
    return Row(
        name=run.path.name,
        status="complete" if steps >= max_iters else "unfinished",
        params=config_values(record["run"]),
        curve=[(r["step"], r["val_loss"]) for r in rows if r["kind"] == "eval"],
        steps=steps,
        max_iters=max_iters,
        seconds=speed["seconds"] if speed else None,
    )


def sort_rows(rows: list[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: (r.best is None, r.best[1] if r.best else 0.0, r.name))


def show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def table(rows: list[Row], keys: list[str]) -> str:
    """The Markdown table: one row per run, best val loss first."""
    header = ("run", "status", "best val loss", "at step", "steps", "train time (s)", *keys)
    lines = []
    for r in sort_rows(rows):
        best = r.best
        lines.append(
            (
                r.name,
                r.status,
                f"{best[1]:.4f}" if best else "—",
                best[0] if best else "—",
                r.steps if r.steps >= r.max_iters else f"{r.steps} of {r.max_iters}",
                f"{r.seconds:.1f}" if r.seconds is not None else "—",
                *(show(r.params[k]) if k in r.params else "—" for k in keys),
            )
        )
    return markdown_table(lines, header)


def table_csv(rows: list[Row], keys: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["run", "status", "best_val_loss", "best_step", "steps", "max_iters", "seconds", *keys, "error"])
    for r in sort_rows(rows):
        best = r.best
        writer.writerow(
            [
                r.name,
                r.status,
                best[1] if best else "",
                best[0] if best else "",
                r.steps,
                r.max_iters,
                "" if r.seconds is None else round(r.seconds, 3),
                *(r.params.get(k, "") for k in keys),
                r.error,
            ]
        )
    return out.getvalue()


def compare_runs(run_dirs: list[Path], csv_path: Path | None = None) -> str:
    """`gptlab compare`: the table of these runs, with a column for each setting that differs among them
    (also written to csv_path as CSV, like a sweep's summary.csv)."""
    rows = [run_row(Path(d)) for d in run_dirs]
    keys = [k for k in rows[0].params if k != "vocab_size" and len({show(r.params.get(k)) for r in rows}) > 1]
    if csv_path is not None:
        write_text_atomic(Path(csv_path), table_csv(rows, keys))
    return table(rows, keys)


def train_command(preset: str | None, data_dir: Path, out: Path, settings: dict[str, Any]) -> str:
    """The `gptlab train` command that trains these settings (train keys over the preset) for longer:
    the preset's max_iters or twice the trial's, whichever is more."""
    base = build_config(preset, {})
    cfg = build_config(preset, settings)
    cfg.train.max_iters = max(base.train.max_iters, 2 * cfg.train.max_iters)
    flags = []
    mine, theirs = config_values(cfg.to_dict()), config_values(base.to_dict())
    for key, value in mine.items():
        if value != theirs[key]:
            flags += [f"--{key.replace('_', '-')}", show(value) if not isinstance(value, float) else f"{value:.6g}"]
    preset_flag = ["--preset", preset] if preset else []
    return shlex.join(["gptlab", "train", *preset_flag, "--data", str(data_dir), "--out", str(out), *flags])


# -- pictures -----------------------------------------------------------------------------------------

STYLE = {
    "complete": {"color": "tab:blue", "marker": "o", "label": "complete"},
    "pruned": {"color": "tab:gray", "marker": "x", "label": "pruned (best before it stopped)"},
}


def save_figure(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


def draw_params(rows: list[Row], space: list[Param], path: Path) -> Path:
    """Best val loss against each swept parameter, one panel per parameter; the best trial starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(space), figsize=(4.5 * len(space), 3.8), sharey=True, squeeze=False)
    done = [r for r in rows if r.status in STYLE and r.best]
    best = min((r for r in done if r.status == "complete"), key=lambda r: r.best[1], default=None)
    for ax, p in zip(axes[0], space):

        def x(value, p=p):
            return p.values.index(value) if p.kind == "choice" else value

        for status, style in STYLE.items():
            points = [(x(r.params[p.key]), r.best[1]) for r in done if r.status == status and p.key in r.params]
            if points:
                ax.scatter(*zip(*points), alpha=0.75, **style)
        if best is not None:
            ax.scatter([x(best.params[p.key])], [best.best[1]], marker="*", s=220, color="tab:red", label="best")
        if p.kind == "choice":
            ax.set_xticks(range(len(p.values)), [show(v) for v in p.values])
            ax.set_xlim(-0.5, len(p.values) - 0.5)
        elif p.log:
            ax.set_xscale("log")
        ax.set_xlabel(p.key)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("best val loss")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def draw_curves(rows: list[Row], path: Path) -> Path:
    """Every trial's val loss by step: complete solid, pruned dashed, the best one bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    curves = [r for r in rows if r.curve]
    complete = [r for r in curves if r.status == "complete"]
    best = min(complete, key=lambda r: r.best[1], default=None)
    for r in curves:
        if r is best:
            continue
        steps, losses = zip(*r.curve)
        pruned = r.status != "complete"
        ax.plot(steps, losses, "--" if pruned else "-", color="tab:gray" if pruned else "tab:blue", alpha=0.6, lw=1)
    if any(r.status == "complete" and r is not best for r in curves):
        ax.plot([], [], "-", color="tab:blue", alpha=0.6, label="complete")
    if any(r.status != "complete" for r in curves):
        ax.plot([], [], "--", color="tab:gray", alpha=0.6, label="pruned or unfinished")
    if best is not None:
        ax.plot(*zip(*best.curve), "-", color="tab:red", lw=2.5, label=f"best: {best.name}")
    trained = [loss for r in curves for step, loss in r.curve if step > 0]
    if trained:  # the untrained start (step 0) sits far above everything else
        ax.set_ylim(min(trained) - 0.05, max(trained) + 0.05)
    ax.set_xlabel("step")
    ax.set_ylabel("val loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


# -- a sweep's summary -----------------------------------------------------------------------------------


@dataclass
class SweepSummary:
    out: Path
    title: str  # one line: the study, its search and its space
    rows: list[Row]
    space: list[Param]
    best_command: str | None  # the best complete trial, trained for longer
    files: list[Path] = field(default_factory=list)

    @property
    def best(self) -> Row | None:
        complete = [r for r in self.rows if r.status == "complete"]
        return min(complete, key=lambda r: r.best[1], default=None)

    def counts(self) -> str:
        statuses = [r.status for r in self.rows]
        return ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(sorted(statuses)))

    def pruning(self) -> str | None:
        pruned = [r for r in self.rows if r.status == "pruned"]
        if not pruned:
            return None
        saved = sum(r.saved_seconds for r in pruned)
        return (
            f"Pruning stopped {len(pruned)} trial{'s' if len(pruned) > 1 else ''} early and saved about {saved:.0f} s "
            "of training (each pruned trial's own pace times the steps it skipped)."
        )

    def lines(self, pictures: bool) -> list[str]:
        parts = [self.title, "", f"{len(self.rows)} trials: {self.counts()}."]
        if self.pruning():
            parts += ["", self.pruning()]
        best = self.best
        if best is not None:
            settings = ", ".join(f"{p.key}={show(best.params[p.key])}" for p in self.space)
            parts += [
                "",
                f"Best: {best.name}, val loss {best.best[1]:.4f} at step {best.best[0]} ({settings}). "
                "To train it for longer:",
                "",
                f"    {self.best_command}",
            ]
        parts += ["", table(self.rows, [p.key for p in self.space])]
        failed = [r for r in self.rows if r.error]
        if failed:
            parts += ["", "Errors:", ""] + [f"- {r.name}: {r.error}" for r in failed]
        if pictures:
            parts += [
                "",
                "![best val loss against each parameter](params.png)",
                "",
                "![every trial's val loss by step](curves.png)",
            ]
        return parts

    def write(self) -> None:
        """SWEEP/summary.md, summary.csv, params.png and curves.png, each replaced whole."""
        md, csv_path = self.out / "summary.md", self.out / "summary.csv"
        write_text_atomic(md, "\n".join([f"# Sweep {self.out.name}", "", *self.lines(pictures=True)]) + "\n")
        write_text_atomic(csv_path, table_csv(self.rows, [p.key for p in self.space]))
        self.files = [md, csv_path]
        if any(r.curve for r in self.rows):
            self.files += [draw_params(self.rows, self.space, self.out / "params.png")]
            self.files += [draw_curves(self.rows, self.out / "curves.png")]

    def text(self) -> str:
        """For the terminal: the summary, and where its files are."""
        return "\n".join(self.lines(pictures=False) + ["", "wrote " + ", ".join(str(f) for f in self.files)])
