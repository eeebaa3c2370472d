"""Models: the GPT (decoder-only transformer) and its KV cache."""

from gptlab.models.gpt import GPT, KVCache

__all__ = ["GPT", "KVCache"]
