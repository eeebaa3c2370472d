"""Text in, text out: a trained model with its tokenizer, for notebooks, the CLI and the console.

from gptlab.generation import load
lm = load("runs/demo")
print(lm.generate("ROMEO:", max_new_tokens=200, temperature=0.8, seed=1))
for piece in lm.stream("JULIET:", stop=["\\n\\n"]):
    print(piece, end="", flush=True)
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from gptlab.errors import GptlabError
from gptlab.generation.generate import check_generation_fits, encode_prompt, generate_tokens
from gptlab.generation.sampling import SamplingSettings, sampling_settings
from gptlab.generation.streaming import IncrementalDecoder, StopStrings
from gptlab.models import GPT
from gptlab.tokenizers import Tokenizer


class TextGenerator:
    """A model and its tokenizer; `settings` are the defaults each call may override by keyword.

    A prompt longer than the model's context (block_size tokens) is an error, unless the call
    passes truncate=True: then the model sees the prompt's last block_size tokens (the console
    does this, so a conversation can go on past the context). use_cache=False recomputes the whole
    window at every step instead of keeping a KV cache: slower, the reference the cache is tested
    against (`gptlab sample --no-cache`)."""

    def __init__(
        self, model: GPT, tokenizer: Tokenizer, settings: SamplingSettings | None = None, use_cache: bool = True
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.settings = settings or SamplingSettings()
        self.use_cache = use_cache
        self.device = next(model.parameters()).device

    def generate(self, prompt: str = "", *, truncate: bool = False, **settings) -> str:
        """The continuation of `prompt` (empty: the start of a new document), without the prompt."""
        return self.generate_batch(prompt, 1, truncate=truncate, **settings)[0]

    def generate_batch(
        self, prompt: str = "", num_samples: int = 2, *, truncate: bool = False, **settings
    ) -> list[str]:
        """`num_samples` continuations of `prompt`, generated together as one batch."""
        pieces = self._pieces(prompt, self._settings(settings), num_samples, truncate)  # checks before allocating
        texts = [""] * num_samples
        for row, piece in pieces:
            texts[row] += piece
        return texts

    def stream(self, prompt: str = "", *, truncate: bool = False, **settings) -> Iterator[str]:
        """The continuation of `prompt`, piece by piece as it is generated (whole characters only).

        The prompt and settings are checked here, before the first piece is asked for."""
        return (piece for _, piece in self._pieces(prompt, self._settings(settings), 1, truncate))

    def check_fits(self, settings: SamplingSettings, num_samples: int = 1) -> None:
        """Refuse, before anything is allocated, a generation whose memory would exceed what is free."""
        check_generation_fits(self.model.config, num_samples, settings.max_new_tokens, self.device, self.use_cache)

    def _settings(self, overrides: dict) -> SamplingSettings:
        return sampling_settings(self.settings, **overrides)

    def _pieces(
        self, prompt: str, settings: SamplingSettings, num_samples: int, truncate: bool
    ) -> Iterator[tuple[int, str]]:
        """Check the request and encode the prompt now (a bad one raises before any output), then generate lazily."""
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or not 1 <= num_samples < 2**63:
            raise GptlabError(
                f"the number of samples (--num-samples) must be at least 1 and below 2**63, got {num_samples!r}"
            )
        if not isinstance(prompt, str):
            raise GptlabError(f"the prompt must be text, got {type(prompt).__name__}")
        self.check_fits(settings, num_samples)
        ids = encode_prompt(self.tokenizer, prompt, self.model.config.block_size, truncate)
        return self._grow(ids, settings, num_samples)

    def _grow(self, ids: list[int], settings: SamplingSettings, num_samples: int) -> Iterator[tuple[int, str]]:
        """(sample row, text) as each row's text grows; a row ends at end-of-text or a stop string."""
        eot = self.tokenizer.eot_id
        generator = torch.Generator(device=self.device)
        if settings.seed is None:
            generator.seed()
        else:
            generator.manual_seed(settings.seed)
        decoders = [IncrementalDecoder.after(self.tokenizer, ids) for _ in range(num_samples)]
        stops = [StopStrings(settings.stop) for _ in range(num_samples)]
        live = set(range(num_samples))
        steps = generate_tokens(self.model, ids, settings, num_samples, generator, self.use_cache)
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


def load(path: str | Path, device: str = "auto", use_cache: bool = True, threads: int = 0, **settings) -> TextGenerator:
    """A TextGenerator for a run directory (its best checkpoint) or a checkpoint directory.

    The settings are checked before the checkpoint is read; threads: torch's CPU threads (0: the cores available)."""
    from gptlab.checkpoint import is_untrained_best, load_checkpoint, untrained_best
    from gptlab.device import resolve_device, setup_device

    defaults = sampling_settings(**settings)
    dev = resolve_device(device)
    setup_device(dev, threads=threads)
    ckpt = load_checkpoint(path, dev)
    if is_untrained_best(ckpt):
        print(f"note: {untrained_best(ckpt.dir)}", file=sys.stderr)
    return TextGenerator(ckpt.model, ckpt.tokenizer, defaults, use_cache)
