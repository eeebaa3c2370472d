"""Will a training configuration fit the device? Checked from the config alone, before anything is
allocated, with the estimate `gptlab info` prints (models.info.training_memory: float32 weights,
gradients, AdamW's two moments, and the activations one micro-batch keeps for backward; per device,
so sharded under --parallel fsdp)."""

from __future__ import annotations

import torch

from gptlab.config import RunConfig
from gptlab.device import GiB, available_memory
from gptlab.errors import GptlabError
from gptlab.models.info import training_memory


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
            f"but {free / GiB:,.1f} GiB is free; lower --batch-size (--grad-accum keeps the tokens per step), "
            "--block-size, or the model size (--n-layer, --n-embd)"
            + ("" if sharded else ", or shard it over processes (--parallel fsdp)")
            + "; `gptlab info` shows the estimate"
        )
    return memory
