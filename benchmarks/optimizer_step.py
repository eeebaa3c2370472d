"""Time one training step (forward + backward + optimizer) with each optimizer setting, side by side.

    python -m benchmarks.optimizer_step [--preset shakespeare-char-cpu] [--device cpu] [--repeats 7]

Contenders: AdamW unfused (foreach), AdamW fused (what gptlab uses), and Muon + AdamW. The
forward and backward are the same in all three, so the differences are the optimizers'.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import interleaved, machine_line, markdown_table
from gptlab.config import build_config
from gptlab.device import resolve_device, setup_device
from gptlab.models import GPT
from gptlab.training.optim import build_optimizers


def make_step(cfg, device, optimizer: str, fused: bool):
    torch.manual_seed(0)
    model = GPT(cfg.model).to(device)
    cfg.train.optimizer = optimizer
    optimizers = build_optimizers(model, cfg.train)
    if not fused:  # the same groups through the foreach (unfused) AdamW
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in optimizers[-1].param_groups]
        optimizers[-1] = torch.optim.AdamW(
            groups, lr=cfg.train.learning_rate, betas=(cfg.train.beta1, cfg.train.beta2), foreach=True
        )
    x = torch.randint(0, cfg.model.vocab_size, (cfg.train.batch_size, cfg.model.block_size), device=device)

    def step():
        for _ in range(5):
            _, loss = model(x, x)
            loss.backward()
            for opt in optimizers:
                opt.step()
                opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="shakespeare-char-cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    cfg = build_config(args.preset, {"vocab_size": 65})
    device = resolve_device(args.device)
    setup_device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    fns = {
        "adamw (foreach)": make_step(cfg, device, "adamw", fused=False),
        "adamw (fused)": make_step(cfg, device, "adamw", fused=True),
        "muon + adamw (fused)": make_step(cfg, device, "muon", fused=True),
    }
    timings = interleaved(fns, repeats=args.repeats, sync=sync)
    base = timings["adamw (fused)"].median
    print(machine_line())
    print(
        f"{args.preset}, batch {cfg.train.batch_size} x block {cfg.model.block_size}, {torch.get_num_threads()} "
        "threads; "
        f"5 steps per sample, {args.repeats} samples, interleaved"
    )
    print(
        markdown_table(
            ["optimizer", "median ms/step", "spread", "vs fused adamw"],
            [
                [name, f"{t.median / 5 * 1e3:.1f}", f"±{100 * t.spread:.0f}%", f"{t.median / base:.2f}x"]
                for name, t in timings.items()
            ],
        )
    )


if __name__ == "__main__":
    main()
