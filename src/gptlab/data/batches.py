"""Random training windows read straight from the token files through numpy memmap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gptlab.data.prepare import read_meta
from gptlab.errors import GptlabError


class TokenData:
    """The train and val token streams of a prepared data directory, memory-mapped (never loaded whole)."""

    def __init__(self, data_dir: Path):
        self.dir = Path(data_dir)
        self.meta = read_meta(self.dir)
        dtype = np.dtype(self.meta["dtype"])
        self.splits = {}
        for split in ("train", "val"):
            path = self.dir / f"{split}.bin"
            if not path.is_file():
                raise GptlabError(f"{path} is missing; run `gptlab prepare` again")
            if path.stat().st_size == 0:  # numpy cannot map an empty file
                raise GptlabError(f"the {split} split is empty ({path}); run `gptlab prepare` again with more text")
            self.splits[split] = np.memmap(path, dtype=dtype, mode="r")

    @property
    def vocab_size(self) -> int:
        return int(self.meta["tokenizer"]["vocab_size"])

    def check_fits(self, block_size: int, batch_size: int) -> None:
        """Each split must hold a training window of block_size + 1 tokens, and enough distinct windows
        for a batch (else every batch would repeat the same few windows)."""
        for split, arr in self.splits.items():
            if len(arr) < block_size + 1:
                raise GptlabError(
                    f"the {split} split has {len(arr)} tokens, fewer than block_size + 1 = {block_size + 1}; "
                    "give more text or lower --block_size"
                )
            windows = len(arr) - block_size
            if windows < batch_size:
                raise GptlabError(
                    f"the {split} split holds only {windows} distinct windows of {block_size + 1} tokens, fewer than "
                    f"--batch_size {batch_size}; lower --batch_size (or --block_size) or give more text"
                )

    def get_batch(
        self, split: str, batch_size: int, block_size: int, generator: torch.Generator, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs x and next-token targets y, each (batch_size, block_size), at random offsets."""
        data = self.splits[split]
        starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator).tolist()
        window = np.stack([data[s : s + block_size + 1] for s in starts]).astype(np.int64)
        xy = torch.from_numpy(window)
        x, y = xy[:, :-1], xy[:, 1:]
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)
