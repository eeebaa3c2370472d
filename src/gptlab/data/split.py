"""Train/validation split by document, so validation text is never a neighbour of training text."""

from __future__ import annotations

import random

from gptlab.data.sources import Document
from gptlab.errors import GptlabError


def split_documents(docs: list[Document], val_fraction: float, seed: int = 0) -> tuple[list[Document], list[Document], str]:
    """Return (train, val, method).

    Several documents: whole documents, picked in a seeded random order, go to validation until
    they hold `val_fraction` of the characters. One document: its tail, as nanoGPT splits a single
    file (the first 1 - val_fraction of the characters train, the rest validate).
    """
    if not 0.0 < val_fraction < 1.0:
        raise GptlabError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if len(docs) == 1:
        doc = docs[0]
        cut = int(len(doc.text) * (1.0 - val_fraction))
        train, val = Document(doc.name, doc.text[:cut]), Document(doc.name, doc.text[cut:])
        if not train.text or not val.text:
            raise GptlabError(f"{doc.name} is too short to split; give more text")
        return [train], [val], "position"
    total = sum(len(d.text) for d in docs)
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    val_ids: set[int] = set()
    val_chars = 0
    for i in order[:-1]:  # never put every document in validation
        if val_chars >= val_fraction * total:
            break
        val_ids.add(i)
        val_chars += len(docs[i].text)
    train = [d for i, d in enumerate(docs) if i not in val_ids]
    val = [d for i, d in enumerate(docs) if i in val_ids]
    return train, val, "document"
