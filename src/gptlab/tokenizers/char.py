"""Character-level tokenizer: one id per distinct character, plus the end-of-text token."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.tokenizers import EOT


class CharTokenizer:
    kind = "char"
    file_name = "tokenizer.json"
    options = ()
    unk_id = None  # an unseen character is an error (encode says which), never silently replaced

    def __init__(self, chars: list[str]):
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self._eot_id = len(self.chars)

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        return cls(sorted(chars))

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    @property
    def eot_id(self) -> int:
        return self._eot_id

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self.stoi})
            shown = " ".join(repr(c) for c in unknown[:10])
            raise GptlabError(
                f"{len(unknown)} character(s) not in this model's vocabulary: {shown}; "
                "use only characters from the training text"
            ) from None

    def decode(self, ids: list[int]) -> str:
        return "".join(EOT if i == self._eot_id else self.chars[i] for i in ids)

    def save(self, directory: Path) -> Path:
        path = Path(directory) / self.file_name
        path.write_text(json.dumps({"kind": self.kind, "chars": self.chars}, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def load(cls, directory: Path) -> CharTokenizer:
        path = Path(directory) / cls.file_name
        try:
            data = json.loads(path.read_text())
            return cls(data["chars"])
        except FileNotFoundError:
            raise GptlabError(f"tokenizer file {path} is missing; run `gptlab prepare` again") from None
        except (json.JSONDecodeError, KeyError, TypeError):
            raise GptlabError(f"tokenizer file {path} is corrupt; run `gptlab prepare` again") from None
