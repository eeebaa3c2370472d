"""Will a training configuration fit the device? Estimated from the config alone, before anything is allocated.

Training holds, per parameter, the float32 weight, its gradient and AdamW's two moments (16 bytes),
plus the activations kept for the backward pass of one micro-batch. Per layer those are about
17 * B * T * C values (layer-norm inputs and outputs, q/k/v, attention output, the 4C-wide MLP
input and output) and, for the explicit attention, 2 * n_head * T^2 more (scores and softmax);
SDPA never stores T x T. The output layer keeps three B * T * vocab float32 tensors (logits, their
log-softmax, their gradient), often the largest single item for small models.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from gptlab.config import ModelConfig, RunConfig
from gptlab.device import autocast_dtype
from gptlab.errors import GptlabError

GiB = 2**30


def count_params(cfg: ModelConfig) -> int:
    """Parameters of GPT(cfg), counting the tied wte / lm_head matrix once."""
    C, bias = cfg.n_embd, int(cfg.bias)
    layer_norm = C * (1 + bias)
    block = 2 * layer_norm + (3 * C * C + 3 * C * bias) + (C * C + C * bias) + (4 * C * C + 4 * C * bias) + (4 * C * C + C * bias)
    return cfg.vocab_size * C + cfg.block_size * C + cfg.n_layer * block + layer_norm


@dataclass
class MemoryEstimate:
    params: int
    state_bytes: int  # weights, gradients, optimizer moments
    activation_bytes: int  # kept for backward, one micro-batch

    @property
    def total_bytes(self) -> int:
        return self.state_bytes + self.activation_bytes


def estimate_training_memory(cfg: RunConfig, device: torch.device | str = "cpu") -> MemoryEstimate:
    m, B, T = cfg.model, cfg.train.batch_size, cfg.model.block_size
    params = count_params(m)
    act_bytes = 2 if autocast_dtype(torch.device(device), cfg.train.dtype) is not None else 4
    per_layer = 17 * B * T * m.n_embd + (2 * B * m.n_head * T * T if m.attention == "manual" else 0)
    activations = act_bytes * (m.n_layer * per_layer + 3 * B * T * m.n_embd) + 4 * 3 * B * T * m.vocab_size
    return MemoryEstimate(params=params, state_bytes=16 * params, activation_bytes=activations)


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


def check_memory(cfg: RunConfig, device: torch.device) -> MemoryEstimate:
    """Refuse, before allocating anything, a configuration whose estimate exceeds the device's free memory."""
    est = estimate_training_memory(cfg, device)
    free = available_memory(device)
    if free is not None and est.total_bytes > free:
        raise GptlabError(
            f"this configuration does not fit: training needs about {est.total_bytes / GiB:,.1f} GiB on {device} "
            f"({est.state_bytes / GiB:,.1f} GiB for {est.params / 1e6:,.1f}M parameters with gradients and AdamW state, "
            f"{est.activation_bytes / GiB:,.1f} GiB of activations for batch {cfg.train.batch_size} x block {cfg.model.block_size}) "
            f"but {free / GiB:,.1f} GiB is free; lower --batch_size (--grad_accum keeps the tokens per step), "
            "--block_size, or the model size (--n_layer, --n_embd)"
        )
    return est
