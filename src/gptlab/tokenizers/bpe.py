"""Byte-level BPE trained on your own text with Hugging Face `tokenizers`, GPT-2 style.

The text is cut into pieces with GPT-2's pre-tokenisation regex, mapped to bytes (so every text
encodes and decodes exactly, no <unk>), and the most frequent adjacent pairs are merged until the
vocabulary has `vocab_size` tokens. Saved as a standard tokenizer.json that
`tokenizers.Tokenizer.from_file` and transformers' `PreTrainedTokenizerFast(tokenizer_file=...)` read.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from gptlab.errors import GptlabError
from gptlab.tokenizers import EOT

DEFAULT_VOCAB_SIZE = 4096
MIN_VOCAB_SIZE = 257  # the 256 bytes and <|endoftext|>


class BPETokenizer:
    kind = "bpe"
    file_name = "tokenizer.json"
    options = ("vocab_size",)
    unk_id = None  # byte-level: every text encodes

    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        eot = hf.token_to_id(EOT)
        if eot is None:
            raise GptlabError(f"this tokenizer.json has no {EOT} token; train it with `gptlab prepare --tokenizer bpe`")
        self._eot_id = eot

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> BPETokenizer:
        if vocab_size < MIN_VOCAB_SIZE:
            raise GptlabError(f"--vocab-size must be at least {MIN_VOCAB_SIZE} for byte-level BPE, got {vocab_size}")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's regex, then bytes
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen in training or not
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer)
        return cls(hf)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    @property
    def eot_id(self) -> int:
        return self._eot_id

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=False)

    def save(self, directory: Path) -> Path:
        path = Path(directory) / self.file_name
        self.hf.save(str(path))
        return path

    @classmethod
    def load(cls, directory: Path) -> BPETokenizer:
        path = Path(directory) / cls.file_name
        if not path.is_file():
            raise GptlabError(f"tokenizer file {path} is missing; run `gptlab prepare` again")
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception:  # tokenizers raises a bare Exception for a file it cannot parse
            raise GptlabError(
                f"tokenizer file {path} is not a tokenizers tokenizer.json; run `gptlab prepare` again"
            ) from None
