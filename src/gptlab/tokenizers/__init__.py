"""Tokenizers behind one small protocol.

Each kind saves itself to one file in the data directory; meta.json records the kind, so
`load_tokenizer` can rebuild it from the files alone (checkpoints copy that file).

    char   one id per character seen in training
    word   words and punctuation, <unk> for rare ones (--min-freq, --max-vocab)
    bpe    byte-level BPE trained on your text with Hugging Face tokenizers (--vocab-size)
    gpt2   GPT-2's 50,257-token BPE through tiktoken (--tokenizer-file for offline use)
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from gptlab.errors import GptlabError

EOT = "<|endoftext|>"  # separates documents in the token stream
KINDS = ("char", "word", "bpe", "gpt2")


@runtime_checkable
class Tokenizer(Protocol):
    kind: str  # "char", "word", "bpe", "gpt2": the name meta.json records
    file_name: str  # the one file save() writes inside a directory
    options: tuple[str, ...]  # keyword options train() takes (e.g. "vocab_size")
    unk_id: int | None  # the id unknown text becomes, or None when every text encodes

    @property
    def vocab_size(self) -> int: ...

    @property
    def eot_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def save(self, directory: Path) -> Path: ...

    # and two classmethods: train(texts, **options) and load(directory)


def tokenizer_class(kind: str):
    from gptlab.tokenizers.bpe import BPETokenizer
    from gptlab.tokenizers.char import CharTokenizer
    from gptlab.tokenizers.gpt2 import GPT2Tokenizer
    from gptlab.tokenizers.word import WordTokenizer

    kinds = {"char": CharTokenizer, "word": WordTokenizer, "bpe": BPETokenizer, "gpt2": GPT2Tokenizer}
    if kind not in kinds:
        raise GptlabError(f"unknown tokenizer {kind!r}; available: {', '.join(kinds)}")
    return kinds[kind]


def train_tokenizer(kind: str, texts: Iterable[str], **options: Any) -> Tokenizer:
    """Build a tokenizer of `kind` from the training texts (any iterable of strings, read once).

    Options left at None are not given; one the kind does not take is an error, not ignored.
    """
    cls = tokenizer_class(kind)
    given = {k: v for k, v in options.items() if v is not None}
    for name in given:
        if name not in cls.options:
            takes = ", ".join("--" + o.replace("_", "-") for o in cls.options) or "no options"
            raise GptlabError(f"--{name.replace('_', '-')} does not apply to the {kind} tokenizer (it takes {takes})")
    return cls.train(texts, **given)


def load_tokenizer(kind: str, directory: Path) -> Tokenizer:
    return tokenizer_class(kind).load(Path(directory))


def pieces(tok: Tokenizer, ids: list[int]) -> list[str]:
    """Each id decoded on its own: how a text was cut. A byte-level piece that is part of a
    multi-byte character shows as U+FFFD."""
    return [tok.decode([i]) for i in ids]
