"""Generation: sampling from a trained model, token by token or as text; the interactive console."""

from gptlab.generation.sampling import SamplingSettings
from gptlab.generation.text import TextGenerator, load

__all__ = ["SamplingSettings", "TextGenerator", "load"]
