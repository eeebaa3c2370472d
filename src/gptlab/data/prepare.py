"""`gptlab prepare`: text sources -> a data directory a trainer can read.

Two streaming passes over the sources, neither holding a whole file in memory:
  1. survey: read and clean every document, count its characters, hash it, train the tokenizer;
  2. encode: split by document (or a single file by position), cut the text into ~1M-character
     chunks at places where no token can straddle, encode them on every core (threads for gpt2,
     whose tiktoken encodes outside the GIL; worker processes for the others), and append the
     ids, in order, with the end-of-text token between documents, to shard files.

The directory holds the token shards (`train.bin` / `val.bin`, or `train_000.bin`, ... when a split
outgrows one shard; flat ids, uint16 when the vocabulary fits, else uint32), the tokenizer file and
meta.json describing what was done. The output directory is claimed first (gptlab.outputs: the
overwrite guard and a lock) and written through gptlab.atomic.atomic_directory, so a killed or
failed prepare leaves the previous directory (or none), never a half-written one.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import signal
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from functools import partial
from multiprocessing.pool import Pool, ThreadPool
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from gptlab.atomic import atomic_directory
from gptlab.data.cleaning import CleaningRules, new_report
from gptlab.data.corpus import Corpus
from gptlab.data.format import (
    DATA_OUTPUT,
    FORMAT,
    shard_name,
    single_shard_name,
    token_dtype,
    tokenizer_record,
    write_meta,
)
from gptlab.data.sources import BUNDLED
from gptlab.data.split import Span, split_documents
from gptlab.device import available_cpus
from gptlab.errors import GptlabError
from gptlab.outputs import check_output_file, claim_output
from gptlab.tokenizers import Tokenizer, load_tokenizer, tokenizer_class, train_tokenizer

CHUNK_CHARS = 1 << 20  # characters per encoding task
SHARD_TOKENS = 100_000_000  # tokens per shard file (200 MB as uint16)
POOL_MIN_CHARS = 16 << 20  # below this, starting worker processes costs more than they save
IN_FLIGHT_PER_WORKER = 4  # chunks queued per worker: keeps them busy, bounds memory
MIN_BLOCK_SIZE = 8  # a split must hold at least MIN_BLOCK_SIZE + 1 tokens: one training window


def progress_bar(progress: bool, **kwargs) -> tqdm:
    return tqdm(disable=None if progress else True, unit_scale=True, leave=False, **kwargs)  # None: only on a terminal


def survey(corpus: Corpus, kind: str, options: dict[str, Any], progress: bool = False) -> dict[str, Any]:
    """Pass 1: the tokenizer trained on all the (cleaned) text, each document's length, the cleaning report."""
    report = new_report(corpus.rules)
    stats: dict[str, int] = {"bytes": 0}
    lengths = [0] * len(corpus.files)
    has_text = [False] * len(corpus.files)
    hasher = hashlib.sha256()
    bar = progress_bar(progress, total=sum(f.path.stat().st_size for f in corpus.files), unit="B", desc="reading")

    def texts() -> Iterator[str]:
        for i, f in enumerate(corpus.files):
            hasher.update(f.name.encode() + b"\0")
            for block in corpus.blocks(i, report, stats):
                lengths[i] += len(block)
                has_text[i] = has_text[i] or not block.isspace()
                hasher.update(block.encode())
                bar.update(stats["bytes"] - bar.n)
                yield block
            hasher.update(b"\0")

    stream = texts()
    with bar:
        tok = train_tokenizer(kind, stream, **options)
        for _ in stream:  # a tokenizer that learns nothing (gpt2) left the text unread; the lengths still count
            pass
    return {
        "tokenizer": tok,
        "lengths": [n if t else 0 for n, t in zip(lengths, has_text)],  # whitespace-only documents hold no text
        "cleaning": report,
        "replaced": stats.get("replaced", 0),
        "content_sha256": hasher.hexdigest(),
    }


