"""How the next token is picked from the model's logits, and the settings that steer it.

The order is the usual one (Hugging Face's too): repetition penalty, temperature, top-k, top-p,
then a draw from what is left. Temperature 0 means greedy: the most likely token, no draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gptlab.errors import GptlabError


@dataclass
class SamplingSettings:
    """Everything that decides what gets generated; the console changes these while it runs."""

    max_new_tokens: int = 500
    temperature: float = 0.8  # 0 = greedy
    top_k: int | None = 200  # keep the k most likely tokens (None or 0 = all)
    top_p: float | None = None  # keep the smallest set of tokens whose probability reaches p
    repetition_penalty: float = 1.0  # > 1 makes tokens already in the text less likely
    stop: tuple[str, ...] = ()  # end the text where one of these strings appears (not included)
    seed: int | None = None  # None: a fresh random seed each time

    def validate(self) -> SamplingSettings:
        if self.max_new_tokens < 0:
            raise GptlabError(
                f"max new tokens (--max-new-tokens; /max in chat) must be >= 0, got {self.max_new_tokens}"
            )
        if self.temperature < 0:
            raise GptlabError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise GptlabError(f"top-k must be >= 0 (0 = all tokens), got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise GptlabError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise GptlabError(f"repetition penalty must be > 0 (1 = none), got {self.repetition_penalty}")
        if any(not s for s in self.stop):
            raise GptlabError("stop strings must not be empty")
        return self


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
    if seen is not None and settings.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, seen, settings.repetition_penalty)
    if settings.temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / settings.temperature
    if settings.top_k and settings.top_k < logits.size(-1):
        logits = top_k_filter(logits, settings.top_k)
    if settings.top_p is not None and settings.top_p < 1:
        logits = top_p_filter(logits, settings.top_p)
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)
