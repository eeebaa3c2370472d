"""Will a training configuration fit the device? Checked from the config alone, before anything is
allocated, with the estimate `gptlab info` prints (models.info.training_memory: float32 weights,
gradients, AdamW's two moments, and the activations one micro-batch keeps for backward; per device,
so sharded under --parallel fsdp)."""

from __future__ import annotations

import os

import torch

from gptlab.config import RunConfig
from gptlab.errors import GptlabError
from gptlab.models.info import training_memory

GiB = 2**30


def available_memory(device: torch.device) -> int | None:
    """Bytes free for training on `device` now, or None where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "mps":
        return torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(cfg: RunConfig, device: torch.device, world_size: int = 1) -> dict[str, int]:
    """Refuse a configuration whose estimated training memory exceeds the device's free memory."""
    memory = training_memory(cfg, cfg.train.batch_size, world_size)
    free = available_memory(device)
    if free is not None and memory["total"] > free:
        state = memory["total"] - memory["activations"]
        sharded = cfg.train.parallel == "fsdp"
        raise GptlabError(
            f"this configuration does not fit: training needs about {memory['total'] / GiB:,.1f} GiB on {device} "
            f"({state / GiB:,.1f} GiB for {memory['weights'] / 4 / 1e6:,.1f}M parameters"
            + (f" (a 1/{world_size} shard)" if sharded else "")
            + " with gradients and AdamW state, "
            f"{memory['activations'] / GiB:,.1f} GiB of activations for batch {cfg.train.batch_size} x block "
            f"{cfg.model.block_size}) "
            f"but {free / GiB:,.1f} GiB is free; lower --batch_size (--grad_accum keeps the tokens per step), "
            "--block_size, or the model size (--n_layer, --n_embd)"
            + ("" if sharded else ", or shard it over processes (--parallel fsdp)")
            + "; `gptlab info` shows the estimate"
        )
    return memory
