"""Tiny Shakespeare (char): the val loss each recipe has reached 60, 120 and 300 s after training starts.

    PYTHONPATH=src:. python -m benchmarks.five_minutes [--repeats 1] [--data DIR]

Contenders, each through the real `train()` (its evaluations, checkpoints, loss plot and text
samples are in the clock), in alternation (a, b, a, b, ...) so that load on a shared machine hits
both alike:
  nanoGPT's CPU recipe    `--preset shakespeare-char-cpu --lr_schedule cosine` (2000 steps)
  shakespeare-char-5min   the preset made to spend 300 s (on a quiet 2-core CPU) as well as it can
A watcher reads metrics.jsonl as it is written and notes the wall time at which each evaluation
appears. "val at t s" is the latest evaluation written by t seconds after `train()` was called: a run
that has already ended keeps its final value. The final weights are also scored on every token of
the val split (`gptlab eval`'s number), which does not depend on the runs' sampled eval batches.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import interleaved, machine_line, markdown_table, prepared_tiny_shakespeare
from gptlab.checkpoint import RunDir, load_checkpoint
from gptlab.config import build_config
from gptlab.evaluation.eval import evaluate_split
from gptlab.training.metrics import read_metrics
from gptlab.training.trainer import train

BASELINE, FIVE_MIN = "nanoGPT's CPU recipe", "shakespeare-char-5min"
RECIPES = {  # name -> (preset, overrides)
    BASELINE: ("shakespeare-char-cpu", {"lr_schedule": "cosine"}),
    FIVE_MIN: ("shakespeare-char-5min", {}),
}
MARKS = (60, 120, 300)  # seconds after train() was called


def watch_evals(metrics_path: Path, start: float, stop: threading.Event, seen: list[dict]) -> None:
    """Poll metrics.jsonl; append each new eval row with the seconds since `start` when it was first seen."""
    while not stop.is_set():
        if metrics_path.is_file():
            evals = [row for row in read_metrics(metrics_path) if row["kind"] == "eval"]
            for row in evals[len(seen) :]:
                seen.append({**row, "seconds": time.perf_counter() - start})
        stop.wait(0.05)


def run_recipe(name: str, data_dir: Path, out: Path) -> dict:
    preset, overrides = RECIPES[name]
    cfg = build_config(preset, {**overrides, "device": "cpu"})
    seen: list[dict] = []
    stop = threading.Event()
    start = time.perf_counter()
    watcher = threading.Thread(target=watch_evals, args=(RunDir(out).metrics, start, stop, seen))
    watcher.start()
    try:
        result = train(cfg, data_dir, out, overwrite=True, progress=False)
    finally:
        total = time.perf_counter() - start
        stop.set()
        watcher.join()
    for row in [row for row in read_metrics(out) if row["kind"] == "eval"][len(seen) :]:
        seen.append({**row, "seconds": total})  # written in the watcher's last 50 ms
    whole = evaluate_split(load_checkpoint(out / "last"))
    return {"cfg": cfg, "total_s": total, "steps": result.steps, "evals": seen, "whole_val": whole.loss}


def val_at(evals: list[dict], seconds: float) -> dict | None:
    """The latest evaluation written by `seconds` (None if none was)."""
    done = [row for row in evals if row["seconds"] <= seconds]
    return done[-1] if done else None


def label(name: str) -> str:
    preset, overrides = RECIPES[name]
    flags = "".join(f" --{k.replace('_', '-')} {v}" for k, v in overrides.items())
    return name if name == preset and not flags else f"{name} (`--preset {preset}{flags}`)"


def shape(cfg) -> str:
    m, t = cfg.model, cfg.train
    return (
        f"{m.n_layer}/{m.n_head}/{m.n_embd}, block {m.block_size}, batch {t.batch_size}, {t.optimizer}, "
        f"{t.lr_schedule}, {t.max_iters} steps"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--data", type=Path, help="a prepared Tiny Shakespeare char directory (default: prepare one)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="five_minutes."))
    data_dir = args.data or prepared_tiny_shakespeare(work)

    print(f"machine: {machine_line()}")
    print(f"command: {' '.join(['python -m benchmarks.five_minutes', *sys.argv[1:]])}")
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {name: [] for name in RECIPES}

    def contender(name: str):
        return lambda: runs[name].append(run_recipe(name, data_dir, work / f"{RECIPES[name][0]}-{len(runs[name])}"))

    timings = interleaved({name: contender(name) for name in RECIPES}, repeats=args.repeats, warmup=0)
    print(f"load average (1/5/15 min) before {load_before}, after {os.getloadavg()}\n")

    def at(results: list[dict], seconds: float) -> str:
        rows = [val_at(r["evals"], seconds) for r in results]
        if any(row is None for row in rows):
            return "-"
        return ", ".join(
            f"{row['val_loss']:.4f} (step {row['step']}{', done' if row['step'] == r['steps'] else ''})"
            for row, r in zip(rows, results)
        )

    print(f"### Val loss at {', '.join(f'{s} s' for s in MARKS)} of wall time ({args.repeats} run(s) each)\n")
    print(
        markdown_table(
            ["recipe", "shape", *(f"val at {s} s" for s in MARKS), "whole run", "final val, whole split"],
            [
                [
                    label(name),
                    shape(results[0]["cfg"]),
                    *(at(results, s) for s in MARKS),
                    str(timings[name]),
                    ", ".join(f"{r['whole_val']:.4f}" for r in results),
                ]
                for name, results in runs.items()
            ],
        )
    )
    eval_batches = ", ".join(f"{name}: {results[0]['cfg'].train.eval_iters}" for name, results in runs.items())
    print(
        "\n(step N, done): the run had ended, at step N, by then. The val columns are the runs' own estimates "
        f"(batches per estimate: {eval_batches}); the last column scores the final weights on every val token."
    )
    for name, results in runs.items():
        print(f"\n### {label(name)}: every evaluation (first run)\n")
        print(
            markdown_table(
                ["step", "wall s", "train loss", "val loss"],
                [
                    [row["step"], f"{row['seconds']:.1f}", f"{row['train_loss']:.4f}", f"{row['val_loss']:.4f}"]
                    for row in results[0]["evals"]
                ],
            )
        )
    medians = {name: statistics.median(r["total_s"] for r in results) for name, results in runs.items()}
    print(f"\nwhole runs (median): {', '.join(f'{name} {s:.1f} s' for name, s in medians.items())}")


if __name__ == "__main__":
    main()
