"""Training: gptlab against a plain Hugging Face transformers GPT2LMHeadModel loop on identical work.

Same shapes (the shakespeare-char-cpu preset: 4 layers, 4 heads, 128 wide, block 64, batch 12),
same data (Tiny Shakespeare, char tokens from `gptlab prepare`), the same batches in the same
order, the same optimiser (gptlab's AdamW groups, lr schedule, betas, clipping) and the same
initial weights. gptlab trains with its own trainer (`Trainer.train_step`); transformers with the
plain loop one would write: the transformers model starts from a copy of gptlab's (transformers' GPT-2 has
biases everywhere, so the head-to-head gptlab model has them too; the preset as shipped, without
biases, runs as a third contender). The loops advance in alternating chunks of steps, so load on
the machine hits them alike; each chunk gives one tokens/s sample, and after each chunk the val
loss is measured (untimed) on the same fixed val batches.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import Timing, markdown_table, prepared_tiny_shakespeare
from gptlab.config import build_config
from gptlab.data.batches import TokenData
from gptlab.device import setup_device
from gptlab.interop.hf import hf_config_from_model, hf_state_dict
from gptlab.models import GPT
from gptlab.training.distributed import SINGLE
from gptlab.training.optim import build_optimizers, set_lr
from gptlab.training.schedule import lr_at
from gptlab.training.trainer import Trainer

PRESET = "shakespeare-char-cpu"
TARGET_VAL_LOSS = 2.3  # about 550 steps at these shapes (the full 2000-step recipe ends near 1.88)
REFERENCE = "transformers"


@dataclass
class Contender:
    model: torch.nn.Module  # for evaluation
    loss: Callable  # (model, x, y) -> scalar loss
    train_step: Callable[[int], None]  # one optimizer update at this step
    train_seconds: float = 0.0
    chunk_seconds: list[float] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, val loss)
    reached: tuple[int, float] | None = None  # (step, training seconds) when val first <= target


def gptlab_contender(cfg, data: TokenData, run_dir: Path, device) -> Contender:
    """gptlab's own trainer: its model, optimizers, schedule, batch sampler and train_step."""
    trainer = Trainer(cfg, data, run_dir, SINGLE, device)
    trainer.model.train()
    return Contender(trainer.model, gptlab_loss, lambda step: trainer.train_step())


def transformers_contender(model: torch.nn.Module, tc, batches) -> Contender:
    """The plain loop one writes for a transformers model, with gptlab's optimizer groups and schedule."""
    optimizers = build_optimizers(model, tc)
    model.train()

    def train_step(step: int) -> None:
        set_lr(optimizers, lr_at(step, tc))
        x, y = batches[step]
        transformers_loss(model, x, y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)

    return Contender(model, transformers_loss, train_step)


def gptlab_loss(model, x, y):
    return model(x, y)[1]


def transformers_loss(model, x, y):
    # The loss outside the model: transformers' `labels=` would shift the targets by one itself.
    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))