def cut_span(blocks: Iterable[str], start: int, end: int) -> Iterator[str]:
    """The characters [start, end) of a stream of blocks."""
    pos = 0
    for block in blocks:
        lo, hi = max(start - pos, 0), min(end - pos, len(block))
        if lo < hi:
            yield block[lo:hi] if (lo, hi) != (0, len(block)) else block
        pos += len(block)
        if pos >= end:
            return


def safe_cut(text: str, near: int) -> int:
    """A place at or before `near` (else the first after it) where a line break follows a
    non-space character; 0 if there is none. Every tokenizer here splits text there anyway
    (GPT-2's regex never joins a line break to the word before it), so the two halves encode to
    the same ids as the whole."""
    i = text.rfind("\n", 0, near + 1)
    while i > 0 and text[i - 1].isspace():
        i = text.rfind("\n", 0, i)
    if i > 0:
        return i
    i = text.find("\n", near)
    while i > 0 and text[i - 1].isspace():
        i = text.find("\n", i + 1)
    return max(i, 0)


def token_chunks(blocks: Iterable[str], size: int = CHUNK_CHARS) -> Iterator[str]:
    """Re-cut a document's blocks into chunks of about `size` characters that encode independently."""
    buf = ""
    for block in blocks:
        buf += block
        while len(buf) >= size and (cut := safe_cut(buf, size)):
            yield buf[:cut]
            buf = buf[cut:]
    if buf:
        yield buf


_worker_tokenizer: Tokenizer | None = None


def _load_worker_tokenizer(kind: str, directory: str) -> None:
    global _worker_tokenizer
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops the pool
    _worker_tokenizer = load_tokenizer(kind, Path(directory))


def encode_ids(tok: Tokenizer, text: str, dtype: np.dtype | str) -> np.ndarray:
    """`tok.encode(text)` as an array. tiktoken (gpt2) can write the ids into an array itself, which
    skips building a list of Python ints: 13% less CPU per chunk."""
    if tok.kind == "gpt2":
        return tok.encoding.encode_to_numpy(text, disallowed_special=()).astype(dtype)  # = encode_ordinary
    return np.asarray(tok.encode(text), dtype=dtype)


def _encode_chunk(text: str, dtype: str) -> np.ndarray:
    return encode_ids(_worker_tokenizer, text, dtype)


def start_pool(tok: Tokenizer, workers: int, directory: Path) -> Pool:
    """Workers to encode chunks. tiktoken (gpt2) encodes outside the GIL, so threads sharing `tok`
    run in parallel, with nothing to start or copy (1 GB on 2 cores: 1.84x the single-process loop's
    rate, against 1.52x with processes; docs/benchmarks.md). The other tokenizers encode in Python or
    hold the GIL: they get processes, each loading its own copy from `directory`."""
    if tok.kind == "gpt2":
        return ThreadPool(workers)
    # spawn, not fork: the parent may hold threads (torch, tokenizers) that fork would copy mid-lock
    return multiprocessing.get_context("spawn").Pool(workers, _load_worker_tokenizer, (tok.kind, str(directory)))


def encode_in_order(
    items: Iterable[str | None], tok: Tokenizer, dtype: np.dtype, pool, workers: int
) -> Iterator[tuple[int, np.ndarray]]:
    """(characters, ids) for each text chunk, in order; None stands for the end-of-text token.
    With a pool, chunks are encoded by its workers, a bounded number in flight."""
    eot = np.asarray([tok.eot_id], dtype=dtype)
    if pool is None:
        for text in items:
            yield (0, eot) if text is None else (len(text), encode_ids(tok, text, dtype))
        return
    encode = partial(encode_ids, tok) if isinstance(pool, ThreadPool) else _encode_chunk  # threads share tok
    pending: deque = deque()
    limit = IN_FLIGHT_PER_WORKER * workers
    for text in items:
        pending.append((0, eot) if text is None else (len(text), pool.apply_async(encode, (text, dtype.name))))
        if len(pending) >= limit:
            n, ids = pending.popleft()
            yield n, ids if isinstance(ids, np.ndarray) else ids.get()
    while pending:
        n, ids = pending.popleft()
        yield n, ids if isinstance(ids, np.ndarray) else ids.get()


