"""Tiny Shakespeare (char): how fast each recipe reaches a validation loss, and modern vs classic per step.

    PYTHONPATH=src:. python -m benchmarks.fast_recipe [--repeats 2] [--target 1.88] [--data DIR]

Race: nanoGPT's CPU recipe (`shakespeare-char-cpu` with its cosine schedule; the preset itself
decays WSD-style) and `shakespeare-char-cpu-fast` train in alternation (a, b, a, b: load on a
shared machine hits both alike), each through the real `train()`, its own periodic evaluation and
checkpoints included. A watcher reads metrics.jsonl as it is written and notes the wall time of
the first evaluation with val loss <= target.
Per step: `modern` (rope, rmsnorm, qk-norm, relu2, untied head, no bias) against the classic
GPT-2 parts of nanoGPT's recipe: same shape, data, batches, seed and training settings.
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

import torch

from benchmarks.common import interleaved, machine_line, markdown_table, prepared_tiny_shakespeare
from gptlab.checkpoint import RunDir, load_checkpoint
from gptlab.config import build_config
from gptlab.data.batches import TokenData
from gptlab.training.metrics import read_metrics
from gptlab.training.trainer import estimate_loss, train

# recipe -> (preset, overrides). nanoGPT's recipe is the baseline of issue 4's race.
BASELINE, FAST, MODERN = "nanoGPT's CPU recipe", "shakespeare-char-cpu-fast", "modern"
RECIPES = {
    BASELINE: ("shakespeare-char-cpu", {"lr_schedule": "cosine"}),
    FAST: ("shakespeare-char-cpu-fast", {}),
    MODERN: ("modern", {}),
}
FINAL_EVAL_BATCHES = 200  # a steadier estimate of the final weights than the runs' own 20-batch evals


def watch_for_target(metrics_path: Path, target: float, start: float, stop: threading.Event, found: dict) -> None:
    """Poll metrics.jsonl; record seconds since `start` and the step of the first eval with val <= target."""
    while not stop.is_set() and "seconds" not in found:
        if metrics_path.is_file():
            for row in read_metrics(metrics_path):
                if row["kind"] == "eval" and row["val_loss"] <= target:
                    found.update(seconds=time.perf_counter() - start, step=row["step"], val_loss=row["val_loss"])
                    break
        stop.wait(0.05)


def label(name: str) -> str:
    """The recipe as a command line would ask for it: its preset and overrides."""
    preset, overrides = RECIPES[name]
    flags = "".join(f" --{k} {v}" for k, v in overrides.items())
    return name if name == preset and not flags else f"{name} (--preset {preset}{flags})"


def run_dir(work: Path, name: str, repeat: int) -> Path:
    preset, overrides = RECIPES[name]
    return work / "-".join([preset, *map(str, overrides.values()), str(repeat)])


def run_recipe(name: str, data_dir: Path, out: Path, target: float) -> dict:
    preset, overrides = RECIPES[name]
    cfg = build_config(preset, {**overrides, "device": "cpu"})
    found: dict = {}
    stop = threading.Event()
    start = time.perf_counter()
    watcher = threading.Thread(target=watch_for_target, args=(RunDir(out).metrics, target, start, stop, found))
    watcher.start()
    try:
        result = train(cfg, data_dir, out, overwrite=True, progress=False)
    finally:
        stop.set()
        watcher.join()
    total = time.perf_counter() - start
    evals = [r for r in read_metrics(out) if r["kind"] == "eval"]
    return {
        "cfg": cfg,
        "total_s": total,
        "steps": result.steps,
        "final_val": result.final_val_loss,
        "evals": evals,
        **found,
    }


def final_val_loss(out: Path, data_dir: Path) -> float:
    ckpt = load_checkpoint(out / "last")
    cfg = ckpt.config
    cfg.train.eval_iters = FINAL_EVAL_BATCHES
    return estimate_loss(ckpt.model, TokenData(data_dir), cfg, torch.device("cpu"), splits=("val",))["val"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--target", type=float, default=1.88)
    ap.add_argument("--data", type=Path, help="a prepared Tiny Shakespeare char directory (default: prepare one)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fast_recipe."))
    data_dir = args.data or prepared_tiny_shakespeare(work)

    print(f"machine: {machine_line()}")
    print(f"command: {' '.join(['python -m benchmarks.fast_recipe', *sys.argv[1:]])}")
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {BASELINE: [], FAST: []}

    def contender(name: str):
        return lambda: runs[name].append(run_recipe(name, data_dir, run_dir(work, name, len(runs[name])), args.target))

    timings = interleaved({name: contender(name) for name in runs}, repeats=args.repeats, warmup=0)
    modern = run_recipe(MODERN, data_dir, run_dir(work, MODERN, 0), args.target)
    load_after = os.getloadavg()
    print(f"load average (1/5/15 min) before {load_before}, after {load_after}\n")

    rows = []
    for name, results in runs.items():
        reached = [r["seconds"] for r in results if "seconds" in r]
        first = results[0]
        c = first["cfg"]
        rows.append(
            [
                label(name),
                f"{c.model.n_layer}/{c.model.n_head}/{c.model.n_embd}, block {c.model.block_size}, batch "
                f"{c.train.batch_size}, lr {c.train.learning_rate:g}",
                f"{statistics.median(reached):.1f} s"
                if len(reached) == len(results)
                else f"not reached in {len(results) - len(reached)} of {len(results)} runs",
                ", ".join(f"{r['seconds']:.1f} s (step {r['step']})" if "seconds" in r else "-" for r in results),
                f"{timings[name]}",
                first["steps"],
                ", ".join(f"{r['final_val']:.4f}" for r in results),
                f"{final_val_loss(run_dir(work, name, 0), data_dir):.4f}",
            ]
        )
    print(f"### Time to val loss <= {args.target} (median of {args.repeats}, interleaved)\n")
    print(
        markdown_table(
            [
                "recipe",
                "shape",
                "time to target (median)",
                "each run",
                "whole run (median ±spread)",
                "steps",
                "final val (own eval)",
                f"final val ({FINAL_EVAL_BATCHES} batches)",
            ],
            rows,
        )
    )
    base_reached = [r["seconds"] for r in runs[BASELINE] if "seconds" in r]
    fast_reached = [r["seconds"] for r in runs[FAST] if "seconds" in r]
    if fast_reached:
        if len(base_reached) == len(runs[BASELINE]):
            ref, what = statistics.median(base_reached), "time to target"
        else:
            ref, what = timings[BASELINE].median, "whole run (it did not reach the target)"
        print(f"\nfast / baseline: {statistics.median(fast_reached) / ref:.2f} of the baseline's {what}")

    print(f"\n### {MODERN} vs classic ({BASELINE}), same training settings: val loss by step\n")
    classic = {r["step"]: r["val_loss"] for r in runs[BASELINE][0]["evals"]}
    mod = {r["step"]: r["val_loss"] for r in modern["evals"]}
    print(
        markdown_table(
            ["step", "classic val", "modern val", "modern - classic"],
            [
                [s, f"{classic[s]:.4f}", f"{mod[s]:.4f}", f"{mod[s] - classic[s]:+.4f}"]
                for s in sorted(classic)
                if s in mod
            ],
        )
    )
    print(
        f"\nwhole runs: classic {runs[BASELINE][0]['total_s']:.1f} s, modern {modern['total_s']:.1f} s (one run each, "
        "not interleaved)"
    )


if __name__ == "__main__":
    main()
