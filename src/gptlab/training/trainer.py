"""The training loop: batches in, checkpoints, metrics and a loss curve out.

The trainer knows the data only as token streams and a vocabulary size; it copies the tokenizer
file into each checkpoint without reading it, so checkpoints are self-contained.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gptlab.config import RunConfig
from gptlab.data.batches import TokenData
from gptlab.device import autocast, resolve_device, setup_device
from gptlab.errors import GptlabError
from gptlab.models import GPT
from gptlab.training.checkpoint import CONFIG, keep_history, save_checkpoint
from gptlab.training.interrupt import StopSignals, TrainingInterrupted
from gptlab.training.memory import check_memory
from gptlab.training.metrics import MetricsLog, plot_loss
from gptlab.training.optim import build_optimizer
from gptlab.training.schedule import lr_at

RUN_CONFIG = "config.json"


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    best_val_loss: float
    final_val_loss: float
    final_train_loss: float
    seconds: float


@torch.no_grad()
def estimate_loss(model: GPT, data: TokenData, cfg: RunConfig, device: torch.device, splits=("train", "val")) -> dict[str, float]:
    """Mean loss over eval_iters batches per split. The batches are the same at every call
    (their own seeded generator), so successive estimates differ only because the model did."""
    was_training = model.training
    model.eval()
    out = {}
    for split in splits:
        gen = torch.Generator().manual_seed(cfg.train.seed + 1)
        losses = []
        for _ in range(cfg.train.eval_iters):
            x, y = data.get_batch(split, cfg.train.batch_size, cfg.model.block_size, gen, device)
            with autocast(device, cfg.train.dtype):
                _, loss = model(x, y)
            losses.append(loss.item())
        out[split] = sum(losses) / len(losses)
    model.train(was_training)
    return out


def prepare_run_dir(out_dir: Path, overwrite: bool) -> None:
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise GptlabError(f"{out_dir} already holds files; choose another --out or pass --overwrite to replace that run")
        if not (out_dir / RUN_CONFIG).is_file():
            raise GptlabError(f"{out_dir} is not empty and is not a gptlab run; refusing to overwrite it, choose another --out")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def train(cfg: RunConfig, data_dir: Path, out_dir: Path, overwrite: bool = False, progress: bool | None = None) -> TrainResult:
    """Train a GPT on a prepared data directory; `progress=None` shows the bar only on a terminal."""
    data = TokenData(data_dir)
    cfg.model.vocab_size = data.vocab_size
    cfg.validate()
    data.check_fits(cfg.model.block_size, cfg.train.batch_size)
    device = resolve_device(cfg.train.device)
    setup_device(device)
    check_memory(cfg, device)
    run_dir = Path(out_dir)
    prepare_run_dir(run_dir, overwrite)
    (run_dir / RUN_CONFIG).write_text(json.dumps({"run": cfg.to_dict(), "data_dir": str(data_dir)}, indent=2) + "\n")

    tc = cfg.train
    torch.manual_seed(tc.seed)
    model = GPT(cfg.model).to(device)
    optimizer = build_optimizer(model, tc, device)
    batch_gen = torch.Generator().manual_seed(tc.seed)
    metrics = MetricsLog(run_dir)
    tokenizer_file = data.dir / data.meta["tokenizer"]["file"]
    info = {"tokenizer": data.meta["tokenizer"], "data": {"dir": str(data_dir), "content_sha256": data.meta["content_sha256"]}}
    tokens_per_step = tc.batch_size * tc.grad_accum * cfg.model.block_size
    say = tqdm.write

    say(f"training {model.num_params() / 1e6:.2f}M parameters on {device} "
        f"({data.meta['sizes']['train_tokens']:,} train tokens, vocab {data.vocab_size}, {tokens_per_step:,} tokens/step)")
    best_val = float("inf")
    losses: dict[str, float] = {}

    def save_last(step: int) -> None:
        save_checkpoint(run_dir / "last", model, cfg, {**info, "step": step, **losses}, files=[tokenizer_file], trainer_state={
            "step": step,
            "optimizer": optimizer.state_dict(),
            "best_val_loss": best_val,
            "torch_rng": torch.get_rng_state(),
            "batch_rng": batch_gen.get_state(),
        })
        keep_history(run_dir / "last", step, tc.keep_last)
        saved_steps.append(step)

    def evaluate_and_save(step: int) -> None:
        nonlocal best_val, losses
        estimate = estimate_loss(model, data, cfg, device)
        losses = {"train_loss": estimate["train"], "val_loss": estimate["val"]}
        metrics.write("eval", step, **losses)
        improved = estimate["val"] < best_val
        best_val = min(best_val, estimate["val"])
        save_last(step)
        if improved:
            save_checkpoint(run_dir / "best", model, cfg, {**info, "step": step, **losses}, files=[tokenizer_file])
        plot_loss(run_dir)
        say(f"step {step:>6}: train loss {estimate['train']:.4f}, val loss {estimate['val']:.4f}" + (" (best)" if improved else ""))

    saved_steps: list[int] = []
    model.train()
    start = time.perf_counter()
    bar = tqdm(total=tc.max_iters, disable=None if progress is None else not progress, unit="step", dynamic_ncols=True)
    step_time = time.perf_counter()
    with StopSignals() as stop:
        for step in range(tc.max_iters):
            if step % tc.eval_interval == 0:
                evaluate_and_save(step)
                step_time = time.perf_counter()  # evaluation is not training throughput
            lr = lr_at(step, tc)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for _ in range(tc.grad_accum):  # a fresh micro-batch each micro-step
                x, y = data.get_batch("train", tc.batch_size, cfg.model.block_size, batch_gen, device)
                with autocast(device, tc.dtype):
                    _, loss = model(x, y)
                (loss / tc.grad_accum).backward()
                loss_sum += loss.detach()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            if check_finite(loss_sum / tc.grad_accum, step, tc.nonfinite_loss, run_dir, saved_steps):
                optimizer.step()
            else:
                metrics.write("skipped", step + 1, reason="non-finite loss")
            optimizer.zero_grad(set_to_none=True)
            bar.update(1)
            if (step + 1) % tc.log_interval == 0 or step + 1 == tc.max_iters:
                now = time.perf_counter()
                loss_value = (loss_sum / tc.grad_accum).item()  # syncs the device, so the timing is honest
                steps_timed = (step % tc.log_interval) + 1
                tok_s = steps_timed * tokens_per_step / max(now - step_time, 1e-9)
                step_time = now
                metrics.write("train", step + 1, loss=loss_value, lr=lr, tokens_per_s=tok_s)
                bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{tok_s:,.0f}", lr=f"{lr:.2e}")
            if stop.requested and step + 1 < tc.max_iters:
                save_last(step + 1)
                bar.close()
                raise TrainingInterrupted(
                    f"stopped by {signal.Signals(stop.requested).name} after step {step + 1}: saved {run_dir / 'last'}; "
                    f"continue with `gptlab train --resume {run_dir}`", stop.requested)
        evaluate_and_save(tc.max_iters)
    bar.close()
    seconds = time.perf_counter() - start
    say(f"done: {tc.max_iters} steps in {seconds:.1f}s, best val loss {best_val:.4f}; checkpoints in {run_dir}")
    return TrainResult(run_dir, tc.max_iters, best_val, losses["val_loss"], losses["train_loss"], seconds)


def check_finite(loss: torch.Tensor, step: int, mode: str, run_dir: Path, saved_steps: list[int]) -> bool:
    """Whether step's update may be applied. A NaN or inf loss either stops training before the
    update (mode "stop": the weights and every saved checkpoint stay good) or skips it ("skip")."""
    value = loss.item()  # one device sync per step, the price of never applying a poisoned update
    if math.isfinite(value):
        return True
    if mode == "skip":
        tqdm.write(f"warning: the loss is {value} at step {step + 1}; skipped that update (--nonfinite_loss skip)")
        return False
    last_good = f"the last good checkpoint is {run_dir / 'last'} (step {saved_steps[-1]})" if saved_steps else "no checkpoint was saved yet"
    raise GptlabError(
        f"the loss became {value} at step {step + 1}; training stopped before applying it and {last_good}; "
        "lower --learning_rate (or raise --warmup_iters), or pass --nonfinite_loss skip to skip such steps"
    )
