"""How close is the training-memory estimate (models.info.training_memory, which `gptlab info` prints
and `gptlab train` checks against free memory) to what training really uses?

Each configuration runs in a fresh process: it builds the model and AdamW and takes two training
steps; measured = peak memory minus the memory in use before the model existed (CPU: peak resident
set size from getrusage; CUDA: torch.cuda.max_memory_allocated). Run:

    python benchmarks/memory_estimate.py [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_line, markdown_table  # noqa: E402

CONFIGS = {
    # name: overrides of the tiny preset
    "4L 128w T64 B12 (shakespeare-char-cpu)": dict(
        n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, vocab_size=65
    ),
    "6L 384w T256 B16": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=16, vocab_size=65),
    "6L 384w T256 B16, manual attention": dict(
        n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=16, vocab_size=65, attention="manual"
    ),
    "12L 768w T256 B4 V50304 (GPT-2 small)": dict(
        n_layer=12, n_head=12, n_embd=768, block_size=256, batch_size=4, vocab_size=50304
    ),
}
MiB = 2**20


def measure(overrides: dict, device_name: str) -> dict:
    """In this (fresh) process: peak bytes that two training steps add, and the estimate."""
    import torch

    from gptlab.config import build_config
    from gptlab.models import build_model
    from gptlab.models.info import training_memory
    from gptlab.training.optim import build_optimizers

    device = torch.device(device_name)
    cfg = build_config("tiny", {**overrides, "device": device_name})
    B, T, V = cfg.train.batch_size, cfg.model.block_size, cfg.model.vocab_size
    x = torch.randint(0, V, (B, T), device=device)
    y = torch.randint(0, V, (B, T), device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        torch.set_flush_denormal(True)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    model = build_model(cfg.model).to(device)
    optimizers = build_optimizers(model, cfg.train)
    for _ in range(2):
        _, loss = model(x, y)
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    est = training_memory(cfg, cfg.train.batch_size)
    return {
        "measured": peak - before,
        "estimate": est["total"],
        "state": est["total"] - est["activations"],
        "activations": est["activations"],
        "params": est["weights"] // 4,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one config in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(CONFIGS[args.one], args.device)))
        return
    rows = []
    for name in CONFIGS:
        out = subprocess.run(
            [sys.executable, __file__, "--device", args.device, "--one", name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rows.append(
            [
                name,
                f"{r['params'] / 1e6:.2f}M",
                f"{r['state'] / MiB:,.0f}",
                f"{r['activations'] / MiB:,.0f}",
                f"{r['estimate'] / MiB:,.0f}",
                f"{r['measured'] / MiB:,.0f}",
                f"{r['estimate'] / r['measured']:.2f}",
            ]
        )
    print(f"machine: {machine_line()}; device {args.device}\n")
    print(
        markdown_table(
            [
                "config",
                "params",
                "state MiB (est.)",
                "activations MiB (est.)",
                "estimate MiB",
                "measured peak MiB",
                "estimate / measured",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
