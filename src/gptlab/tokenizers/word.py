"""Word-level tokenizer: words and punctuation marks are separate tokens, rare words become <unk>.

Spaces are not tokens: decode puts one space between tokens, none before closing punctuation or
after opening brackets, none around line breaks. So the round trip is exact up to whitespace:
every non-space character and every line break comes back; runs of spaces and tabs come back as
the spacing those rules give (e.g. "a ,b" -> "a, b").
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.tokenizers import EOT

UNK = "<unk>"
# a word (letters/digits, with inner apostrophes or hyphens: "don't", "well-known"), one punctuation mark,
# or a line break
TOKEN_RE = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]|\n")
NO_SPACE_BEFORE = set(".,;:!?%)]}’”…\n")
NO_SPACE_AFTER = set("([{‘“\n")
QUOTES = set("\"'")  # the same mark opens and closes: alternate


class WordTokenizer:
    kind = "word"
    file_name = "tokenizer.json"
    options = ("min_freq", "max_vocab")

    def __init__(self, words: list[str]):
        self.tokens = [EOT, UNK, *words]
        self.stoi = {t: i for i, t in enumerate(self.tokens)}
        self.unk_id = 1

    @classmethod
    def train(cls, texts: Iterable[str], min_freq: int = 1, max_vocab: int | None = None) -> WordTokenizer:
        """Keep words seen at least `min_freq` times, the most frequent first, at most `max_vocab` tokens in all."""
        if min_freq < 1:
            raise GptlabError(f"--min-freq must be at least 1, got {min_freq}")
        if max_vocab is not None and max_vocab < 3:
            raise GptlabError(f"--max-vocab must be at least 3 (end-of-text, <unk> and one word), got {max_vocab}")
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(TOKEN_RE.findall(text))
        counts.pop(EOT, None)
        counts.pop(UNK, None)
        kept = sorted((w for w, n in counts.items() if n >= min_freq), key=lambda w: (-counts[w], w))
        if max_vocab is not None:
            kept = kept[: max_vocab - 2]
        return cls(kept)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def eot_id(self) -> int:
        return 0

    def encode(self, text: str) -> list[int]:
        get, unk = self.stoi.get, self.unk_id
        return [get(t, unk) for t in TOKEN_RE.findall(text)]

    def decode(self, ids: list[int]) -> str:
        out: list[str] = []
        prev = "\n"  # start of text: no space before the first token
        open_quote = False
        for i in ids:
            tok = self.tokens[i]
            space = prev not in NO_SPACE_AFTER and tok not in NO_SPACE_BEFORE
            if tok in QUOTES:
                space = space and not open_quote  # a closing quote hugs the word before it
            elif prev in QUOTES and open_quote:
                space = False  # ... and an opening one the word after it
            if tok in QUOTES:
                open_quote = not open_quote
            out.append(" " + tok if space else tok)
            prev = tok
        return "".join(out)

    def save(self, directory: Path) -> Path:
        path = Path(directory) / self.file_name
        path.write_text(json.dumps({"kind": self.kind, "tokens": self.tokens}, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def load(cls, directory: Path) -> WordTokenizer:
        path = Path(directory) / cls.file_name
        try:
            data = json.loads(path.read_text())
            if data["kind"] != cls.kind or data["tokens"][:2] != [EOT, UNK]:
                raise KeyError
            return cls(data["tokens"][2:])
        except FileNotFoundError:
            raise GptlabError(f"tokenizer file {path} is missing; run `gptlab prepare` again") from None
        except (json.JSONDecodeError, KeyError, TypeError):
            raise GptlabError(f"tokenizer file {path} is corrupt; run `gptlab prepare` again") from None
