"""Text in, text out: a trained model with its tokenizer, for notebooks, the CLI and the console.

from gptlab.generation import load
lm = load("runs/demo")
print(lm.generate("ROMEO:", max_new_tokens=200, temperature=0.8, seed=1))
for piece in lm.stream("JULIET:", stop=["\\n\\n"]):
    print(piece, end="", flush=True)
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from gptlab.errors import GptlabError
from gptlab.generation.generate import encode_prompt, generate_tokens
from gptlab.generation.sampling import SamplingSettings
from gptlab.generation.streaming import IncrementalDecoder, StopStrings
from gptlab.models import GPT
from gptlab.tokenizers import Tokenizer


class TextGenerator:
    """A model and its tokenizer; `settings` are the defaults each call may override by keyword."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, settings: SamplingSettings | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.settings = settings or SamplingSettings()
        self.device = next(model.parameters()).device

    def generate(self, prompt: str = "", **settings) -> str:
        """The continuation of `prompt` (empty: the start of a new document), without the prompt."""
        return self.generate_batch(prompt, 1, **settings)[0]

    def generate_batch(self, prompt: str = "", num_samples: int = 2, **settings) -> list[str]:
        """`num_samples` continuations of `prompt`, generated together as one batch."""
        if num_samples < 1:
            raise GptlabError(f"the number of samples must be at least 1, got {num_samples}")
        texts = [""] * num_samples
        for row, piece in self._pieces(prompt, self._settings(settings), num_samples):
            texts[row] += piece
        return texts

    def stream(self, prompt: str = "", **settings) -> Iterator[str]:
        """The continuation of `prompt`, piece by piece as it is generated (whole characters only).

        The prompt and settings are checked here, before the first piece is asked for."""
        return (piece for _, piece in self._pieces(prompt, self._settings(settings), 1))

    def _settings(self, overrides: dict) -> SamplingSettings:
        if isinstance(overrides.get("stop"), str):
            overrides["stop"] = (overrides["stop"],)
        settings = dataclasses.replace(self.settings, **overrides)
        settings.stop = tuple(settings.stop)
        return settings.validate()

    def _pieces(self, prompt: str, settings: SamplingSettings, num_samples: int) -> Iterator[tuple[int, str]]:
        """Check and encode the prompt now (a bad one raises before any output), then generate lazily."""
        return self._grow(encode_prompt(self.tokenizer, prompt, self.model.config.block_size), settings, num_samples)

    def _grow(self, ids: list[int], settings: SamplingSettings, num_samples: int) -> Iterator[tuple[int, str]]:
        """(sample row, text) as each row's text grows; a row ends at end-of-text or a stop string."""
        eot = self.tokenizer.eot_id
        generator = torch.Generator(device=self.device)
        if settings.seed is None:
            generator.seed()
        else:
            generator.manual_seed(settings.seed)
        decoders = [IncrementalDecoder(self.tokenizer) for _ in range(num_samples)]
        stops = [StopStrings(settings.stop) for _ in range(num_samples)]
        live = set(range(num_samples))
        steps = generate_tokens(self.model, ids, settings, num_samples, generator)
        try:
            for step in steps:
                for row, token in enumerate(step.tolist()):
                    if row not in live:
                        continue
                    if token == eot:
                        text = stops[row].push(decoders[row].flush()) + stops[row].flush()
                        live.discard(row)
                    else:
                        text = stops[row].push(decoders[row].push(token))
                        if stops[row].stopped:
                            live.discard(row)
                    if text:
                        yield row, text
                if not live:
                    break
            for row in sorted(live):  # max_new_tokens reached: let out what was held back
                text = stops[row].push(decoders[row].flush()) + stops[row].flush()
                if text:
                    yield row, text
        finally:
            steps.close()


def load(path: str | Path, device: str = "auto", **settings) -> TextGenerator:
    """A TextGenerator for a run directory (its best checkpoint) or a checkpoint directory."""
    from gptlab.checkpoint import is_untrained_best, load_checkpoint, untrained_best
    from gptlab.device import resolve_device, setup_device

    dev = resolve_device(device)
    setup_device(dev)
    ckpt = load_checkpoint(path, dev)
    if is_untrained_best(ckpt):
        print(f"note: {untrained_best(ckpt.dir)}", file=sys.stderr)
    return TextGenerator(ckpt.model, ckpt.tokenizer, SamplingSettings(**settings).validate())
