"""Autoregressive generation with a KV cache.

The prompt is run through the model once (prefill) to fill the cache; each new token is then one
forward pass over a single position. The model only knows block_size positions, so when the text
outgrows that window the cache is emptied and re-prefilled with the most recent half block: the model
always sees its last block_size // 2 .. block_size tokens, and a re-prefill happens once every
block_size // 2 tokens, so its cost spreads to about one extra position per step. (A rolling cache
would keep stale learned or rotary positions in its keys; re-encoding keeps them exact.)
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from gptlab.config import ModelConfig
from gptlab.device import available_memory
from gptlab.errors import GptlabError
from gptlab.generation.sampling import SamplingSettings, sample_next
from gptlab.models import GPT, KVCache
from gptlab.models.info import generation_memory, human
from gptlab.tokenizers import Tokenizer


def encode_prompt(tokenizer: Tokenizer, text: str, block_size: int, truncate: bool = False) -> list[int]:
    """Prompt text -> ids; an empty prompt starts a new document (the end-of-text token).

    The window policy, the same in the API, the console and the server: a prompt longer than the
    model's context is an error, unless truncate=True, which keeps its last block_size tokens (the
    model could not see the earlier ones anyway)."""
    ids = tokenizer.encode(text) if text else [tokenizer.eot_id]
    if len(ids) > block_size:
        if truncate:
            return ids[-block_size:]
        raise GptlabError(
            f"the prompt is {len(ids)} tokens, longer than the model's context of {block_size} tokens (block_size); "
            "shorten it, or keep only its last tokens (sample --truncate; truncate=True in the API)"
        )
    return ids


def check_generation_fits(
    cfg: ModelConfig, num_samples: int, max_new_tokens: int, device: torch.device, use_cache: bool = True
) -> None:
    """Refuse, in one line and before anything is allocated, a generation whose estimated memory
    (models.info.generation_memory) exceeds what `device` has free."""
    need = generation_memory(cfg, num_samples, max_new_tokens, use_cache)["total"]
    free = available_memory(device)
    if free is not None and need > free:
        raise GptlabError(
            f"{num_samples} sample(s) of up to {max_new_tokens:,} new tokens need about {human(need, 'B')} on "
            f"{device} but {human(free, 'B')} is free; lower --max-new-tokens (/max in chat) or --num-samples"
        )


@torch.inference_mode()
def generate_tokens(
    model: GPT,
    prompt: list[int],
    settings: SamplingSettings,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Iterator[torch.Tensor]:
    """Continue `prompt` (token ids, at least one) for each of `num_samples` rows at once.

    Yields the new token of every row, a (num_samples,) tensor, once per step, up to
    settings.max_new_tokens steps; stop iterating to stop generating.
    With use_cache=False every step recomputes the whole window: the reference the cache is tested against.
    """
    if not prompt:
        raise ValueError("generation needs at least one prompt token (e.g. the end-of-text token)")
    model.eval()
    param = next(model.parameters())
    block = model.config.block_size
    n = len(prompt)  # tokens so far, prompt included
    tokens = torch.empty((num_samples, n + settings.max_new_tokens), dtype=torch.long, device=param.device)
    tokens[:, :n] = torch.tensor(prompt, dtype=torch.long, device=param.device)
    seen = None
    if settings.repetition_penalty != 1.0:
        seen = torch.zeros((num_samples, model.config.vocab_size), dtype=torch.bool, device=param.device)
        seen[:, tokens[0, :n]] = True
    cache = KVCache(model.config, num_samples, block, param.device, param.dtype) if use_cache else None
    start = max(0, n - block)  # first token inside the model's window
    for _ in range(settings.max_new_tokens):
        if cache is None:
            start = max(0, n - block)
            logits, _ = model(tokens[:, start:n])
        else:
            if n - start > block:  # the window is full: keep its newest half and re-encode it
                start = n - max(1, block // 2)
                cache.length = 0
            logits, _ = model(tokens[:, start + cache.length : n], cache=cache)
        nxt = sample_next(logits[:, -1, :], settings, generator, seen)
        tokens[:, n] = nxt[:, 0]
        n += 1
        if seen is not None:
            seen.scatter_(1, nxt, True)
        yield nxt[:, 0]


def generate(
    model: GPT,
    prompt: list[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    *,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    stop_token: int | None = None,
) -> list[list[int]]:
    """The new token ids of each sample, each ending before `stop_token` (e.g. end-of-text) if it came.

    nanoGPT's signature, for token-level use; text in, text out is gptlab.generation.load(...).
    """
    settings = SamplingSettings(max_new_tokens, temperature, top_k, top_p, repetition_penalty).validate()
    rows: list[list[int]] = [[] for _ in range(num_samples)]
    done = [False] * num_samples
    for step in generate_tokens(model, prompt, settings, num_samples, generator, use_cache):
        for row, token in enumerate(step.tolist()):
            if done[row]:
                continue
            if token == stop_token:
                done[row] = True
            else:
                rows[row].append(token)
        if all(done):
            break
    return rows
