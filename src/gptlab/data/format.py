"""The data directory's format: the one module that knows its file names, meta.json and dtypes.

    meta.json           what was done: sources, documents per split, cleaning, tokenizer, sizes, content hash
    train.bin val.bin   flat token ids (numpy memmap), or train_000.bin, train_001.bin, ... past one shard
    <tokenizer file>    char.json, word.json, tokenizer.json (bpe) or gpt2.tiktoken: meta["tokenizer"]["file"]
    checksums.json      the SHA-256 of every file (gptlab.atomic); token files are checked against it and
                        against meta.json's sizes whenever they are opened (`verify_tokens`)

`gptlab prepare` (data.prepare) writes it; data.batches, evaluation and the trainer read it through here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from gptlab.atomic import CHECKSUMS, sha256_file
from gptlab.errors import GptlabError
from gptlab.outputs import OutputKind
from gptlab.tokenizers import Tokenizer, load_tokenizer

META = "meta.json"
FORMAT = 2  # bumped when a reader of the old layout would misread the new one
HASH_LIMIT = 256 << 20  # token files up to this size are also hashed and scanned on every open (~0.5 s per 256 MB)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (half the disk and memory), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:03d}.bin"


def single_shard_name(split: str) -> str:
    """A split that fits one shard is plain {split}.bin, nanoGPT's layout."""
    return f"{split}.bin"


def is_data_dir(data_dir: Path) -> bool:
    """A data directory gptlab wrote: its meta.json is an object with a shard list."""
    try:
        meta = json.loads((Path(data_dir) / META).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and "shards" in meta


DATA_OUTPUT = OutputKind("a gptlab data directory", "that data directory", is_data_dir)


def write_meta(data_dir: Path, meta: dict[str, Any]) -> None:
    (Path(data_dir) / META).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")


def read_meta(data_dir: Path) -> dict[str, Any]:
    path = Path(data_dir) / META
    if not path.is_file():
        raise GptlabError(
            f"{data_dir} is not a prepared data directory (no {META}); run `gptlab prepare --out {data_dir}` first"
        )
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GptlabError(f"{path} is corrupt; run `gptlab prepare` again") from None
    if not isinstance(meta, dict) or any(key not in meta for key in ("shards", "tokenizer", "sizes", "dtype")):
        raise GptlabError(
            f"{path} was written by an older gptlab or is damaged (no shard list); run `gptlab prepare` again"
        )
    return meta


def verify_tokens(data_dir: Path, meta: dict[str, Any]) -> None:
    """The token files must be what meta.json says: their sizes always; their SHA-256 (checksums.json)
    and that every id is inside the vocabulary, when the files are small enough to read in a moment."""
    data_dir = Path(data_dir)
    dtype = np.dtype(meta["dtype"])
    total = 0
    for split, names in meta["shards"].items():
        size = 0
        for name in names:
            path = data_dir / name
            if not path.is_file():
                raise GptlabError(f"{path} is missing; run `gptlab prepare` again")
            size += path.stat().st_size
        expected = meta["sizes"][f"{split}_tokens"]
        if size != expected * dtype.itemsize:
            raise GptlabError(
                f"the {split} token files of {data_dir} hold {size // dtype.itemsize:,} tokens but meta.json says "
                f"{expected:,}: they were cut or changed after `gptlab prepare`; run `gptlab prepare` again"
            )
        total += size
    if total > HASH_LIMIT:
        return
    sums = read_checksums(data_dir)
    vocab = meta["tokenizer"]["vocab_size"]
    for names in meta["shards"].values():
        for name in names:
            path = data_dir / name
            if name in sums and sha256_file(path) != sums[name]:
                raise GptlabError(
                    f"{path} is corrupt (its SHA-256 differs from {CHECKSUMS}); run `gptlab prepare` again"
                )
            if path.stat().st_size and int(np.memmap(path, dtype=dtype, mode="r").max()) >= vocab:
                raise GptlabError(
                    f"{path} holds token ids outside the vocabulary of {vocab}: it is corrupt or from another "
                    "tokenizer; run `gptlab prepare` again"
                )


def read_checksums(data_dir: Path) -> dict[str, str]:
    """The SHA-256 of each file from checksums.json (data directories written before it have none)."""
    try:
        return json.loads((Path(data_dir) / CHECKSUMS).read_text())["sha256"]
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise GptlabError(f"{Path(data_dir) / CHECKSUMS} is corrupt; run `gptlab prepare` again") from None


def tokenizer_record(tok: Tokenizer, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """meta["tokenizer"], the record a data directory and every checkpoint keep of their tokenizer."""
    record = {"kind": tok.kind, "file": tok.file_name, "vocab_size": tok.vocab_size, "eot_id": tok.eot_id}
    record["unk_id"] = tok.unk_id
    if options is not None:  # how it was trained (prepare's options), paths as text
        record["options"] = {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}
    return record


def tokenizer_path(data_dir: Path, meta: dict[str, Any]) -> Path:
    return Path(data_dir) / meta["tokenizer"]["file"]


def data_tokenizer(data_dir: Path) -> Tokenizer:
    """The tokenizer a prepared data directory was made with."""
    return load_tokenizer(read_meta(data_dir)["tokenizer"]["kind"], Path(data_dir))
