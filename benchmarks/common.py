"""What every benchmark shares: the machine it ran on, repeated timing with median and spread."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def machine() -> dict[str, str]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
    }
    try:
        info["git"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        pass
    return info


def machine_line() -> str:
    return "; ".join(f"{k} {v}" for k, v in machine().items())


@dataclass
class Timing:
    samples: list[float]  # seconds, one per repeat

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> float:
        """Half the range, as a share of the median: how far the repeats strayed."""
        return (max(self.samples) - min(self.samples)) / 2 / self.median if self.median else 0.0

    def __str__(self) -> str:
        return f"{self.median:.4g} s ±{100 * self.spread:.0f}%"


def interleaved(
    fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1, sync=None
) -> dict[str, Timing]:
    """Time several contenders in alternation (a, b, a, b, ...) so load on a shared machine hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if sync:
                sync()
            t = time.perf_counter()
            fn()
            if sync:
                sync()
            samples[name].append(time.perf_counter() - t)
    return {name: Timing(s) for name, s in samples.items()}


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_SHAKESPEARE = REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def tiny_shakespeare() -> Path:
    """Tiny Shakespeare (1.1 MB), read from ../shared/data beside the repository; never copied into it."""
    if not TINY_SHAKESPEARE.is_file():
        raise SystemExit(f"benchmark data missing: {TINY_SHAKESPEARE} (Tiny Shakespeare beside the repository root)")
    return TINY_SHAKESPEARE


def prepared_tiny_shakespeare(tmp_dir: Path) -> Path:
    """Tiny Shakespeare prepared with gptlab's char tokenizer (90/10 split by position, as nanoGPT) into tmp_dir."""
    from gptlab.data.prepare import prepare

    out = Path(tmp_dir) / "tinyshakespeare-char"
    if not (out / "meta.json").is_file():
        prepare([str(tiny_shakespeare())], out)
    return out
