"""Train/validation split by document, so validation text is never a neighbour of training text."""

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


def split_documents(lengths: list[int], val_fraction: float, seed: int = 0) -> tuple[list[Span], list[Span], str]:
    """Return (train, val, method) for documents of these lengths (in characters).

    Several documents: whole documents, picked in a seeded random order, go to validation until
    they hold `val_fraction` of the characters. One document: its tail, as nanoGPT splits a single
    file (the first 1 - val_fraction of the characters train, the rest validate).
    """
    if not 0.0 < val_fraction < 1.0:
        raise GptlabError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if len(lengths) == 1:
        cut = int(lengths[0] * (1.0 - val_fraction))
        if not 0 < cut < lengths[0]:
            raise GptlabError("the text is too short to split; give more text")
        return [Span(0, 0, cut)], [Span(0, cut, lengths[0])], "position"
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
    train = [Span(i, 0, n) for i, n in enumerate(lengths) if i not in val_ids]
    val = [Span(i, 0, n) for i, n in enumerate(lengths) if i in val_ids]
    return train, val, "document"
