"""The data directory's format: the one module that knows its file names, meta.json and dtypes.

    meta.json           what was done: sources, documents per split, cleaning, tokenizer, sizes, content hash
    train.bin val.bin   flat token ids (numpy memmap), or train_000.bin, train_001.bin, ... past one shard
    <tokenizer file>    char.json, word.json, tokenizer.json (bpe) or gpt2.tiktoken: meta["tokenizer"]["file"]

`gptlab prepare` (data.prepare) writes it; data.batches, evaluation and the trainer read it through here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from gptlab.errors import GptlabError
from gptlab.tokenizers import Tokenizer, load_tokenizer

META = "meta.json"
FORMAT = 2  # bumped when a reader of the old layout would misread the new one


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (half the disk and memory), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:03d}.bin"


def single_shard_name(split: str) -> str:
    """A split that fits one shard is plain {split}.bin, nanoGPT's layout."""
    return f"{split}.bin"


def is_data_dir(data_dir: Path) -> bool:
    return (Path(data_dir) / META).is_file()


def write_meta(data_dir: Path, meta: dict[str, Any]) -> None:
    (Path(data_dir) / META).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")


def read_meta(data_dir: Path) -> dict[str, Any]:
    path = Path(data_dir) / META
    if not path.is_file():
        raise GptlabError(f"{data_dir} is not a prepared data directory (no {META}); run `gptlab prepare --out {data_dir}` first")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GptlabError(f"{path} is corrupt; run `gptlab prepare` again") from None
    if not isinstance(meta, dict) or "shards" not in meta or "tokenizer" not in meta:
        raise GptlabError(f"{path} was written by an older gptlab or is damaged (no shard list); run `gptlab prepare` again")
    return meta


def tokenizer_path(data_dir: Path, meta: dict[str, Any]) -> Path:
    return Path(data_dir) / meta["tokenizer"]["file"]


def data_tokenizer(data_dir: Path) -> Tokenizer:
    """The tokenizer a prepared data directory was made with."""
    return load_tokenizer(read_meta(data_dir)["tokenizer"]["kind"], Path(data_dir))