class ShardWriter:
    """Appends ids to {split}_000.bin, {split}_001.bin, ... of at most `shard_tokens` each;
    a split that fits one shard ends up as plain {split}.bin (nanoGPT's layout)."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.directory, self.split, self.dtype, self.shard_tokens = directory, split, dtype, shard_tokens
        self.names: list[str] = []
        self.file = None
        self.in_shard = 0
        self.tokens = 0

    def write(self, ids: np.ndarray) -> None:
        while ids.size:
            if self.file is None or self.in_shard == self.shard_tokens:
                self.next_shard()
            take = min(ids.size, self.shard_tokens - self.in_shard)
            self.file.write(ids[:take].tobytes())
            self.in_shard += take
            self.tokens += take
            ids = ids[take:]

    def next_shard(self) -> None:
        if self.file:
            self.file.close()
        self.names.append(shard_name(self.split, len(self.names)))
        self.file = open(self.directory / self.names[-1], "wb")
        self.in_shard = 0

    def close(self) -> list[str]:
        if self.file is None:
            self.next_shard()  # an empty split still gets its (empty) file
        self.file.close()
        if len(self.names) == 1:
            (self.directory / self.names[0]).rename(self.directory / single_shard_name(self.split))
            self.names = [single_shard_name(self.split)]
        return self.names


def write_split(
    corpus: Corpus,
    spans: list[Span],
    writer: ShardWriter,
    tok: Tokenizer,
    pool,
    workers: int,
    progress: bool,
    desc: str,
) -> dict[str, int]:
    """Pass 2 for one split: its documents' tokens, end-of-text between documents, into the shards."""

    def items() -> Iterator[str | None]:
        for k, span in enumerate(spans):
            if k:
                yield None
            yield from token_chunks(cut_span(corpus.blocks(span.doc), span.start, span.end))

    unknown = 0
    with progress_bar(progress, total=sum(s.end - s.start for s in spans), unit="char", desc=desc) as bar:
        for n_chars, ids in encode_in_order(items(), tok, writer.dtype, pool, workers):
            writer.write(ids)
            if tok.unk_id is not None:
                unknown += int(np.count_nonzero(ids == tok.unk_id))
            bar.update(n_chars)
    return {
        "tokens": writer.tokens,
        "unknown": unknown,
        "documents": len(spans),
        "chars": sum(s.end - s.start for s in spans),
    }


def prepare(
    sources: list[str],
    out_dir: Path,
    tokenizer: str = "char",
    val_fraction: float = 0.1,
    seed: int = 0,
    overwrite: bool = False,
    *,
    tokenizer_options: dict[str, Any] | None = None,
    cleaning: CleaningRules | None = None,
    encoding_errors: str = "strict",
    workers: int | None = None,
    shard_tokens: int = SHARD_TOKENS,
    progress: bool = False,
    compare_png: Path | None = None,
) -> dict[str, Any]:
    """Prepare `sources` (files, folders; none = the bundled corpus) into `out_dir`; returns meta.json's content.

    tokenizer_options: vocab_size (bpe), min_freq / max_vocab (word), tokenizer_file (gpt2).
    workers: threads (gpt2) or processes (the rest) that encode (default: one per core; small corpora are
    encoded in-process).
    compare_png: also compare every tokenizer on a sample of the text (meta["comparison"]) and draw it
    there; then options for the other kinds are welcome (e.g. tokenizer_file to include gpt2).
    overwrite: replace `out_dir` if it is a data directory (never anything else, nor one holding a source).
    """
    out_dir = Path(out_dir)
    if shard_tokens < 1:
        raise GptlabError(f"--shard-tokens must be at least 1, got {shard_tokens}")
    if workers is not None and workers < 1:
        raise GptlabError(f"--workers must be at least 1, got {workers}")
    options = {k: v for k, v in (tokenizer_options or {}).items() if v is not None}
    inputs = [s for s in sources if s != BUNDLED] + ([options["tokenizer_file"]] if "tokenizer_file" in options else [])
    if compare_png:
        check_output_file(compare_png, inputs, "--compare-png")
    with claim_output(out_dir, DATA_OUTPUT, overwrite, inputs):
        return write_data_dir(
            sources,
            out_dir,
            tokenizer,
            val_fraction,
            seed,
            options,
            cleaning,
            encoding_errors,
            workers,
            shard_tokens,
            progress,
            compare_png,
        )


