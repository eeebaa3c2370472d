"""Train/validation split: by document, so validation text is never a neighbour of training text, or by
position when the documents are too few for a share near the one asked for."""

from __future__ import annotations

import random
from dataclasses import dataclass

from gptlab.errors import GptlabError


@dataclass(frozen=True)
class Span:
    """Characters [start, end) of document number `doc`."""

    doc: int
    start: int
    end: int


FAR = 2.0  # a document split whose val share is off by more than this factor falls back to splitting by position


def split_by_position(lengths: list[int], val_fraction: float) -> tuple[list[Span], list[Span]]:
    """Each document's first 1 - val_fraction of the characters train, the rest validate (nanoGPT's split of a
    single file, applied to each); a document too short to cut trains whole."""
    train, val = [], []
    for i, n in enumerate(lengths):
        cut = int(n * (1.0 - val_fraction))
        if 0 < cut < n:
            train.append(Span(i, 0, cut))
            val.append(Span(i, cut, n))
        else:
            train.append(Span(i, 0, n))
    if not val:
        raise GptlabError("the text is too short to split; give more text")
    return train, val


def split_documents(lengths: list[int], val_fraction: float, seed: int = 0) -> tuple[list[Span], list[Span], str]:
    """Return (train, val, method) for documents of these lengths (in characters).

    Several documents: whole documents, picked in a seeded random order, go to validation until
    they hold `val_fraction` of the characters ("document"). When the documents are too few for
    that to land near val_fraction (off by more than a factor FAR: 3 notes gave 34% for 0.1), and
    for a single document, each document is cut by position instead ("position").
    """
    if not 0.0 < val_fraction < 1.0:
        raise GptlabError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if len(lengths) > 1:
        total = sum(lengths)
        order = list(range(len(lengths)))
        random.Random(seed).shuffle(order)
        val_ids: set[int] = set()
        val_chars = 0
        for i in order[:-1]:  # never put every document in validation
            if val_chars >= val_fraction * total:
                break
            val_ids.add(i)
            val_chars += lengths[i]
        if val_fraction / FAR <= val_chars / total <= val_fraction * FAR:
            train = [Span(i, 0, n) for i, n in enumerate(lengths) if i not in val_ids]
            val = [Span(i, 0, n) for i, n in enumerate(lengths) if i in val_ids]
            return train, val, "document"
    return (*split_by_position(lengths, val_fraction), "position")
