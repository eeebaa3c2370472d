"""The bigram model: a table of next-token logits indexed by the current token, nothing else.

It sees one token of context, so its loss is the floor any model with attention must get well
below; it trains, samples and evaluates through the same paths as the GPT.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from gptlab.config import ModelConfig
from gptlab.models.gpt import KVCache, next_token_loss


class Bigram(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size < 1:
            raise ValueError("ModelConfig.vocab_size must be set before building the model")
        self.config = cfg
        self.next_token_logits = nn.Embedding(cfg.vocab_size, cfg.vocab_size)  # row i: logits after token i
        nn.init.normal_(self.next_token_logits.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        return self.next_token_logits.weight.numel()  # the table is the whole model

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Same contract as GPT.forward. Any length works: there is no context to run out of.
        A cache only counts positions, so generation's bookkeeping stays the same."""
        logits = self.next_token_logits(idx)
        if cache is not None:
            cache.length += idx.size(1)
        loss = None if targets is None else next_token_loss(logits, targets)
        return logits, loss
