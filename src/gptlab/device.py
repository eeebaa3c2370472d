"""Which device to run on and in what precision."""

from __future__ import annotations

import contextlib

import torch

from gptlab.errors import GptlabError


def resolve_device(name: str = "auto") -> torch.device:
    """auto picks cuda, then mps, then cpu; a named device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GptlabError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GptlabError("--device cuda was asked for but this machine has no usable CUDA GPU; use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise GptlabError("--device mps was asked for but MPS is not available here; use --device cpu or auto")
    return device


def setup_device(device: torch.device) -> None:
    if device.type == "cpu":
        # Denormal floats make CPU backward passes 10-20x slower after a few steps (measured here).
        torch.set_flush_denormal(True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast_dtype(device: torch.device, dtype: str) -> torch.dtype | None:
    """The autocast dtype, or None for plain float32. auto: bf16 on CUDA where supported."""
    if dtype == "float32":
        return None
    if dtype == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None  # CPU: bf16 matmuls ran about 2x slower than fp32 on the 2-core machines here


def autocast(device: torch.device, dtype: str):
    amp = autocast_dtype(device, dtype)
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp)
