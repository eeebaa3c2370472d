"""Which device to run on, with how many CPU threads, in what precision, and how much memory it has free."""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import torch

from gptlab.config import MAX_THREADS
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


def available_cpus() -> int:
    """The cores this process may actually use: its CPU affinity, capped by a cgroup CPU quota
    (containers), shared out among torchrun's processes on this machine."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def cgroup_cpu_quota() -> float | None:
    """CPUs' worth of time a cgroup allows per period (cgroup v2's cpu.max, else v1's cfs files), or None."""
    cgroup = Path("/sys/fs/cgroup")
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def set_threads(threads: int = 0) -> int:
    """torch's intra-op CPU threads: `threads`; with 0, OMP_NUM_THREADS where it is set, else the
    cores available (available_cpus).

    torch's own default ignores a container's CPU quota and torchrun's other processes, and
    oversubscribed threads are very slow (two trainings on these 2 cores once crawled 400x slower).
    Jobs that share a machine should each pass their share (threads=1 for two jobs on 2 cores)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or not 0 <= threads <= MAX_THREADS:
        raise GptlabError(
            f"--threads must be a whole number in [0, {MAX_THREADS}] (0: the cores available), got {threads}"
        )
    if not threads:
        omp = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(omp) if omp.isdigit() and int(omp) > 0 else available_cpus()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def setup_device(device: torch.device, tf32: bool = True, threads: int = 0) -> None:
    set_threads(threads)
    if device.type == "cpu":
        # Denormal floats make CPU backward passes 10-20x slower after a few steps (measured here).
        torch.set_flush_denormal(True)
    if device.type == "cuda":
        if device.index is not None:
            torch.cuda.set_device(device)  # so that NCCL and new tensors use this process's GPU
        # "high" lets float32 matmuls use TensorFloat-32 tensor cores (10-bit mantissa inputs).
        torch.set_float32_matmul_precision("high" if tf32 else "highest")


GiB = 2**30


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
# against torch.cuda.get_device_name(); MFU is measured against these unless --peak-flops is set.
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
