"""How the next token is picked from the model's logits, and the settings that steer it.

The order is the usual one (Hugging Face's too): repetition penalty, temperature, top-k, top-p,
then a draw from what is left. Temperature 0 means greedy: the most likely token, no draw.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from gptlab.config import SEED, check_ranges, number
from gptlab.errors import GptlabError


@dataclass
class SamplingSettings:
    """Everything that decides what gets generated; the console changes these while it runs.

    `validate` is the one check of these values, shared by sample, chat, the Python API and the server."""

    max_new_tokens: int = number(500, at_least=0, note="/max in chat")
    temperature: float = number(0.8, at_least=0.0, note="0 = greedy")
    # keep the k most likely tokens
    top_k: int | None = number(200, at_least=0, optional=True, note="0 or None = all tokens")
    # keep the smallest set of tokens whose probability reaches p
    top_p: float | None = number(None, above=0.0, at_most=1.0, whole=False, note="None = all tokens")
    # > 1 makes tokens already in the text less likely
    repetition_penalty: float = number(1.0, above=0.0, note="1 = none")
    stop: tuple[str, ...] = ()  # end the text where one of these strings appears (not included)
    seed: int | None = number(None, whole=True, **SEED)  # None: a fresh random seed each time

    def validate(self) -> SamplingSettings:
        check_ranges(self, name=lambda key: f"--{key.replace('_', '-')}")  # named as the flags are: --top-p
        if isinstance(self.stop, str) or not all(isinstance(s, str) for s in self.stop):
            raise GptlabError(f"stop must be a list of strings, got {self.stop!r}")
        if any(not s for s in self.stop):
            raise GptlabError("stop strings must not be empty")
        return self


def sampling_settings(base: SamplingSettings | None = None, **overrides) -> SamplingSettings:
    """`base` (else the defaults) with `overrides` applied, checked: an unknown name or a value out of
    range is refused in one line. A single stop string may be given as a str."""
    names = [f.name for f in fields(SamplingSettings)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise GptlabError(f"unknown sampling setting {', '.join(unknown)}; the settings are {', '.join(names)}")
    if isinstance(overrides.get("stop"), str):
        overrides["stop"] = (overrides["stop"],)
    elif isinstance(overrides.get("stop"), list):
        overrides["stop"] = tuple(overrides["stop"])
    return replace(base or SamplingSettings(), **overrides).validate()


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty (Keskar et al. 2019): divide positive logits of seen tokens, multiply negative ones.

    seen: (B, vocab) bool, True for every token already in that row's text.
    """
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row (ties with the k-th are kept too); the rest -> -inf."""
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probabilities sum to at least p (nucleus)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above each one
    drop_sorted = mass_before >= p  # the set already reached p without this token; the top one always stays
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(
    logits: torch.Tensor,
    settings: SamplingSettings,
    generator: torch.Generator | None = None,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pick the next token for each row of logits (B, vocab) -> (B, 1)."""
    logits = logits.float()
    if seen is not None and settings.repetition_penalty != 1.0:
        big = torch.finfo(logits.dtype).max  # an extreme penalty overflows to +-inf; keep the order, lose no row
        logits = apply_repetition_penalty(logits, seen, settings.repetition_penalty).clamp(-big, big)
    if settings.temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    # Shifted so the largest logit is 0 before dividing: any positive temperature, however small,
    # then gives finite logits (a temperature below float32's smallest normal acts as that one).
    temperature = max(settings.temperature, torch.finfo(torch.float32).tiny)
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if settings.top_k and settings.top_k < logits.size(-1):
        logits = top_k_filter(logits, settings.top_k)
    if settings.top_p is not None and settings.top_p < 1:
        logits = top_p_filter(logits, settings.top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)
