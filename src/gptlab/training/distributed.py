"""More than one process: data-parallel (DDP) or fully sharded (FSDP2) training launched by torchrun.

    torchrun --nproc-per-node 4 -m gptlab train --data DIR --out RUN ...                   (DDP, the default)
    torchrun --nproc-per-node 4 -m gptlab train --data DIR --out RUN --parallel fsdp ...   (sharded)

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE for each process it starts; `init_distributed` reads
them, joins the process group (NCCL on GPUs, gloo on CPU) and gives each process its own GPU
(cuda:LOCAL_RANK). Without them, or with WORLD_SIZE 1 under DDP, training is a single process and
nothing here talks to anyone. Rank 0 is the main process: the only one that prints, and the only one
that writes files, except the shards of a sharded checkpoint (each rank writes its own).

DDP keeps a whole model, its gradients and its optimizer state on every device. FSDP (`shard_model`)
splits each parameter by rows across the processes: every device holds 1/N of the weights,
gradients and optimizer state, and gathers a block's full weights only while it computes it.
Multi-node launches and what each rank writes: docs/scaling.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from gptlab.config import TrainConfig
from gptlab.device import autocast_dtype, resolve_device
from gptlab.errors import GptlabError
from gptlab.models import GPT, build_model


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Dist()


def init_distributed(device_name: str, parallel: str = "ddp") -> tuple[Dist, torch.device]:
    """This process's place in the job and its device; joins the process group under torchrun
    (also for one process under --parallel fsdp, whose shards need a process group)."""
    rank = int(os.environ.get("RANK", "0"))
    if "WORLD_SIZE" not in os.environ and parallel == "fsdp":
        raise GptlabError(
            "--parallel fsdp shards the model across processes that torchrun starts: launch with "
            "`torchrun --nproc_per_node N -m gptlab train ...` (N may be 1), or use --parallel ddp",
            silent=rank != 0,
        )
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1 and parallel != "fsdp":
        return SINGLE, resolve_device(device_name)
    me = Dist(rank, int(os.environ.get("LOCAL_RANK", "0")), world_size)
    if device_name in ("auto", "cuda"):
        device = torch.device("cuda", me.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    elif device_name == "cpu":
        device = torch.device("cpu")
    else:
        raise GptlabError(
            f"under torchrun each process takes cuda:LOCAL_RANK; use --device auto, cuda or cpu, not {device_name!r}",
            silent=not me.is_main,
        )
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return me, device


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def check_layout(tc: TrainConfig, me: Dist, device: torch.device) -> None:
    """Refuse what cannot be shared out over these processes, before anything is built or written."""
    if tc.grad_accum % me.world_size:
        raise GptlabError(
            f"grad_accum ({tc.grad_accum}) must be a multiple of the number of processes ({me.world_size}): "
            f"each process runs grad_accum / {me.world_size} micro-batches of the global batch"
        )
    if tc.parallel == "fsdp" and autocast_dtype(device, tc.dtype) == torch.float16:
        raise GptlabError(
            "--dtype float16 cannot be used with --parallel fsdp: fp16's gradient scaler would skip steps on some "
            "shards and not others; use --dtype bfloat16 (or float32)"
        )


def shard_model(model: GPT, device: torch.device, dtype: str) -> None:
    """FSDP2: each Block is one unit of sharding (its weights are gathered just before it runs and
    freed after), then the root takes the rest. The tied token embedding and LM head are one
    Parameter and both belong to the root, so it is sharded, gathered and reduced once.
    In mixed precision (bf16 on GPU) the blocks compute in that dtype while the sharded weights,
    the gradient reduction and the optimizer stay float32; that replaces autocast under FSDP."""
    amp = autocast_dtype(device, dtype)
    policy = MixedPrecisionPolicy(param_dtype=amp, reduce_dtype=torch.float32) if amp else MixedPrecisionPolicy()
    for block in model.transformer.h if model.config.arch == "gpt" else []:  # a bigram model is all root
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


def gathered_model(model: GPT, me: Dist) -> GPT | None:
    """A plain float32 copy of a sharded model on rank 0's CPU (None on the others), for the
    consolidated model.safetensors of best/. Collective: every rank gathers each parameter in turn,
    so no rank ever holds more than the copy and one full parameter."""
    full = build_model(model.config) if me.is_main else None
    with torch.no_grad():
        for name, param in model.named_parameters():  # a tied parameter once
            value = param.full_tensor()
            if full is not None:
                full.get_parameter(name).copy_(value)
    return full


def agree(me: Dist, fn: Callable[[], Any]) -> Any:
    """Run fn on every process and return its result. If it raises GptlabError on any of them, the
    lowest rank's error is raised on all (printed by rank 0 alone), so every process stops at the same
    point and none is left waiting in a collective: checks done this way stop the job before it
    writes anything, with one line."""
    error, result = None, None
    try:
        result = fn()
    except GptlabError as e:
        error = str(e)
    if me.enabled:
        error = next((e for e in gather_to_all(me, error) if e is not None), None)
    if error is not None:
        raise GptlabError(error, silent=not me.is_main)
    return result


def on_main(me: Dist, fn: Callable[[], Any]) -> None:
    """Run fn on rank 0 only; a GptlabError there is raised on every rank, so all stop together."""
    error = None
    if me.is_main:
        try:
            fn()
        except GptlabError as e:
            error = str(e)
    if me.enabled:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise GptlabError(error, silent=not me.is_main)


def sum_over_ranks(me: Dist, value: torch.Tensor) -> torch.Tensor:
    # A sum, which the callers want (totals, "any rank"), and a mean is a sum over world_size: gloo
    # learned ReduceOp.AVG only in torch 2.7, after the 2.6 that pyproject allows.
    if me.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def gather_to_all(me: Dist, obj: Any) -> list[Any]:
    """Every rank's obj, in rank order (a one-item list in a single process)."""
    if not me.enabled:
        return [obj]
    out = [None] * me.world_size
    dist.all_gather_object(out, obj)
    return out
