"""How well a model predicts text: loss, perplexity, bits per character and bits per byte.

Every token of the text is predicted exactly once, from non-overlapping windows of block_size
tokens, so the result is deterministic. Inside a window the token at position t sees t tokens of
context, as in training; the trainer's `estimate_loss` draws random windows of the same length, so
it is a Monte-Carlo estimate of the same number (tests/test_eval.py checks that they agree).

The text starts with the end-of-text token, as every document does when the model samples, so the
first character is predicted too and bits per byte = total nats / (ln 2 * UTF-8 bytes of the text).
Bytes are the unit every tokenizer shares, so bits per byte compares models across tokenizers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gptlab.checkpoint import Checkpoint, check_same_tokenizer, find_data_dir
from gptlab.data.batches import TokenData
from gptlab.device import autocast
from gptlab.errors import GptlabError
from gptlab.tokenizers import Tokenizer

Z95 = 1.96  # two-sided 95% quantile of the normal distribution
LOGITS_BUDGET = 2**26  # logits held at once (256 MB in float32): sets how many windows go per batch


@dataclass
class EvalResult:
    """Per-token losses of one text, summarised. The 95% interval is mean ± 1.96 * std / sqrt(n) of
    the per-token losses: it treats tokens as independent, which neighbouring tokens are not, so it
    is somewhat too narrow; it says how far the number could move on another text of this size."""

    source: str
    tokens: int  # tokens predicted
    chars: int  # characters of the text (end-of-text separators not counted)
    bytes: int  # UTF-8 bytes of the text
    loss: float  # mean cross-entropy, nats per token
    loss_std: float  # standard deviation of the per-token losses

    @property
    def loss_ci(self) -> float:
        """Half-width of the 95% confidence interval of `loss`."""
        return Z95 * self.loss_std / math.sqrt(self.tokens) if self.tokens > 1 else float("nan")

    @property
    def nats(self) -> float:
        return self.loss * self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def perplexity_interval(self) -> tuple[float, float]:
        return math.exp(self.loss - self.loss_ci), math.exp(self.loss + self.loss_ci)

    @property
    def bits_per_char(self) -> float:
        return self.nats / (math.log(2) * self.chars)

    @property
    def bits_per_byte(self) -> float:
        return self.nats / (math.log(2) * self.bytes)

    def per_byte_ci(self) -> float:
        """Half-width of the 95% interval of bits per byte (the loss interval, rescaled)."""
        return self.loss_ci * self.tokens / (math.log(2) * self.bytes)

    def per_char_ci(self) -> float:
        return self.loss_ci * self.tokens / (math.log(2) * self.chars)

    def summary(self) -> str:
        lo, hi = self.perplexity_interval
        return "\n".join(
            [
                f"{self.source}: {self.tokens:,} tokens, {self.chars:,} characters, {self.bytes:,} bytes",
                f"  loss           {self.loss:.4f} ± {self.loss_ci:.4f} nats/token",
                f"  perplexity     {self.perplexity:.3f} [{lo:.3f}, {hi:.3f}]",
                f"  bits per char  {self.bits_per_char:.4f} ± {self.per_char_ci():.4f}",
                f"  bits per byte  {self.bits_per_byte:.4f} ± {self.per_byte_ci():.4f}",
                "  (± is the 95% interval 1.96 * std / sqrt(tokens) of the per-token losses)",
            ]
        )


@torch.no_grad()
def batch_token_losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: str = "auto") -> torch.Tensor:
    """Cross-entropy of each target in y (B, T) given inputs x (B, T), in nats, float32.

    Their mean is exactly the loss `model(x, y)` returns for the batch.
    """
    with autocast(x.device, dtype):
        logits, _ = model(x)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view(y.shape)


@torch.no_grad()
def token_losses(
    model: torch.nn.Module, ids: torch.Tensor, block_size: int, batch_size: int = 16, dtype: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of every token of `ids` after the first, each predicted once from non-overlapping windows.

    Returns (losses, positions), both of length len(ids) - 1 on the CPU: positions[i] is how many
    tokens of context the i-th prediction had within its window (0 .. block_size - 1).
    """
    model.eval()
    device = next(model.parameters()).device
    n = len(ids) - 1
    full = n // block_size
    losses, positions = [], []
    for b in range(0, full, batch_size):  # whole windows, batch_size at a time
        rows = min(batch_size, full - b)
        chunk = ids[b * block_size : (b + rows) * block_size + 1].to(device)
        x = chunk[:-1].view(rows, block_size)
        y = chunk[1:].view(rows, block_size)
        losses.append(batch_token_losses(model, x, y, dtype).flatten().cpu())
        positions.append(torch.arange(block_size).repeat(rows))
    rest = n - full * block_size
    if rest:  # the tail: one shorter window
        chunk = ids[full * block_size :].to(device)
        losses.append(batch_token_losses(model, chunk[None, :-1], chunk[None, 1:], dtype).flatten().cpu())
        positions.append(torch.arange(rest))
    if not losses:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    return torch.cat(losses), torch.cat(positions)


