"""Random training windows read straight from the token shards through numpy memmap."""

from __future__ import annotations

from bisect import bisect_right
from pathlib import Path

import numpy as np
import torch

from gptlab.data.format import read_meta, verify_tokens
from gptlab.errors import GptlabError


class ShardedTokens:
    """Several shard memmaps read as one token stream: len() and slices, as a single array would be.

    A slice that runs over a shard's end continues into the next shard (the shards are one stream cut
    into files), so windows are sampled across all of them alike."""

    def __init__(self, shards: list[np.ndarray]):
        self.shards = shards
        self.starts = np.cumsum([0] + [len(s) for s in shards]).tolist()
        self.dtype = shards[0].dtype

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, key: slice | int) -> np.ndarray:
        if isinstance(key, int):
            return self[key : key + 1 or None][0]
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise IndexError("ShardedTokens supports contiguous slices only")
        parts = []
        i = bisect_right(self.starts, start) - 1
        while start < stop:
            offset = start - self.starts[i]
            take = min(stop - start, len(self.shards[i]) - offset)
            parts.append(self.shards[i][offset : offset + take])
            start += take
            i += 1
        return np.concatenate(parts) if len(parts) != 1 else parts[0]


def open_split(data_dir: Path, names: list[str], dtype: np.dtype) -> np.ndarray | ShardedTokens:
    shards = []
    for name in names:
        path = data_dir / name
        if not path.is_file():
            raise GptlabError(f"{path} is missing; run `gptlab prepare` again")
        # numpy cannot memory-map an empty file; an empty shard is an empty array
        shards.append(np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.zeros(0, dtype))
    return shards[0] if len(shards) == 1 else ShardedTokens(shards)


class TokenData:
    """The train and val token streams of a prepared data directory, memory-mapped (never loaded whole).

    `splits[name]` is a memmap when the split is one shard, else a ShardedTokens over its shards;
    both take len() and slices."""

    def __init__(self, data_dir: Path):
        self.dir = Path(data_dir)
        self.meta = read_meta(self.dir)
        verify_tokens(self.dir, self.meta)
        dtype = np.dtype(self.meta["dtype"])
        self.splits = {split: open_split(self.dir, self.meta["shards"][split], dtype) for split in ("train", "val")}

    @property
    def vocab_size(self) -> int:
        return int(self.meta["tokenizer"]["vocab_size"])

    def check_fits(self, block_size: int, batch_size: int) -> None:
        """Each split must hold a training window of block_size + 1 tokens, and enough distinct windows
        for a batch (else every batch would repeat the same few windows)."""
        for split, arr in self.splits.items():
            if len(arr) == 0:
                raise GptlabError(
                    f"the {split} split is empty (no tokens in {self.dir}); run `gptlab prepare` again with more text"
                )
            if len(arr) < block_size + 1:
                raise GptlabError(
                    f"the {split} split has {len(arr)} tokens, fewer than block_size + 1 = {block_size + 1}; "
                    "give more text or lower --block-size"
                )
            windows = len(arr) - block_size
            if windows < batch_size:
                raise GptlabError(
                    f"the {split} split holds only {windows} distinct windows of {block_size + 1} tokens, fewer than "
                    f"--batch-size {batch_size}; lower --batch-size (or --block-size) or give more text"
                )

    def get_batch(
        self, split: str, batch_size: int, block_size: int, generator: torch.Generator, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs x and next-token targets y, each (batch_size, block_size), at random offsets."""
        data = self.splits[split]
        starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator).tolist()
        window = np.stack([data[s : s + block_size + 1] for s in starts]).astype(np.int64)
        if window.max() >= self.vocab_size:  # a corrupt file too large to scan when opened; the model would crash
            raise GptlabError(
                f"the {split} tokens of {self.dir} hold id {window.max()}, outside the vocabulary of "
                f"{self.vocab_size}: the files are corrupt; run `gptlab prepare` again"
            )
        xy = torch.from_numpy(window)
        x, y = xy[:, :-1], xy[:, 1:]
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)
