"""The training loop: batches in, checkpoints, metrics, text samples and a loss curve out.

    train(cfg, data_dir, out_dir)     a new run; init_from=CHECKPOINT starts from trained weights
    resume(run_dir)                   continues a run from its last/ checkpoint, exactly

One step is one optimizer update over batch_size * grad_accum sequences. Under torchrun the
grad_accum micro-batches of a step are shared out among the processes (each runs
grad_accum / world_size of them; DDP or FSDP averages the gradients), so a config trains the same
way on 1 or N processes, and only rank 0 writes files (but for the shards of a sharded last/).

The trainer knows the data as token streams and a vocabulary size; it copies the tokenizer file
into each checkpoint without reading it, and loads the tokenizer only to decode its text samples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
    set_state_dict,
)
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from gptlab.atomic import (
    atomic_directory,
    complete_directory,
    old_path,
    remove_directory,
    restore_previous,
    verify_directory,
    write_text_atomic,
)
from gptlab.checkpoint import (
    CONFIG,
    RUN_OUTPUT,
    TRAINER_STATE,
    RunDir,
    check_same_tokenizer,
    find_data_dir,
    is_sharded,
    keep_history,
    load_checkpoint,
    load_shards,
    load_trainer_state,
    read_info,
    save_checkpoint,
    save_sharded_checkpoint,
    untrained_best,
)
from gptlab.config import RunConfig, TrainConfig, field_types, set_field
from gptlab.data.batches import TokenData
from gptlab.data.format import tokenizer_path
from gptlab.device import autocast, autocast_dtype, peak_flops, setup_device
from gptlab.errors import GptlabError
from gptlab.generation.generate import generate
from gptlab.models import GPT, build_model
from gptlab.models.info import flops_per_token
from gptlab.outputs import check_output_dir, claim_output
from gptlab.tokenizers import load_tokenizer
from gptlab.training.distributed import (
    SINGLE,
    Dist,
    agree,
    check_layout,
    gather_to_all,
    gathered_model,
    init_distributed,
    on_main,
    shard_model,
    shutdown_distributed,
    sum_over_ranks,
)
from gptlab.training.interrupt import StopSignals, TrainingInterrupted
from gptlab.training.memory import check_memory
from gptlab.training.metrics import MetricsLog, plot_loss, require_tensorboard, truncate_metrics
from gptlab.training.optim import build_optimizers, set_lr
from gptlab.training.schedule import lr_at

CPU = torch.device("cpu")

# Called after every evaluation with (step, {"train": loss, "val": loss}); returning True ends training
# there, resumable like a --stop-at (a sweep's pruner uses it). Under torchrun every process calls it
# with the same losses, and it must answer the same on each.
AfterEval = Callable[[int, dict[str, float]], bool]


@dataclass
class TrainResult:
    run_dir: Path
    steps: int  # the step the run reached (max_iters, or stop_at)
    best_val_loss: float
    final_val_loss: float
    final_train_loss: float
    seconds: float
    steps_run: int = 0  # steps this call ran (fewer than `steps` after a resume)


def precision(device: torch.device, tc: TrainConfig):
    """Autocast for a forward pass; under FSDP the sharded model casts by itself (distributed.shard_model)."""
    return contextlib.nullcontext() if tc.parallel == "fsdp" else autocast(device, tc.dtype)


@torch.no_grad()
def estimate_loss(
    model: GPT, data: TokenData, cfg: RunConfig, device: torch.device, splits=("train", "val"), me: Dist = SINGLE
) -> dict[str, float]:
    """Mean loss over eval_iters batches per split. The batches are the same at every call
    (their own seeded generator), so successive estimates differ only because the model did.
    Under torchrun batch i is evaluated by rank i % world_size and the sums are added up. Every rank
    runs as many forward passes (a sharded model's are collective), the last round's spares uncounted."""
    was_training = model.training
    model.eval()
    out = {}
    rounds = -(-cfg.train.eval_iters // me.world_size)
    for split in splits:
        gen = torch.Generator().manual_seed(cfg.train.seed + 1)
        total = torch.zeros((), dtype=torch.float64, device=device)
        for i in range(rounds * me.world_size):
            mine = i % me.world_size == me.rank
            x, y = data.get_batch(split, cfg.train.batch_size, cfg.model.block_size, gen, device if mine else CPU)
            if mine:
                with precision(device, cfg.train):
                    _, loss = model(x, y)
                if i < cfg.train.eval_iters:
                    total += loss.double()
        out[split] = sum_over_ranks(me, total).item() / cfg.train.eval_iters
    model.train(was_training)
    return out


def create_run_dir(run_dir: Path, record: dict[str, Any]) -> None:
    """Create (or replace) the run directory with its config.json in one atomic step, so a crash never
    leaves a run directory without it (which --overwrite would then refuse as "not a gptlab run").
    A replaced run stays aside as .NAME.old until the new one has its first checkpoint."""
    with atomic_directory(run_dir, checksums=False, keep_previous=True) as tmp:
        RunDir(tmp).config.write_text(json.dumps(record, indent=2) + "\n")


def run_record(cfg: RunConfig, run_dir: Path, data_dir: Path, **more: Any) -> dict[str, Any]:
    """The run's config.json: its config, and where its data is (absolute, and relative to the run)."""
    where = RunDir(run_dir).data_record(data_dir)
    return {"run": cfg.to_dict(), "data_dir": where["dir"], "data_dir_from_run": where["from_run"], **more}


def check_same_text(data: TokenData, info: dict[str, Any], ckpt_dir: Path) -> None:
    """A resumed run must go on with the text it was trained on."""
    if data.meta["content_sha256"] != info["data"]["content_sha256"]:
        raise GptlabError(
            f"{data.dir} holds other text than the run in {ckpt_dir.parent} was trained on (content hash differs); "
            "resume with the original data (--data DIR), or start a new run with --init-from"
        )


def build_trainer(cfg: RunConfig, data: TokenData, run_dir: Path, me: Dist, device: torch.device) -> Trainer:
    """The Trainer, whose model and optimizer are the first large allocations: a failure is one line, and
    comes before the run directory is created."""
    try:
        return Trainer(cfg, data, run_dir, me, device)
    except RuntimeError as e:  # torch.OutOfMemoryError (CUDA) is one; the CPU allocator raises a plain one
        if "alloc" not in str(e).lower():
            raise
        raise GptlabError(
            f"the model does not fit in the memory of {device} ({str(e).splitlines()[0][:160]}); lower --batch-size, "
            "--block-size or the model size; `gptlab info` shows the estimate"
        ) from None


def optimizer_state_by_name(model: GPT, optimizers: list, saved: list[dict[str, Any]]) -> dict[str, Any]:
    """One-file checkpoints keep each optimizer's state_dict, parameters numbered by position; this is the
    same state keyed by parameter name, the form torch.distributed.checkpoint.state_dict loads into a
    plain, DDP or sharded model alike (the optimizers are built in the same parameter order each way)."""
    names = {id(p): name for name, p in model.named_parameters()}
    state, groups = {}, []
    for opt, saved_opt in zip(optimizers, saved):
        for group, saved_group in zip(opt.param_groups, saved_opt["param_groups"]):
            fqns = [names[id(p)] for p in group["params"]]
            state.update(
                {fqn: saved_opt["state"][i] for i, fqn in zip(saved_group["params"], fqns) if i in saved_opt["state"]}
            )
            groups.append({**saved_group, "params": fqns})
    return {"state": state, "param_groups": groups}


class Trainer:
    """A model, its optimizers and everything else a step changes; `state_dict` captures all of it."""

    def __init__(self, cfg: RunConfig, data: TokenData, run_dir: Path, me: Dist, device: torch.device):
        self.cfg, self.tc, self.data, self.run_dir, self.me, self.device = (
            cfg,
            cfg.train,
            data,
            RunDir(run_dir),
            me,
            device,
        )
        tc = self.tc
        if tc.tensorboard:
            require_tensorboard()
        torch.manual_seed(tc.seed)  # the same initial weights on every process
        self.model = build_model(cfg.model).to(device)
        self.sharded = tc.parallel == "fsdp"  # FSDP changes self.model in place: it stays the one to call
        self.ddp = None
        if self.sharded:
            shard_model(self.model, device, tc.dtype)
        elif me.enabled:
            self.ddp = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        torch.manual_seed(tc.seed + 1 + me.rank)  # dropout: its own stream on each process
        self.optimizers = build_optimizers(self.model, tc)  # after sharding: each process steps its own shards
        # fp16 gradients underflow; the scaler multiplies the loss up and the gradients back down.
        # Disabled (a pass-through) in every other precision, so there is one code path.
        self.scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype(device, tc.dtype) == torch.float16)
        self.forward = self.ddp or self.model
        if tc.compile:
            self.forward = torch.compile(self.forward)
        self.batch_gen = torch.Generator().manual_seed(tc.seed)  # the data sampler: its state is the position
        self.step = 0
        self.saved_step: int | None = None  # of the newest last/ checkpoint
        self.best_val = math.inf
        self.losses: dict[str, float] = {}  # the latest evaluation
        self.tokenizer_file = tokenizer_path(data.dir, data.meta)
        self.info = {
            "tokenizer": data.meta["tokenizer"],
            "data": {**self.run_dir.data_record(data.dir), "content_sha256": data.meta["content_sha256"]},
        }
        self.tokens_per_step = tc.batch_size * tc.grad_accum * cfg.model.block_size
        self.flops_per_token = flops_per_token(cfg.model)
        self.peak_flops = peak_flops(device, tc.peak_flops)
        self.metrics: MetricsLog | None = None  # opened by run(), on rank 0
        self.on_first_checkpoint: Callable[[], None] = lambda: None  # train() drops the run it replaced
        self.after_eval: AfterEval | None = None
        self.stop_early = False  # after_eval asked to end training

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights (and, sharded, the optimizer state), for last/trainer.pt.
        Collective: gathers every rank's RNG."""
        rng = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }
        return {
            "step": self.step,
            "optimizers": [] if self.sharded else [opt.state_dict() for opt in self.optimizers],
            "scaler": self.scaler.state_dict(),
            "best_val_loss": self.best_val,
            "losses": self.losses,
            "batch_rng": self.batch_gen.get_state(),
            "rng_per_rank": gather_to_all(self.me, rng),
        }

    def load_last(self, ckpt_dir: Path, trained_with: str) -> None:
        """Weights, optimizer state and the rest from a last/ checkpoint however it was saved (one file or
        shards) and on however many processes, into this model plain, under DDP or sharded.
        trained_with: the optimizer the checkpoint's run used."""
        if trained_with != self.tc.optimizer:
            raise GptlabError(
                f"the checkpoint was trained with another optimizer than --optimizer {self.tc.optimizer}; resume "
                "without changing it"
            )
        state = load_trainer_state(ckpt_dir)
        # The saved param groups carry the old run's hyperparameters (betas, weight decay, momentum, lr scales);
        # this run's config decides them, so a resume's --beta2 or --weight-decay is honoured, not overwritten.
        settings = [
            [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] for opt in self.optimizers
        ]
        if is_sharded(ckpt_dir):
            shards = self.shards()  # the layout to fill: this job's shards, or whole tensors
            load_shards(ckpt_dir, shards, collective=self.sharded)
            set_state_dict(
                self.model, self.optimizers, model_state_dict=shards["model"], optim_state_dict=shards["optim"]
            )
        else:
            whole = StateDictOptions(full_state_dict=True)  # each process keeps its part of the whole tensors
            set_model_state_dict(self.model, load_checkpoint(ckpt_dir).model.state_dict(), options=whole)
            if any(saved["state"] for saved in state["optimizers"]):  # else saved before the first update: fresh
                optim = optimizer_state_by_name(self.model, self.optimizers, state["optimizers"])
                set_optimizer_state_dict(self.model, self.optimizers, optim, options=whole)
        for opt, groups in zip(self.optimizers, settings):
            for group, ours in zip(opt.param_groups, groups):
                group.update(ours)
        self.load_state_dict(state)

    def shards(self) -> dict[str, Any]:
        """Model and optimizer state keyed by parameter name, as torch.distributed.checkpoint saves it.
        torch gives an optimizer that has not stepped yet a state by stepping it with zero gradients at
        lr 0; that step is not counted, so the first real update is still step 1 (Adam's bias correction
        counts steps) and a run saved before its first update resumes exactly."""
        unstarted = [opt for opt in self.optimizers if not opt.state]
        model, optim = get_state_dict(self.model, self.optimizers)
        for opt in unstarted:
            for param_state in opt.state.values():
                if "step" in param_state:
                    param_state["step"].zero_()
        return {"model": model, "optim": optim}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """All of trainer.pt but the optimizers (load_last loads those with the weights)."""
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.best_val, self.losses = state["step"], state["best_val_loss"], state["losses"]
        self.batch_gen.set_state(state["batch_rng"])
        per_rank = state["rng_per_rank"]
        if len(per_rank) == self.me.world_size:
            torch.set_rng_state(per_rank[self.me.rank]["torch"])
            if self.device.type == "cuda" and per_rank[self.me.rank]["cuda"] is not None:
                torch.cuda.set_rng_state(per_rank[self.me.rank]["cuda"], self.device)
        else:  # another number of processes: the data order is kept, dropout masks start afresh
            torch.manual_seed(self.tc.seed + 1 + self.me.rank + self.step)
            if self.me.is_main:
                tqdm.write(
                    f"note: the run was saved by {len(per_rank)} process(es), resumed on {self.me.world_size}: "
                    "same data order, new dropout randomness"
                )

    def save_last(self, losses: dict[str, float] | None = None) -> None:
        self.check_weights(losses)  # a checkpoint is written only from weights known to be good
        state = self.state_dict()  # on every rank: it gathers
        if self.sharded:  # each rank writes its shards; all stop together if any write fails
            shards = self.shards()
            agree(
                self.me,
                lambda: save_sharded_checkpoint(
                    self.run_dir.last,
                    shards,
                    self.cfg,
                    self.checkpoint_info(),
                    files=[self.tokenizer_file],
                    trainer_state=state,
                ),
            )
        elif self.me.is_main:
            save_checkpoint(
                self.run_dir.last,
                self.model,
                self.cfg,
                self.checkpoint_info(),
                files=[self.tokenizer_file],
                trainer_state=state,
            )
        if self.me.is_main:
            keep_history(self.run_dir.last, self.step, self.tc.keep_last)
        self.saved_step = self.step

    def checkpoint_info(self) -> dict[str, Any]:
        return {
            **self.info,
            "step": self.step,
            "train_loss": self.losses.get("train"),
            "val_loss": self.losses.get("val"),
        }

    # -- one step --------------------------------------------------------------------------------

    def step_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This process's micro-batches of the next step. Every process draws the offsets of the
        whole global batch from the same generator and keeps its share, so the batches (and the
        sampler's state) do not depend on how many processes there are."""
        tc, share = self.tc, self.tc.grad_accum // self.me.world_size
        mine = range(self.me.rank * share, (self.me.rank + 1) * share)
        batches = []
        for k in range(tc.grad_accum):
            x, y = self.data.get_batch(
                "train", tc.batch_size, self.cfg.model.block_size, self.batch_gen, self.device if k in mine else CPU
            )
            if k in mine:
                batches.append((x, y))
        return batches

    def train_step(self) -> tuple[torch.Tensor, float]:
        """One optimizer update; returns this process's mean micro-batch loss (on the device) and the lr."""
        lr = lr_at(self.step, self.tc)
        set_lr(self.optimizers, lr)
        batches = self.step_batches()
        loss_sum = torch.zeros((), device=self.device)
        for i, (x, y) in enumerate(batches):
            # DDP averages gradients across processes once, after the last micro-batch.
            no_sync = self.ddp.no_sync() if self.ddp is not None and i < len(batches) - 1 else contextlib.nullcontext()
            # FSDP reduce-scatters after every micro-batch instead, so no process holds a whole gradient.
            with no_sync:
                with precision(self.device, self.tc):
                    _, loss = self.forward(x, y)
                self.scaler.scale(loss / len(batches)).backward()
            loss_sum += loss.detach()
        if not self.update_is_finite(loss_sum):
            for opt in self.optimizers:
                opt.zero_grad(set_to_none=True)
            self.step += 1
            return loss_sum / len(batches), lr
        if self.tc.grad_clip > 0:
            for opt in self.optimizers:
                self.scaler.unscale_(opt)  # clip the true gradients, not the scaled ones
            # sharded: the norm of the whole gradient, summed over the shards (DTensor does that)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.grad_clip)
        for opt in self.optimizers:
            self.scaler.step(opt)  # skipped when fp16 gradients overflowed
        self.scaler.update()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        self.step += 1
        return loss_sum / len(batches), lr

    @torch.no_grad()
    def probe_loss(self) -> float:
        """The loss of the current weights on one fixed validation batch (its own generator: no RNG moves).
        Every process calls it: a sharded model's forward pass is collective."""
        gen = torch.Generator().manual_seed(self.tc.seed + 1)
        x, y = self.data.get_batch("val", self.tc.batch_size, self.cfg.model.block_size, gen, self.device)
        was_training = self.model.training
        self.model.eval()
        with precision(self.device, self.tc):
            _, loss = self.model(x, y)
        self.model.train(was_training)
        return loss.item()

    def check_weights(self, losses: dict[str, float] | None = None) -> None:
        """Good weights are finite and give a finite loss (`losses` computed with them, else one probe batch).
        Checked before every checkpoint is written, so a diverged update (weights of 1e30 are finite, their
        loss is not) is never saved nor named as the last good checkpoint. Collective under torchrun."""
        local = (p.to_local() if hasattr(p, "to_local") else p for p in self.model.parameters())  # shards
        finite = all(bool(torch.isfinite(p).all()) for p in local)
        values = list(losses.values()) if losses is not None else [self.probe_loss()]
        finite = finite and all(math.isfinite(v) for v in values)
        if sum_over_ranks(self.me, torch.tensor(float(finite), device=self.device)).item() == self.me.world_size:
            return
        raise GptlabError(
            f"the weights went bad by step {self.step} (non-finite, or a non-finite loss: an update diverged); "
            f"nothing was saved at this step and {self.last_good()}; lower --learning-rate (or raise --warmup-iters)"
        )

    def last_good(self) -> str:
        if self.saved_step is None:
            return "no checkpoint was saved yet"
        return f"the last good checkpoint is {self.run_dir.last} (step {self.saved_step})"

    def update_is_finite(self, loss_sum: torch.Tensor) -> bool:
        """Whether this step's update may be applied. A NaN or inf loss (on any process) either stops
        training before the update (nonfinite_loss "stop": the weights and every checkpoint stay good)
        or skips that update ("skip"). One device sync per step: the price of never applying poison."""
        value = sum_over_ranks(self.me, loss_sum).item()
        if math.isfinite(value):
            return True
        step = self.step + 1
        if self.tc.nonfinite_loss == "skip":
            self.check_weights()  # bad weights make every later loss non-finite: skipping cannot help
            if self.me.is_main:
                tqdm.write(f"warning: the loss is {value} at step {step}; skipped that update (--nonfinite-loss skip)")
                self.metrics.write("skipped", step, reason="non-finite loss")
            return False
        raise GptlabError(
            f"the loss became {value} at step {step}; training stopped before applying it and {self.last_good()}; "
            "lower --learning-rate (or raise --warmup-iters), or pass --nonfinite-loss skip to skip such steps"
        )

    def stop_signal(self, stop: StopSignals) -> int | None:
        """The signal that asked training to stop, on any process (all must stop at the same step to save together)."""
        if not self.me.enabled:
            return stop.requested
        anyone = sum_over_ranks(self.me, torch.tensor(float(stop.requested is not None), device=self.device)).item()
        return (stop.requested or signal.SIGTERM) if anyone else None

    # -- evaluation, samples ---------------------------------------------------------------------

    def evaluate(self) -> None:
        """Estimate losses, log them, save last/ (and best/ when val improved), write a sample."""
        self.losses = estimate_loss(self.model, self.data, self.cfg, self.device, me=self.me)
        improved = self.losses["val"] < self.best_val
        self.best_val = min(self.best_val, self.losses["val"])
        # Logged before last/ is saved: a checkpoint then always has its eval row, even when killed in between
        # (a resume drops the rows past its checkpoint's step and evaluates those steps again).
        if self.me.is_main:
            self.metrics.write("eval", self.step, train_loss=self.losses["train"], val_loss=self.losses["val"])
        if self.after_eval is not None:
            self.stop_early = bool(self.after_eval(self.step, dict(self.losses)))
        self.save_last(self.losses)
        if improved:
            self.save_best()
        sample = self.sample_text() if self.tc.sample_tokens and (self.sharded or self.me.is_main) else None
        if not self.me.is_main:
            return
        plot_loss(self.run_dir.path)
        if sample is not None:
            with self.run_dir.samples.open("a") as f:
                f.write(f"--- step {self.step}, val loss {self.losses['val']:.4f}\n{sample}\n\n")
        tqdm.write(
            f"step {self.step:>6}: train loss {self.losses['train']:.4f}, val loss {self.losses['val']:.4f}"
            + (" (best)" if improved else "")
        )

    def save_best(self) -> None:
        """best/: one consolidated model.safetensors, however the model is spread over the processes."""
        model = gathered_model(self.model, self.me) if self.sharded else self.model  # collective when sharded
        if self.me.is_main:
            save_checkpoint(self.run_dir.best, model, self.cfg, self.checkpoint_info(), files=[self.tokenizer_file])

    def sample_text(self) -> str:
        """Text from the model so far, for samples.txt; the same seed each time, so successive samples
        differ only because the model did. A sharded model's forward passes are collective, so then
        every rank generates (the same text, from the same seed)."""
        tokenizer = load_tokenizer(self.data.meta["tokenizer"]["kind"], self.data.dir)
        gen = torch.Generator(self.device).manual_seed(self.tc.seed)
        with precision(self.device, self.tc):
            ids = generate(
                self.model, [tokenizer.eot_id], self.tc.sample_tokens, temperature=0.8, top_k=200, generator=gen
            )[0]
        self.model.train()  # generate() switched it to eval mode
        return tokenizer.decode(ids)

    # -- the loop --------------------------------------------------------------------------------

    def run(self, progress: bool | None = None, after_eval: AfterEval | None = None) -> TrainResult:
        tc, me = self.tc, self.me
        self.after_eval = after_eval
        start_step = self.step
        if me.is_main:
            self.metrics = MetricsLog(self.run_dir.path, tc.tensorboard, start_step)
            tqdm.write(
                f"training {self.model.num_params() / 1e6:.2f}M parameters on {self.device}"
                + (f" x {me.world_size} processes" if me.enabled else "")
                + f" ({self.data.meta['sizes']['train_tokens']:,} train tokens, vocab {self.data.vocab_size}, "
                f"{self.tokens_per_step:,} tokens/step)" + (f", resuming at step {start_step}" if start_step else "")
            )
        self.model.train()
        start = time.perf_counter()
        bar = tqdm(
            total=tc.max_iters,
            initial=start_step,
            unit="step",
            dynamic_ncols=True,
            disable=not me.is_main or (None if progress is None else not progress),
        )
        stop = StopSignals()
        try:
            if not self.losses:  # a new run: where it starts from
                self.evaluate()
                self.on_first_checkpoint()
            log_time, log_step = time.perf_counter(), self.step
            stop.install()
            end = tc.stop_at or tc.max_iters  # stop_at ends this call early; the schedule still spans max_iters
            while self.step < end and not self.stop_early:
                loss, lr = self.train_step()
                bar.update(1)
                if self.step % tc.log_interval == 0 or self.step == tc.max_iters:
                    # .item() syncs the device, so the timing is honest; every rank joins the sum.
                    loss_value = sum_over_ranks(me, loss).item() / me.world_size
                    now = time.perf_counter()
                    tok_s = (self.step - log_step) * self.tokens_per_step / max(now - log_time, 1e-9)
                    log_time, log_step = now, self.step
                    extra = (
                        {"mfu": self.flops_per_token * tok_s / (self.peak_flops * me.world_size)}
                        if self.peak_flops
                        else {}
                    )
                    if me.is_main:
                        self.metrics.write("train", self.step, loss=loss_value, lr=lr, tokens_per_s=tok_s, **extra)
                    bar.set_postfix(
                        loss=f"{loss_value:.4f}",
                        tok_s=f"{tok_s:,.0f}",
                        lr=f"{lr:.2e}",
                        **({"mfu": f"{extra['mfu']:.1%}"} if extra else {}),
                    )
                if self.step % tc.eval_interval == 0 or self.step == tc.max_iters:
                    self.evaluate()
                    log_time, log_step = time.perf_counter(), self.step  # evaluation is not training throughput
                elif tc.checkpoint_interval and self.step % tc.checkpoint_interval == 0:
                    self.save_last()
                    log_time, log_step = time.perf_counter(), self.step  # nor is saving
                signum = self.stop_signal(stop)
                if signum and self.step < tc.max_iters and not self.stop_early:
                    if self.saved_step != self.step:
                        self.save_last()
                    interrupted = TrainingInterrupted(
                        f"stopped by {signal.Signals(signum).name} after step {self.step}: saved {self.run_dir.last}; "
                        f"continue with `gptlab train --resume {self.run_dir.path}`",
                        signum,
                    )
                    interrupted.silent = not me.is_main  # every rank stops; rank 0 says so
                    raise interrupted
            if self.step < tc.max_iters and self.saved_step != self.step:  # stopped at stop_at: resumable from here
                self.save_last()
        finally:
            stop.restore()
            bar.close()
            if self.metrics is not None:
                self.metrics.close()
        seconds = time.perf_counter() - start
        ran = self.step - start_step
        if me.is_main:
            steps = f"{ran} steps" + (f" (steps {start_step + 1}-{self.step})" if start_step else "")
            if self.step < tc.max_iters:
                why = "as its after_eval asked" if self.stop_early else "as asked (--stop-at)"
                tqdm.write(
                    f"stopped at step {self.step} of {tc.max_iters} {why}: {steps} in {seconds:.1f}s; "
                    f"saved {self.run_dir.last}; continue with `gptlab train --resume {self.run_dir.path}`"
                )
            else:
                tqdm.write(
                    f"done: {steps} in {seconds:.1f}s, best val loss {self.best_val:.4f}; checkpoints in "
                    f"{self.run_dir.path}"
                )
            if read_info(self.run_dir.best).get("step") == 0 and self.step > 0:
                tqdm.write(f"note: {untrained_best(self.run_dir.best)}")
        return TrainResult(
            self.run_dir.path, self.step, self.best_val, self.losses["val"], self.losses["train"], seconds, ran
        )


def train(
    cfg: RunConfig,
    data_dir: Path,
    out_dir: Path,
    overwrite: bool = False,
    progress: bool | None = None,
    init_from: Path | None = None,
    after_eval: AfterEval | None = None,
    reads: tuple[Path, ...] = (),
) -> TrainResult:
    """Train a new run on a prepared data directory; `progress=None` shows the bar only on a terminal.

    init_from: a checkpoint (or run directory) whose weights and architecture the run starts from
    (fine-tuning); cfg.model.dropout still applies, the optimizer starts fresh at step 0.
    after_eval: see AfterEval.
    reads: other files the config came from (a preset file): overwrite never replaces a run holding them.
    Under torchrun every process checks everything and builds its model before rank 0 creates the
    run directory: a refusal anywhere stops all of them with one line and leaves nothing behind. A
    run replaced with overwrite comes back if the new one fails before its first checkpoint.
    """
    run_dir = Path(out_dir)
    inputs = [data_dir, *([init_from] if init_from is not None else []), *reads]
    me, device = init_distributed(cfg.train.device, cfg.train.parallel)
    try:

        def check() -> tuple[TokenData, Any]:
            check_output_dir(run_dir, RUN_OUTPUT, overwrite, inputs)  # first: a refused --out costs nothing
            data = TokenData(data_dir)
            start = None
            if init_from is not None:
                start = load_checkpoint(init_from)
                check_same_tokenizer(data.dir, data.meta, start.dir, start.info)
                cfg.model = dataclasses.replace(start.config.model, dropout=cfg.model.dropout)
            cfg.model.vocab_size = data.vocab_size
            cfg.validate()
            data.check_fits(cfg.model.block_size, cfg.train.batch_size)
            check_layout(cfg.train, me, device)
            setup_device(device, cfg.train.tf32, cfg.train.threads)
            check_memory(cfg, device, me.world_size)
            return data, start

        data, start = agree(me, check)
        with contextlib.ExitStack() as held:
            on_main(me, lambda: held.enter_context(claim_output(run_dir, RUN_OUTPUT, overwrite, inputs)))
            trainer = agree(me, lambda: build_trainer(cfg, data, run_dir, me, device))
            record = run_record(cfg, run_dir, data.dir, **({"init_from": str(start.dir)} if start else {}))
            on_main(me, lambda: create_run_dir(run_dir, record))
            if start is not None:
                set_model_state_dict(
                    trainer.model, start.model.state_dict(), options=StateDictOptions(full_state_dict=True)
                )
            if me.is_main:
                trainer.on_first_checkpoint = lambda: remove_directory(old_path(run_dir))  # the replaced run
            try:
                return trainer.run(progress, after_eval)
            except BaseException:
                if trainer.saved_step is None and me.is_main:
                    restore_previous(run_dir)  # a start that failed before its first checkpoint: as it was
                raise
    finally:
        trainer = None  # DDP's reducer holds the process group: freed after it, gloo's teardown can hang
        shutdown_distributed()


def resume(
    run_dir: Path,
    overrides: dict[str, Any] | None = None,
    data_dir: Path | None = None,
    progress: bool | None = None,
    after_eval: AfterEval | None = None,
) -> TrainResult:
    """Continue a run from its last/ checkpoint: weights, optimizer, scaler, step, sampler position
    and RNG states all come back, so (on CPU) the losses are the ones an uninterrupted run logs.
    A sharded last/ (--parallel fsdp) resumes on any number of processes, and a one-file last/ resumes
    sharded (--parallel fsdp under torchrun).

    overrides: train settings to change (e.g. a larger max_iters); the model cannot change.
    data_dir: where the data is now, if it moved (it must hold the same text and tokenizer); by
    default the recorded one, or the same place relative to the run if the run moved with it.
    The token files are verified against meta.json, and the (possibly new) batch size against the
    data and the device's memory, before the run is locked and continued.
    """
    run = RunDir(run_dir)
    record = run.read_record()
    ckpt_dir = complete_directory(run.last) or run.last  # a crash mid-replacement leaves the previous one aside
    if not (ckpt_dir / TRAINER_STATE).is_file():
        raise GptlabError(
            f"{run_dir} has no resumable checkpoint ({ckpt_dir / TRAINER_STATE} is missing): "
            "it stopped before its first checkpoint; start it again with --overwrite"
        )
    info = read_info(ckpt_dir)
    cfg = RunConfig.from_dict(info["run"], source=str(ckpt_dir / CONFIG))
    cfg.train.stop_at = 0  # a stop belongs to the call that asked for it: a resume runs on unless given its own
    types = field_types()
    for key, value in (overrides or {}).items():
        if types.get(key, ("train",))[0] != "train":
            raise GptlabError(
                f"--{key} changes the model, which a resumed run cannot; start a new run with --init-from {ckpt_dir}"
            )
        set_field(cfg, key, value)
    me, device = init_distributed(cfg.train.device, cfg.train.parallel)
    try:

        def check() -> tuple[TokenData, dict[str, Any]]:
            verify_directory(ckpt_dir)
            cfg.validate()
            recorded = {"dir": record.get("data_dir"), "from_run": record.get("data_dir_from_run")}
            data = TokenData(data_dir if data_dir is not None else find_data_dir(recorded, [run.path], run.config))
            check_same_tokenizer(data.dir, data.meta, ckpt_dir, info)
            check_same_text(data, info, ckpt_dir)
            data.check_fits(cfg.model.block_size, cfg.train.batch_size)
            state = load_trainer_state(ckpt_dir)
            if state["step"] >= cfg.train.max_iters:
                raise GptlabError(
                    f"{run_dir} already finished its {cfg.train.max_iters} steps; to train on, resume with a larger "
                    "--max-iters"
                )
            if 0 < cfg.train.stop_at <= state["step"]:
                raise GptlabError(f"{run_dir} is already at step {state['step']}; give a --stop-at after it, or none")
            check_layout(cfg.train, me, device)
            setup_device(device, cfg.train.tf32, cfg.train.threads)
            check_memory(cfg, device, me.world_size)  # a larger --batch-size than the run started with too
            return data, state

        data, state = agree(me, check)
        with contextlib.ExitStack() as held:
            on_main(me, lambda: held.enter_context(claim_output(run.path)))  # no other process in this run
            last = complete_directory(run.last)  # claiming put back a .last.old that a killed save left aside
            trainer = agree(me, lambda: build_trainer(cfg, data, run_dir, me, device))

            def rewind_run_dir() -> None:
                truncate_metrics(run_dir, state["step"])
                write_text_atomic(
                    run.config, json.dumps({**record, **run_record(cfg, run.path, data.dir)}, indent=2) + "\n"
                )

            agree(me, lambda: trainer.load_last(last, info["run"]["train"]["optimizer"]))
            on_main(me, rewind_run_dir)
            return trainer.run(progress, after_eval)
    finally:
        trainer = None  # DDP's reducer holds the process group: freed after it, gloo's teardown can hang
        shutdown_distributed()
