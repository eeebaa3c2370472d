"""Which device to run on and in what precision."""

from __future__ import annotations

import contextlib
import os

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
        raise GptlabError(
            "--device cuda was asked for but this machine has no usable CUDA GPU; use --device cpu or auto"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise GptlabError("--device mps was asked for but MPS is not available here; use --device cpu or auto")
    return device


def available_memory(device: torch.device) -> int | None:
    """Bytes free on `device` now, or None where it cannot be told."""
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


def setup_device(device: torch.device, tf32: bool = True) -> None:
    if device.type == "cpu":
        # Denormal floats make CPU backward passes 10-20x slower after a few steps (measured here).
        torch.set_flush_denormal(True)
    if device.type == "cuda":
        if device.index is not None:
            torch.cuda.set_device(device)  # so that NCCL and new tensors use this process's GPU
        # "high" lets float32 matmuls use TensorFloat-32 tensor cores (10-bit mantissa inputs).
        torch.set_float32_matmul_precision("high" if tf32 else "highest")


def autocast_dtype(device: torch.device, dtype: str) -> torch.dtype | None:
    """The autocast dtype, or None for plain float32. auto: bf16 on CUDA where supported."""
    if dtype == "float32":
        return None
    if dtype == "bfloat16":
        return torch.bfloat16
    if dtype == "float16":
        return torch.float16  # needs a GradScaler: small fp16 gradients underflow to zero
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None  # CPU: bf16 matmuls ran about 2x slower than fp32 on the 2-core machines here


def autocast(device: torch.device, dtype: str):
    amp = autocast_dtype(device, dtype)
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp)


# Dense bf16/fp16 tensor-core peaks (FLOP/s) from the vendors' data sheets, matched in order
# against torch.cuda.get_device_name(); MFU is measured against these unless --peak_flops is set.
KNOWN_PEAK_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("A100", 312e12),
    ("L4", 121e12),
    ("V100", 125e12),
    ("T4", 65e12),
)


def peak_flops(device: torch.device, configured: float = 0.0) -> float | None:
    """The FLOP/s that MFU is measured against: the configured value, else a known GPU's, else None."""
    if configured > 0:
        return configured
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in KNOWN_PEAK_FLOPS:
            if key in name:
                return flops
    return None