def write_data_dir(
    sources: list[str],
    out_dir: Path,
    tokenizer: str,
    val_fraction: float,
    seed: int,
    options: dict[str, Any],
    cleaning: CleaningRules | None,
    encoding_errors: str,
    workers: int | None,
    shard_tokens: int,
    progress: bool,
    compare_png: Path | None,
) -> dict[str, Any]:
    """prepare()'s work, once out_dir is claimed: read, clean, split, encode, and write the directory."""
    own_options = (
        {k: v for k, v in options.items() if k in tokenizer_class(tokenizer).options} if compare_png else options
    )

    corpus = Corpus(sources, cleaning, encoding_errors)
    found = survey(corpus, tokenizer, own_options, progress)
    tok: Tokenizer = found["tokenizer"]
    kept = [i for i, n in enumerate(found["lengths"]) if n]
    if not kept:
        raise GptlabError("the sources hold no text (after cleaning); give a non-empty text file or folder")
    train, val, method = split_documents([found["lengths"][i] for i in kept], val_fraction, seed)
    train, val = ([Span(kept[s.doc], s.start, s.end) for s in spans] for spans in (train, val))
    dtype = token_dtype(tok.vocab_size)
    workers = available_cpus() if workers is None else workers
    use_pool = workers > 1 and sum(found["lengths"]) >= POOL_MIN_CHARS

    pool = None
    # The pool stops (ExitStack) before atomic_directory removes tmp on a failure or signal: workers still
    # starting load the tokenizer from tmp, and printed tracebacks when it had gone first.
    with atomic_directory(out_dir) as tmp, ExitStack() as stop_workers:
        tok.save(tmp)  # first: worker processes load it from here
        if use_pool:
            pool = start_pool(tok, workers, tmp)
            stop_workers.callback(pool.join)
            stop_workers.callback(pool.terminate)
        sizes: dict[str, int] = {}
        shards: dict[str, list[str]] = {}
        unknown = 0
        for split, spans in (("train", train), ("val", val)):
            writer = ShardWriter(tmp, split, dtype, shard_tokens)
            try:
                counts = write_split(corpus, spans, writer, tok, pool, workers, progress, f"encoding {split}")
            finally:
                shards[split] = writer.close()
            unknown += counts["unknown"]
            sizes.update({f"{split}_{k}": v for k, v in counts.items() if k != "unknown"})
        check_trainable(sizes)
        tokens = sizes["train_tokens"] + sizes["val_tokens"]
        chars = sizes["train_chars"] + sizes["val_chars"]
        content_tokens = tokens - (len(train) - 1) - (len(val) - 1)  # less the end-of-text separators
        meta = {
            "format": FORMAT,
            "sources": [str(s) for s in sources] or ["shakespeare (bundled)"],
            "documents": {
                "train": [corpus.files[s.doc].name for s in train],
                "val": [corpus.files[s.doc].name for s in val],
            },
            "skipped": {
                "binary": corpus.skipped,
                "empty": [f.name for i, f in enumerate(corpus.files) if not found["lengths"][i]],
            },
            "encoding_errors": {"mode": encoding_errors, "replaced": found["replaced"]},
            "cleaning": {"rules": corpus.rules.as_dict(), "report": found["cleaning"]},
            "split": {"method": method, "val_fraction": val_fraction, "seed": seed, "documents": len(kept)},
            "tokenizer": tokenizer_record(tok, own_options),
            "dtype": dtype.name,
            "shards": shards,
            "sizes": sizes,
            "stats": {
                "tokens": tokens,
                "chars": chars,
                "chars_per_token": round(chars / content_tokens, 4) if content_tokens else None,
                "unknown_tokens": unknown,
                "unknown_rate": round(unknown / content_tokens, 6) if content_tokens else 0.0,
            },
            "content_sha256": found["content_sha256"],
        }
        if compare_png:
            from gptlab.data.compare import compare_tokenizers, plot_comparison

            meta["comparison"] = {"png": str(compare_png), "rows": compare_tokenizers(corpus, options)}
            plot_comparison(meta["comparison"]["rows"], compare_png)
        write_meta(tmp, meta)
    return meta


