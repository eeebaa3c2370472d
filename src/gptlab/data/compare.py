"""Compare tokenizers on a sample of a corpus: vocabulary size, characters per token, unknown rate; a PNG."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gptlab.data.corpus import Corpus
from gptlab.tokenizers import KINDS, tokenizer_class, train_tokenizer

SAMPLE_CHARS = 2_000_000


def corpus_sample(corpus: Corpus, n_chars: int = SAMPLE_CHARS) -> str:
    """The first `n_chars` characters of the corpus's cleaned documents, one after another."""
    parts, left = [], n_chars
    for doc in range(len(corpus.files)):
        for block in corpus.blocks(doc):
            parts.append(block[:left])
            left -= len(parts[-1])
            if not left:
                return "".join(parts)
    return "".join(parts)


def compare_tokenizers(corpus: Corpus, options: dict[str, Any], n_chars: int = SAMPLE_CHARS) -> list[dict[str, Any]]:
    """Train each kind on the same sample and encode it. Each kind gets the options that apply to it;
    gpt2 is left out without a tokenizer_file (it would need the network)."""
    sample = corpus_sample(corpus, n_chars)
    rows = []
    for kind in KINDS:
        if kind == "gpt2" and not options.get("tokenizer_file"):
            continue
        tok = train_tokenizer(
            kind, [sample], **{k: v for k, v in options.items() if k in tokenizer_class(kind).options}
        )
        ids = tok.encode(sample)
        unknown = ids.count(tok.unk_id) if tok.unk_id is not None else 0
        rows.append(
            {
                "kind": kind,
                "vocab_size": tok.vocab_size,
                "chars": len(sample),
                "tokens": len(ids),
                "chars_per_token": len(sample) / len(ids) if ids else 0.0,
                "unknown_rate": unknown / len(ids) if ids else 0.0,
            }
        )
    return rows


def plot_comparison(rows: list[dict[str, Any]], path: Path) -> Path:
    """Two bar charts side by side: vocabulary size (log scale) and characters per token."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [r["kind"] for r in rows]
    fig, (ax_vocab, ax_cpt) = plt.subplots(1, 2, figsize=(8, 3.2))
    ax_vocab.bar(kinds, [r["vocab_size"] for r in rows], color="tab:blue")
    ax_vocab.set_yscale("log")
    ax_vocab.set_title("vocabulary size")
    ax_cpt.bar(kinds, [r["chars_per_token"] for r in rows], color="tab:orange")
    ax_cpt.set_title("characters per token")
    for ax, key, fmt in ((ax_vocab, "vocab_size", "{:,}"), (ax_cpt, "chars_per_token", "{:.2f}")):
        for i, r in enumerate(rows):
            ax.annotate(fmt.format(r[key]), (i, r[key]), ha="center", va="bottom", fontsize=8)
    fig.suptitle(f"tokenizers on the same {rows[0]['chars']:,} characters" if rows else "tokenizers")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")  # written aside, renamed: never half a picture
    try:
        fig.savefig(tmp, dpi=100, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
