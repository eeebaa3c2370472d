"""Models: the GPT (decoder-only transformer) with its KV cache, and the bigram baseline."""

from torch import nn

from gptlab.config import ModelConfig
from gptlab.models.bigram import Bigram
from gptlab.models.gpt import GPT, KVCache

ARCHITECTURES = {"gpt": GPT, "bigram": Bigram}


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model `cfg.arch` names, freshly initialised; every one has GPT's forward(idx, targets, cache).
    The config is checked here, once; the models' constructors take it as valid."""
    cfg.validate()
    return ARCHITECTURES[cfg.arch](cfg)


__all__ = ["GPT", "Bigram", "KVCache", "build_model"]