def check_trainable(sizes: dict[str, int]) -> None:
    """Refuse now, not at `gptlab train`, a corpus whose splits cannot hold a training window of MIN_BLOCK_SIZE + 1."""
    split = min(("train", "val"), key=lambda name: sizes[f"{name}_tokens"])
    tokens = sizes[f"{split}_tokens"]
    if tokens - 1 < MIN_BLOCK_SIZE:
        raise GptlabError(
            f"too little text to train on: the {split} split holds {tokens} token(s), which supports a block_size of "
            f"at most {max(tokens - 1, 0)} (gptlab needs at least {MIN_BLOCK_SIZE}); give more text"
        )


def split_notes(meta: dict[str, Any]) -> list[str]:
    """Say where validation came from when it is not what a reader would assume."""
    split, s = meta["split"], meta["sizes"]
    share = s["val_chars"] / (s["train_chars"] + s["val_chars"])
    if split["method"] == "position" and split.get("documents", 1) > 1:
        return [
            f"  note: {split['documents']} documents are too few to hold out whole ones near --val-fraction "
            f"{split['val_fraction']}; the last {share:.0%} of each document validates instead"
        ]
    if split["method"] == "document":
        return [
            f"  validation: {s['val_documents']} whole document(s), {share:.1%} of the characters "
            f"(--val-fraction {split['val_fraction']})"
        ]
    return []


def max_block_size(meta: dict[str, Any]) -> int:
    """The largest block_size the data supports: each split must hold one window of block_size + 1 tokens."""
    return min(meta["sizes"]["train_tokens"], meta["sizes"]["val_tokens"]) - 1


def prepare_summary(out_dir: Path, meta: dict[str, Any]) -> str:
    """What `gptlab prepare` did, in a few lines for the terminal."""
    lines = []
    s, st, tok = meta["sizes"], meta["stats"], meta["tokenizer"]
    lines.append(
        f"wrote {out_dir}: {tok['kind']} tokenizer, vocab {tok['vocab_size']:,}; {st['tokens']:,} tokens from "
        f"{st['chars']:,} characters ({st['chars_per_token']:.2f} characters/token), unknown "
        f"{100 * st['unknown_rate']:.2f}%"
    )
    lines.append(
        f"  train {s['train_tokens']:,} tokens ({s['train_documents']} documents, {len(meta['shards']['train'])} "
        "shard(s)), "
        f"val {s['val_tokens']:,} tokens ({s['val_documents']} documents), split by {meta['split']['method']}; "
        f"block_size up to {max_block_size(meta):,}"
    )
    lines.extend(split_notes(meta))
    for rule, counts in meta["cleaning"]["report"].items():
        done = ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in counts.items() if v) or "nothing"
        lines.append(f"  {rule.replace('_', ' ')}: {done}")
    skipped = meta["skipped"]
    if skipped["binary"] or skipped["empty"]:
        lines.append(
            f"  skipped {len(skipped['binary'])} binary and {len(skipped['empty'])} empty file(s) (listed in meta.json)"
        )
    if meta["encoding_errors"]["replaced"]:
        lines.append(f"  replaced {meta['encoding_errors']['replaced']:,} invalid UTF-8 sequence(s) with U+FFFD")
    if "comparison" in meta:
        rows = meta["comparison"]["rows"]
        for r in rows:
            lines.append(
                f"  {r['kind']:>5}: vocab {r['vocab_size']:>6,}, {r['chars_per_token']:.2f} characters/token, "
                f"unknown {100 * r['unknown_rate']:.2f}% (on the first {r['chars']:,} characters)"
            )
        left_out = (
            "" if any(r["kind"] == "gpt2" for r in rows) else " (gpt2 left out: give --tokenizer-file to include it)"
        )
        lines.append(f"wrote {meta['comparison']['png']}{left_out}")
    return "\n".join(lines)