def transformers_twin(gpt: GPT, eot_id: int) -> torch.nn.Module:
    """A transformers GPT2LMHeadModel with gpt's shapes and a copy of its weights (gptlab's HF export mapping)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(**{**hf_config_from_model(gpt.config, eot_id), "use_cache": False})
    hf = GPT2LMHeadModel._from_config(config, attn_implementation="sdpa")
    missing, unexpected = hf.load_state_dict(hf_state_dict(gpt), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:  # the head is tied to wte, which was copied
        raise RuntimeError(f"weights did not map onto GPT2LMHeadModel: missing {missing}, unexpected {unexpected}")
    return hf


@torch.inference_mode()
def val_loss(c: Contender, val_batches) -> float:
    c.model.eval()
    loss = sum(c.loss(c.model, x, y).item() for x, y in val_batches) / len(val_batches)
    c.model.train()
    return loss


def run(quick: bool) -> str:
    device = torch.device("cpu")
    setup_device(device)
    max_steps, chunk, target = (10, 5, 4.0) if quick else (1000, 50, TARGET_VAL_LOSS)
    eval_batches = 2 if quick else 20
    with tempfile.TemporaryDirectory(prefix="gptlab-bench-training-") as tmp:
        data = TokenData(prepared_tiny_shakespeare(Path(tmp)))
        cfg = build_config(PRESET, {"device": "cpu"})
        cfg.model.vocab_size = data.vocab_size
        mc, tc = cfg.model, cfg.train
        # The batches gptlab's trainer will draw (same generator, same seed), for the transformers loop.
        gen = torch.Generator().manual_seed(tc.seed)
        batches = [data.get_batch("train", tc.batch_size, mc.block_size, gen, device) for _ in range(max_steps)]
        val_gen = torch.Generator().manual_seed(tc.seed + 1)
        val_batches = [
            data.get_batch("val", tc.batch_size, mc.block_size, val_gen, device) for _ in range(eval_batches)
        ]

        with_bias = gptlab_contender(
            dataclasses.replace(cfg, model=dataclasses.replace(mc, bias=True)), data, Path(tmp) / "run", device
        )
        contenders = {
            "gptlab (with biases, as transformers)": with_bias,
            f"gptlab ({PRESET} as shipped: no biases)": gptlab_contender(cfg, data, Path(tmp) / "run", device),
            f"{REFERENCE} GPT2LMHeadModel": transformers_contender(
                transformers_twin(with_bias.model, data.meta["tokenizer"]["eot_id"]), tc, batches
            ),
        }
        return race(contenders, max_steps, chunk, target, val_batches, quick, mc, tc)


def race(
    contenders: dict[str, Contender], max_steps: int, chunk: int, target: float, val_batches, quick: bool, mc, tc
) -> str:
    """Advance every contender chunk by chunk in alternation; evaluate after each chunk (untimed)."""
    order = list(contenders)
    for first in range(0, max_steps, chunk):
        for name in order:
            c = contenders[name]
            t = time.perf_counter()
            for step in range(first, first + chunk):
                c.train_step(step)
            seconds = time.perf_counter() - t
            c.train_seconds += seconds
            if first > 0 or quick:  # the first chunk warms up allocator and caches
                c.chunk_seconds.append(seconds)
            loss = val_loss(c, val_batches)
            c.val_losses.append((first + chunk, loss))
            if c.reached is None and loss <= target:
                c.reached = (first + chunk, c.train_seconds)
        order.reverse()  # a, b, c, c, b, a, ...: no contender always runs right after the evaluation
        print(
            f"  training: step {first + chunk}: "
            + ", ".join(f"{c.val_losses[-1][1]:.3f}" for c in contenders.values()),
            file=sys.stderr,
        )
        if all(c.reached for c in contenders.values()) and first + chunk >= 4 * chunk:
            break
    return report(contenders, mc, tc, chunk, target, len(val_batches))


def report(contenders: dict[str, Contender], mc, tc, chunk: int, target: float, eval_batches: int) -> str:
    tokens_per_chunk = chunk * tc.batch_size * mc.block_size
    ref_name = next(n for n in contenders if n.startswith(REFERENCE))
    ref = contenders[ref_name]
    ref_tok_s = tokens_per_chunk / Timing(ref.chunk_seconds).median
    rows = []
    for name, c in contenders.items():
        timing = Timing(c.chunk_seconds)
        tok_s = tokens_per_chunk / timing.median
        rows.append([name, f"{tok_s:,.0f}", f"±{100 * timing.spread:.0f}%", f"{tok_s / ref_tok_s:.2f}"])
    throughput = markdown_table(
        ["training loop", "tokens/s (median)", "spread", f"tokens/s ratio vs {REFERENCE}"], rows
    )

    rows = []
    for name, c in contenders.items():
        last_step, last_loss = c.val_losses[-1]
        if c.reached:
            ratio = f"{c.reached[1] / ref.reached[1]:.2f}" if ref.reached else "n/a"
            rows.append([name, c.reached[0], f"{c.reached[1]:.1f}", ratio, f"{last_loss:.3f} (step {last_step})"])
        else:
            rows.append([name, f"not within {last_step}", "-", "-", f"{last_loss:.3f} (step {last_step})"])
    to_target = markdown_table(
        [
            "training loop",
            f"steps to val ≤ {target}",
            "training seconds",
            f"time ratio vs {REFERENCE}",
            "last val loss",
        ],
        rows,
    )
    samples = len(ref.chunk_seconds)
    return f"""## Training: gptlab vs transformers GPT2LMHeadModel

Identical work: the `{PRESET}` shapes ({mc.n_layer} layers, {mc.n_head} heads, {mc.n_embd} wide,
block {mc.block_size}, batch {tc.batch_size}, vocab {mc.vocab_size}), Tiny Shakespeare char tokens, the same
batches in the same order, AdamW with gptlab's parameter groups (lr {tc.learning_rate:g} with {tc.warmup_iters} warmup
steps, then {tc.lr_schedule} decay to {tc.min_lr:g} by step {tc.max_iters}, betas ({tc.beta1}, {tc.beta2}),
weight decay {tc.weight_decay} on matrices, clip {tc.grad_clip}), float32 on CPU, transformers with
`attn_implementation="sdpa"` and `gelu_new` starting from a copy of gptlab's initial weights; gptlab steps with its own
`Trainer.train_step`, transformers with a plain loop. The loops run in alternating chunks of
{chunk} steps (first chunk discarded as warm-up); one tokens/s sample per chunk, {samples} samples each.

{throughput}

Tokens/s ratio above 1.0: gptlab trains faster than the transformers loop.
Val loss after every chunk (not timed), on the same {eval_batches} fixed val batches
of {tc.batch_size}×{mc.block_size} tokens:

{to_target}

Time ratio below 1.0: gptlab reaches the target sooner. The head-to-head pair starts from the same
weights and sees the same batches, so it needs the same steps up to float rounding; its time ratio
is its speed. The shipped preset (no biases) starts from different random weights."""


def profile(steps: int = 10) -> None:
    """Where each loop's time goes: torch.profiler's top operators over `steps` training steps."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    setup_device(torch.device("cpu"))
    mc = build_config(PRESET, {"bias": True, "vocab_size": 66}).model
    tc = build_config(PRESET, {}).train
    torch.manual_seed(tc.seed)
    ours = GPT(mc)
    gen = torch.Generator().manual_seed(tc.seed)
    x, y = (torch.randint(mc.vocab_size, (tc.batch_size, mc.block_size), generator=gen) for _ in "xy")
    for name, model, loss_fn in (
        ("gptlab", ours, gptlab_loss),
        (REFERENCE, transformers_twin(ours, mc.vocab_size - 1), transformers_loss),
    ):
        optimizers = build_optimizers(model, tc)

        def step():
            loss_fn(model, x, y).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            for opt in optimizers:
                opt.step()
                opt.zero_grad(set_to_none=True)

        for _ in range(3):
            step()
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
        print(f"== {name}: {steps} training steps")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.training", description="gptlab vs transformers training loop"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print torch.profiler's top operators for each loop (else: run the benchmark)",
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.profile:
        profile()
    else:
        print(run(args.quick))