def text_size(tokenizer: Tokenizer, ids: np.ndarray) -> tuple[int, int]:
    """(characters, UTF-8 bytes) of the text that token ids spell, end-of-text separators excluded.

    Exact for tokenizers whose decode gives the text back (char, bpe, gpt2); the word tokenizer's
    decode normalises spacing and writes <unk>, so for it this counts the decoded text."""
    chars = nbytes = 0
    for segment in np.split(ids, np.flatnonzero(ids == tokenizer.eot_id)):
        text = tokenizer.decode(segment[segment != tokenizer.eot_id].tolist())
        chars += len(text)
        nbytes += len(text.encode("utf-8"))
    return chars, nbytes


def evaluate_ids(
    ckpt: Checkpoint, ids: np.ndarray, source: str, size: tuple[int, int | None] | None = None
) -> tuple[EvalResult, torch.Tensor, torch.Tensor]:
    """Evaluate the token stream `ids` (a document or documents joined by end-of-text).

    size: the (characters, bytes) of the text when known (a bytes of None is counted); by default
    both are counted on the decoded ids. Returns the summary and the per-token (losses, positions).
    """
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
        raise GptlabError(f"{source} holds no text to evaluate")
    if ids.max() >= ckpt.config.model.vocab_size:
        raise GptlabError(
            f"{source} holds token id {ids.max()}, outside the model's vocabulary of {ckpt.config.model.vocab_size}: "
            "the token files are corrupt; run `gptlab prepare` again"
        )
    stream = torch.from_numpy(np.concatenate([[ckpt.tokenizer.eot_id], ids]))
    block = ckpt.config.model.block_size
    batch_size = min(64, max(1, LOGITS_BUDGET // (block * ckpt.config.model.vocab_size)))
    losses, positions = token_losses(ckpt.model, stream, block, batch_size, ckpt.config.train.dtype)
    chars, nbytes = size or (None, None)
    if chars is None or nbytes is None:
        counted_chars, counted_bytes = text_size(ckpt.tokenizer, ids)
        chars = counted_chars if chars is None else chars
        nbytes = counted_bytes if nbytes is None else nbytes
    std = losses.std().item() if losses.numel() > 1 else float("nan")
    result = EvalResult(source, int(losses.numel()), chars, nbytes, losses.double().mean().item(), std)
    return result, losses, positions


def data_dir_of(ckpt: Checkpoint) -> Path:
    """The data directory the checkpoint was trained on, as its config.json records it (found again if the
    run moved together with its data)."""
    data = ckpt.info.get("data") or {}
    if "dir" not in data:
        raise GptlabError(f"{ckpt.dir} does not record its data directory; evaluate held-out text with --text FILE")
    return find_data_dir(data, [ckpt.dir.parent, ckpt.dir.parent.parent], ckpt.dir / "config.json")


def split_ids(
    ckpt: Checkpoint, split: str = "val", data_dir: Path | None = None, max_tokens: int | None = None
) -> tuple[np.ndarray, str, tuple[int, int | None] | None]:
    """The token ids of a split of the run's data directory (or `data_dir`), or of its first
    `max_tokens`; a name for them; and the (characters, bytes) meta.json records for the whole split."""
    data_dir = Path(data_dir) if data_dir is not None else data_dir_of(ckpt)
    if not data_dir.is_dir():
        raise GptlabError(
            f"the data directory {data_dir} is gone; pass --data DIR or evaluate a held-out file with --text FILE"
        )
    data = TokenData(data_dir)  # verifies the token files against meta.json
    recorded = (ckpt.info.get("data") or {}).get("content_sha256")
    check_same_tokenizer(data_dir, data.meta, ckpt.dir, ckpt.info)
    if split not in data.splits:
        raise GptlabError(f"unknown split {split!r}; use train or val")
    name = f"{split} split of {data_dir}"
    if recorded and recorded != data.meta["content_sha256"]:
        name += " (prepared again since training: its text differs)"
    tokens = data.splits[split]
    if max_tokens is not None and max_tokens < len(tokens):
        return np.asarray(tokens[:max_tokens]), f"first {max_tokens:,} tokens of the {name}", None
    sizes = data.meta.get("sizes", {})
    size = (sizes[f"{split}_chars"], sizes.get(f"{split}_bytes")) if f"{split}_chars" in sizes else None
    return np.asarray(tokens[:]), name, size


def evaluate_split(
    ckpt: Checkpoint, split: str = "val", data_dir: Path | None = None, max_tokens: int | None = None
) -> EvalResult:
    """Evaluate a split of the run's data directory; `max_tokens` keeps only its first tokens."""
    ids, name, size = split_ids(ckpt, split, data_dir, max_tokens)
    return evaluate_ids(ckpt, ids, name, size)[0]


def evaluate_text(ckpt: Checkpoint, text: str, source: str = "text") -> EvalResult:
    """Evaluate held-out text, encoded with the model's own tokenizer."""
    return evaluate_ids(ckpt, np.asarray(ckpt.tokenizer.encode(text), dtype=np.int64), source)[0]
