"""Autoregressive generation with a KV cache.

The prompt is run through the model once (prefill) to fill the cache; each new token is then one
forward pass over a single position. When the text outgrows the model's context (block_size), the
cache is rebuilt from the most recent half block, so the model always sees its last
block_size // 2 .. block_size tokens (learned positions cannot roll, they must be re-encoded).
"""

from __future__ import annotations

import torch

from gptlab.errors import GptlabError
from gptlab.models import GPT, KVCache
from gptlab.tokenizers import Tokenizer


def encode_prompt(tokenizer: Tokenizer, text: str, block_size: int) -> list[int]:
    """Prompt text -> ids; an empty prompt starts a new document (the end-of-text token)."""
    ids = tokenizer.encode(text) if text else [tokenizer.eot_id]
    if len(ids) > block_size:
        raise GptlabError(
            f"the prompt is {len(ids)} tokens, longer than the model's context of {block_size} tokens (block_size); shorten it"
        )
    return ids


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None) -> torch.Tensor:
    """Pick the next token for each row of logits (B, vocab). temperature 0 means greedy."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


@torch.inference_mode()
def generate(
    model: GPT,
    prompt: list[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> list[list[int]]:
    """Continue `prompt` (token ids, at least one) `max_new_tokens` times; returns the new ids per sample."""
    if not prompt:
        raise ValueError("generation needs at least one prompt token (e.g. the end-of-text token)")
    model.eval()
    device = next(model.parameters()).device
    block = model.config.block_size
    idx = torch.tensor([prompt] * num_samples, dtype=torch.long, device=device)
    out = []
    cache = None
    for _ in range(max_new_tokens):
        if not use_cache:
            logits, _ = model(idx[:, -block:])
        elif cache is None or cache.length == block:
            keep = idx[:, -(block // 2 if cache is not None else block):]
            cache = KVCache(model.config, num_samples, block, device, next(model.parameters()).dtype)
            logits, _ = model(keep, cache=cache)
        else:
            logits, _ = model(idx[:, -1:], cache=cache)
        nxt = sample_next(logits[:, -1, :], temperature, top_k, generator)
        idx = torch.cat([idx, nxt], dim=1)
        out.append(nxt)
    if not out:
        return [[] for _ in range(num_samples)]
    return torch.cat(out, dim=1).tolist()
