"""Regenerate the "what fits" table of docs/scaling.md from gptlab's own memory estimate.

    python docs/make_scaling_table.py           print the table
    python docs/make_scaling_table.py --write   rewrite it in docs/scaling.md (between the fits markers)

Every number comes from gptlab.models.info.training_memory, the estimate that `gptlab info` prints
and the trainer checks before it allocates anything: float32 weights, gradients and AdamW state per
device (all of them under DDP, a 1/N shard plus the gathered root and two blocks under FSDP), plus the
activations of one micro-batch of 1024-token sequences.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from gptlab.config import load_preset
from gptlab.models.info import param_counts, training_memory

MODELS = ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"]
GPUS = [(1, 24), (8, 24), (1, 80), (8, 80)]  # (devices, GiB each)
RESERVED_GiB = 1  # the CUDA context and the allocator's slack, which the estimate leaves out
GiB = 2**30
DOC = Path(__file__).parent / "scaling.md"
START, END = "<!-- fits:start -->", "<!-- fits:end -->"


def per_device(model: str, parallel: str, devices: int) -> tuple[float, float]:
    """Bytes per device: the state (weights, gradients, AdamW, gathered units) and one sequence's activations."""
    cfg = load_preset(model)
    cfg.train.parallel = parallel
    memory = training_memory(cfg, 1, devices)
    return memory["total"] - memory["activations"], memory["activations"]


def fits(state: float, activations: float, gib: int) -> str:
    """Whether a device of `gib` holds the state and at least one sequence, and the largest micro-batch that fits."""
    batch = int(((gib - RESERVED_GiB) * GiB - state) // activations)
    return f"yes, ≤ {batch}" if batch >= 1 else "no"


def table() -> str:
    header = ["model", "parameters", "state per device, DDP", "state per device, FSDP x 8"]
    header += [f"{n} x {gib} GB, {p.upper()}" for n, gib in GPUS for p in ("ddp", "fsdp")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in MODELS:
        n = sum(param_counts(load_preset(model).model).values())
        # DDP's memory per device does not depend on the number of devices; FSDP's shards do.
        estimate = {(p, d): per_device(model, p, d) for p, d in (("ddp", 1), ("fsdp", 1), ("fsdp", 8))}
        row = [
            model,
            f"{n / 1e6:,.0f}M",
            f"{estimate['ddp', 1][0] / GiB:.1f} GiB",
            f"{estimate['fsdp', 8][0] / GiB:.1f} GiB",
        ]
        for devices, gib in GPUS:
            row += [fits(*estimate["ddp", 1], gib), fits(*estimate["fsdp", devices], gib)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the table in docs/scaling.md")
    args = parser.parse_args()
    if not args.write:
        print(table())
        return
    text = DOC.read_text()
    block = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    DOC.write_text(block.sub(lambda _: f"{START}\n{table()}\n{END}", text))
    print(f"wrote the table into {DOC}")


if __name__ == "__main__":
    main()
