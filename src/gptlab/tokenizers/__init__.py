"""Tokenizers behind one small protocol.

Each kind saves itself to one file in the data directory; meta.json records the kind, so
`load_tokenizer` can rebuild it from the files alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from gptlab.errors import GptlabError

EOT = "<|endoftext|>"  # separates documents in the token stream


@runtime_checkable
class Tokenizer(Protocol):
    kind: str  # "char", ... : the name meta.json records
    file_name: str  # the file save() writes inside a directory

    @property
    def vocab_size(self) -> int: ...

    @property
    def eot_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def save(self, directory: Path) -> Path: ...


def tokenizer_class(kind: str):
    from gptlab.tokenizers.char import CharTokenizer

    kinds = {"char": CharTokenizer}
    if kind not in kinds:
        raise GptlabError(f"unknown tokenizer {kind!r}; available: {', '.join(kinds)}")
    return kinds[kind]


def train_tokenizer(kind: str, texts: list[str]) -> Tokenizer:
    """Build a tokenizer of `kind` from the training texts."""
    return tokenizer_class(kind).train(texts)


def load_tokenizer(kind: str, directory: Path) -> Tokenizer:
    return tokenizer_class(kind).load(Path(directory))
