"""More than one process: data-parallel training launched by torchrun.

    torchrun --nproc-per-node 4 -m gptlab train --data DIR --out RUN ...   (the usual command line)

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE for each process it starts; `init_distributed` reads
them, joins the process group (NCCL on GPUs, gloo on CPU) and gives each process its own GPU
(cuda:LOCAL_RANK). Without them, or with WORLD_SIZE 1, training is a single process and nothing
here talks to anyone. Rank 0 is the main process: the only one that writes files or prints.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from gptlab.device import resolve_device
from gptlab.errors import GptlabError


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


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """This process's place in the job and its device; joins the process group under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return SINGLE, resolve_device(device_name)
    me = Dist(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world_size)
    if device_name in ("auto", "cuda"):
        device = torch.device("cuda", me.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    elif device_name == "cpu":
        device = torch.device("cpu")
    else:
        raise GptlabError(
            f"under torchrun each process takes cuda:LOCAL_RANK; use --device auto, cuda or cpu, not {device_name!r}"
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
        raise GptlabError(error)


def sum_over_ranks(me: Dist, value: torch.Tensor) -> torch.Tensor:
    if me.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)  # gloo has no AVG
    return value


def gather_to_all(me: Dist, obj: Any) -> list[Any]:
    """Every rank's obj, in rank order (a one-item list in a single process)."""
    if not me.enabled:
        return [obj]
    out = [None] * me.world_size
    dist.all_gather_object(out, obj)
    return out
