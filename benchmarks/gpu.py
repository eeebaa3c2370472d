"""GPU benchmark: GPT-2 124M training throughput and MFU, and time to val loss 1.47 on Tiny Shakespeare.

    python -m benchmarks.gpu --data PATH/tinyshakespeare.txt --out DIR [--max-seconds 540]
    python -m benchmarks.gpu --smoke --out DIR      # CPU, tiny shapes, a few steps: checks the code paths

Two parts, in this order, both with bf16 autocast and SDPA (flash attention on CUDA):
  throughput  GPT-2 124M shapes (12 layers, 12 heads, 768 wide, block 1024, vocab 50304), eager and
              torch.compile timed in alternation; tokens/s and MFU (6N + 12*L*H*Q*T FLOPs per token).
  target      the shakespeare-char preset (nanoGPT's recipe: about 3 minutes to val 1.47 on an A100),
              compiled, trained by gptlab's own Trainer.train_step, until val loss <= 1.47, the preset's
              last step, or the time budget.
Everything it writes goes under --out: results.md and results.json (rewritten after each part, so
a run cut short keeps what it measured) and scratch/ (prepared data, compiler caches; removed at
the end unless --keep-scratch). Needs gptlab's own dependencies and nothing else (no transformers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
TARGET_VAL_LOSS = 1.47


def log(msg: str) -> None:
    print(msg, flush=True)


class Budget:
    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


class Results:
    """What was measured so far, rewritten to --out after each part."""

    def __init__(self, out: Path, header: dict):
        self.out, self.header, self.parts = out, header, {}

    def add(self, part: str, markdown: str, data: dict) -> None:
        self.parts[part] = (markdown, data)
        measured = {key: value for _, data in self.parts.values() for key, value in data.items()}
        (self.out / "results.json").write_text(json.dumps({**self.header, **measured}, indent=2) + "\n")
        (self.out / "results.md").write_text(self.markdown())

    def markdown(self) -> str:
        lines = ["## GPU: GPT-2 124M throughput and time to val 1.47"] + [m for m, _ in self.parts.values()]
        lines.append(f"_Command: `{self.header['command']}`. Machine: {self.header['machine']}._")
        return "\n\n".join(lines) + "\n"


def train_steps(model, optimizers, batches, steps: int, amp, grad_clip: float = 1.0) -> None:
    import torch

    for i in range(steps):
        x, y = batches[i % len(batches)]
        with amp():
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)


def throughput(args, device, results: Results, budget: Budget, scratch: Path) -> None:
    import torch

    from benchmarks.common import interleaved, markdown_table
    from gptlab.config import ModelConfig, TrainConfig
    from gptlab.device import autocast, peak_flops
    from gptlab.models import GPT
    from gptlab.models.info import flops_per_token
    from gptlab.training.optim import build_optimizers

    if args.smoke:
        mc = ModelConfig(vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=64, dropout=0.0)
        batch_size, steps, repeats = 2, 2, 2
    else:  # GPT-2 124M; vocab padded from 50257 to a multiple of 64, as nanoGPT does
        mc = ModelConfig(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0)
        batch_size, steps, repeats = args.batch_size, 20, 5
    tc = TrainConfig(learning_rate=6e-4, beta2=0.95)
    dtype = "float32" if device.type == "cpu" else "bfloat16"

    def amp():
        return autocast(device, dtype)

    def measure(batch_size: int):
        """Time eager and compiled training steps at this batch size; return only numbers, so an
        out-of-memory error leaves no tensors behind."""
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        batches = [
            tuple(torch.randint(mc.vocab_size, (batch_size, mc.block_size), generator=gen).to(device) for _ in "xy")
            for _ in range(4)
        ]
        runs = {}
        for name, compiled in (("eager", False), ("torch.compile", True)):
            if compiled and args.no_compile:
                continue
            model = GPT(mc).to(device)
            runs[name] = (torch.compile(model) if compiled else model, build_optimizers(model, tc))
        log(
            f"throughput: batch {batch_size}; timing {', '.join(runs)} in alternation ({repeats} x {steps} steps "
            "after an untimed warm-up that compiles)"
        )
        sync = torch.cuda.synchronize if device.type == "cuda" else None
        timings = interleaved(
            {name: (lambda n=net, o=opt: train_steps(n, o, batches, steps, amp)) for name, (net, opt) in runs.items()},
            repeats=repeats,
            warmup=1,
            sync=sync,
        )
        return timings, flops_per_token(mc), model.num_params()

    log(
        f"throughput: {mc.n_layer} layers, {mc.n_head} heads, {mc.n_embd} wide, block {mc.block_size}, vocab "
        f"{mc.vocab_size}"
    )
    while True:
        try:
            timings, fpt, n_params = measure(batch_size)
            break
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
        batch_size //= 2
        torch._dynamo.reset()
        torch.cuda.empty_cache()
        log(f"throughput: out of memory; retrying with batch {batch_size}")

    peak = peak_flops(device, (args.peak_tflops or 0) * 1e12)
    tokens = steps * batch_size * mc.block_size
    rows, data = [], {}
    eager_tok_s = tokens / timings["eager"].median
    for name, t in timings.items():
        tok_s = tokens / t.median
        mfu = fpt * tok_s / peak if peak else None
        rows.append(
            [
                name,
                f"{tok_s:,.0f}",
                f"±{100 * t.spread:.0f}%",
                f"{tok_s / eager_tok_s:.2f}",
                f"{100 * mfu:.1f}%" if mfu else "n/a (unknown peak)",
            ]
        )
        data[name] = {
            "tokens_per_s": tok_s,
            "spread": t.spread,
            "mfu": mfu,
            "step_seconds": [s / steps for s in t.samples],
        }
    sdpa = flash_status(device)
    markdown = (
        f"### Throughput, GPT-2 124M shapes\n\n"
        f"{mc.n_layer} layers, {mc.n_head} heads, {mc.n_embd} wide, block {mc.block_size}, vocab {mc.vocab_size} "
        f"({n_params / 1e6:.1f}M parameters without position embeddings), batch {batch_size}, "
        f"{'bf16 autocast' if dtype == 'bfloat16' else 'float32'}, SDPA ({sdpa}), AdamW (fused on CUDA), clip 1.0. "
        f"Contenders timed in alternation, {repeats} repeats of {steps} steps after one untimed warm-up (which "
        "compiles). "
        f"MFU = tokens/s x {fpt / 1e6:.0f} MFLOP/token (6N + 12LHQT) / "
        + (f"peak {peak / 1e12:.0f} TFLOP/s (dense bf16)" if peak else "an unknown peak (pass --peak-tflops)")
        + ".\n\n"
        + markdown_table(["", "tokens/s (median)", "spread", "ratio vs eager", "MFU"], rows)
    )
    results.add(
        "throughput",
        markdown,
        {"throughput": {"batch_size": batch_size, "flops_per_token": fpt, "peak_flops": peak, "sdpa": sdpa, **data}},
    )
    log(markdown)
    if device.type == "cuda":
        torch.cuda.empty_cache()


def flash_status(device) -> str:
    """Whether the flash kernel runs for the attention gptlab uses in training (causal, no mask)."""
    import torch
    import torch.nn.functional as F

    if device.type != "cuda":
        return "CPU kernels"
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 2, 128, 64, device=device, dtype=torch.bfloat16)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            F.scaled_dot_product_attention(q, q, q, is_causal=True)
        return "flash attention available and chosen first by the dispatcher"
    except RuntimeError as e:
        return f"flash attention NOT available here: {str(e).splitlines()[0][:120]}"


def time_to_target(args, device, results: Results, budget: Budget, scratch: Path) -> None:
    import torch

    from gptlab.config import build_config
    from gptlab.data.batches import TokenData
    from gptlab.data.prepare import prepare
    from gptlab.training.distributed import SINGLE
    from gptlab.training.trainer import Trainer, estimate_loss

    preset = "tiny" if args.smoke else "shakespeare-char"
    overrides = {"max_iters": 30, "eval_interval": 10, "eval_iters": 2} if args.smoke else {}
    target = 3.5 if args.smoke else TARGET_VAL_LOSS
    data_dir = scratch / "data"
    if not (data_dir / "meta.json").is_file():
        prepare([str(args.data)], data_dir)
    data = TokenData(data_dir)
    cfg = build_config(preset, overrides)
    cfg.model.vocab_size = data.vocab_size
    mc, tc = cfg.model, cfg.train
    data.check_fits(mc.block_size, tc.batch_size)
    if device.type == "cpu":
        tc.dtype = "float32"
    compiled = tc.compile = not args.no_compile
    log(
        f"target: preset {preset} ({mc.n_layer}/{mc.n_head}/{mc.n_embd}, block {mc.block_size}, batch {tc.batch_size}, "
        f"dropout {mc.dropout}, {tc.max_iters} steps), {'compiled' if compiled else 'eager'}, until val <= {target}; "
        f"{budget.left():.0f} s of budget left"
    )

    start = time.perf_counter()
    trainer = Trainer(
        cfg, data, scratch / "run", SINGLE, device
    )  # gptlab's own step: model, optimizers, schedule, sampler
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    train_seconds = eval_seconds = 0.0
    evals, reached, stop_reason = [], None, f"the preset's last step ({tc.max_iters})"
    step = 0
    trainer.model.train()
    while True:
        if step % tc.eval_interval == 0 or step == tc.max_iters:
            t = time.perf_counter()
            val = estimate_loss(trainer.model, data, cfg, device, splits=("val",))["val"]
            eval_seconds += time.perf_counter() - t
            evals.append(
                {"step": step, "val_loss": val, "wall_s": time.perf_counter() - start, "train_s": train_seconds}
            )
            log(
                f"target: step {step}: val {val:.4f} (wall {evals[-1]['wall_s']:.0f} s, training {train_seconds:.0f} s)"
            )
            if val <= target:
                reached = evals[-1]
                stop_reason = f"val {val:.4f} <= {target}"
                break
        if step == tc.max_iters:
            break
        if budget.left() < 10:
            stop_reason = "the time budget (--max-seconds)"
            break
        t = time.perf_counter()
        trainer.train_step()
        step += 1
        if step % tc.log_interval == 0:
            sync()  # so the step times are honest
        train_seconds += time.perf_counter() - t
    sync()
    wall = time.perf_counter() - start
    tokens = step * tc.batch_size * mc.block_size
    result = {
        "preset": preset,
        "compiled": compiled,
        "target": target,
        "steps": step,
        "stopped_at": stop_reason,
        "wall_s": wall,
        "train_s": train_seconds,
        "eval_s": eval_seconds,
        "tokens_per_s": tokens / train_seconds if train_seconds else None,
        "evals": evals,
        "reached": reached,
    }
    if reached:
        verdict = (
            f"val loss {reached['val_loss']:.4f} <= {target} at step {reached['step']}: "
            f"**{reached['wall_s']:.0f} s wall** (compile, evaluation and data included; "
            f"{reached['train_s']:.0f} s of training steps). nanoGPT: about 180 s on an A100."
        )
    else:
        best = min(e["val_loss"] for e in evals)
        verdict = f"val loss {target} NOT reached: stopped at step {step} by {stop_reason}; best val {best:.4f}."
    markdown = (
        f"### Time to val loss {target}, `{preset}` preset\n\n"
        f"{mc.n_layer} layers, {mc.n_head} heads, {mc.n_embd} wide, block {mc.block_size}, batch {tc.batch_size}, "
        f"dropout {mc.dropout}, "
        f"lr {tc.learning_rate:g} cosine to {tc.min_lr:g} over {tc.max_iters} steps, "
        f"{'bf16 autocast' if tc.dtype != 'float32' else 'float32'}, "
        f"{'torch.compile' if compiled else 'eager'}; val loss on {tc.eval_iters} batches every {tc.eval_interval} "
        "steps. "
        f"Tiny Shakespeare char, split 90/10 by position as nanoGPT.\n\n{verdict} "
        f"Training ran at {result['tokens_per_s'] or 0:,.0f} tokens/s; {step} steps, {wall:.0f} s wall in all, "
        f"{eval_seconds:.0f} s of it evaluating.\n\n"
        "| step | val loss | wall s | training s |\n|---|---|---|---|\n"
        + "\n".join(f"| {e['step']} | {e['val_loss']:.4f} | {e['wall_s']:.0f} | {e['train_s']:.0f} |" for e in evals)
    )
    results.add("target", markdown, {"target": result})
    log(markdown)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help=f"Tiny Shakespeare text file (default {DEFAULT_DATA})"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="directory for results and scratch files (nothing is written elsewhere)"
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=540,
        help="the whole run's time budget; the target part stops when it runs out (default 540)",
    )
    parser.add_argument(
        "--parts", default="throughput,target", help="comma-separated: throughput, target (default both)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="throughput micro-batch at GPT-2 124M shapes (halved on out-of-memory)",
    )
    parser.add_argument(
        "--peak-tflops", type=float, help="the GPU's dense bf16 peak for MFU when its name is not known"
    )
    parser.add_argument(
        "--no-compile", action="store_true", help="skip torch.compile (throughput: eager only; target: eager)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny shapes and a few steps; runs on CPU: checks the script, not the GPU"
    )
    parser.add_argument("--keep-scratch", action="store_true", help="keep OUT/scratch (prepared data, compiler caches)")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or any(p not in ("throughput", "target") for p in parts):
        parser.error(f"--parts takes throughput and/or target, got {args.parts!r}")
    if "target" in parts and not args.data.is_file():
        parser.error(
            f"Tiny Shakespeare not found at {args.data}; pass --data PATH (on a machine without ../shared, copy the "
            "file into the checkout first)"
        )

    budget = Budget(args.max_seconds)
    import torch

    from benchmarks.common import machine_line
    from gptlab.device import setup_device

    if torch.cuda.is_available():
        device = torch.device("cuda")
    elif args.smoke:
        device = torch.device("cpu")
    else:
        print(
            "benchmarks.gpu: no CUDA GPU visible to torch (torch.cuda.is_available() is False); "
            "run it on a GPU machine, or pass --smoke to check the script on CPU",
            file=sys.stderr,
        )
        return 2
    scratch = args.out / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    # Compiler caches default to /tmp and ~/.triton; keep them under --out like everything else.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(scratch / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(scratch / "triton"))
    setup_device(device)
    command = "python -m benchmarks.gpu " + " ".join(argv if argv is not None else sys.argv[1:])
    cuda = f"; CUDA {torch.version.cuda}" if device.type == "cuda" else ""
    results = Results(args.out, {"command": command, "machine": machine_line() + cuda, "smoke": args.smoke})
    log(f"benchmarks.gpu: {results.header['machine']}; budget {args.max_seconds:.0f} s; parts {', '.join(parts)}")
    failed = []
    try:
        for part in parts:  # one part failing must not cost the other its single chance on a lent GPU
            try:
                (throughput if part == "throughput" else time_to_target)(args, device, results, budget, scratch)
            except Exception:
                failed.append(part)
                log(f"benchmarks.gpu: part {part} FAILED:\n{traceback.format_exc()}")
                results.add(
                    part,
                    f"### {part}: FAILED\n\n```\n{traceback.format_exc(limit=-3)}```",
                    {part: {"failed": traceback.format_exc()}},
                )
    finally:
        if not args.keep_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    log("\n" + results.markdown())
    log(
        f"benchmarks.gpu: done in {args.max_seconds - budget.left():.0f} s; results in {args.out}/results.md and "
        "results.json" + (f"; FAILED: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
