"""GPT-2's 50,257-token byte-level BPE, encoded by tiktoken.

Nothing is trained: the vocabulary is GPT-2's. It is read from a local file (offline) or, when no
file is given, fetched by tiktoken's own download and cache. Either way save() writes the merge
ranks into the data/checkpoint directory as `gpt2.tiktoken`, so load() needs that directory only.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks, load_tiktoken_bpe
from tiktoken_ext import openai_public

from gptlab.errors import GptlabError
from gptlab.tokenizers import EOT

N_MERGEABLE = 50256  # byte tokens + merges; <|endoftext|> is id 50256
# OpenAI's original file names, then Hugging Face's, for the same two files
VOCAB_MERGES_NAMES = (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt"))


def read_ranks(path: Path) -> dict[bytes, int]:
    """Merge ranks from gpt2.tiktoken, from vocab.json/encoder.json (merges.txt/vocab.bpe beside it),
    or a folder of them."""
    path = Path(path)
    if path.is_dir():
        if (path / GPT2Tokenizer.file_name).is_file():
            return read_ranks(path / GPT2Tokenizer.file_name)
        for vocab, _merges in VOCAB_MERGES_NAMES:
            if (path / vocab).is_file():
                return read_ranks(path / vocab)
        raise GptlabError(f"{path} holds no gpt2.tiktoken, encoder.json + vocab.bpe or vocab.json + merges.txt")
    if not path.is_file():
        raise GptlabError(
            f"GPT-2 tokenizer file {path} not found; give gpt2.tiktoken or vocab.json (with merges.txt beside it)"
        )
    try:
        if path.suffix == ".json":
            merges = next((path.parent / m for v, m in VOCAB_MERGES_NAMES if (path.parent / m).is_file()), None)
            if merges is None:
                raise GptlabError(f"{path} needs its merges file (merges.txt or vocab.bpe) in the same folder")
            ranks = data_gym_to_mergeable_bpe_ranks(str(merges), str(path))
        else:
            ranks = load_tiktoken_bpe(str(path))
    except GptlabError:
        raise
    except (ValueError, AssertionError, KeyError, UnicodeDecodeError, json.JSONDecodeError):
        raise GptlabError(f"{path} is not a GPT-2 vocabulary file (gpt2.tiktoken or vocab.json + merges.txt)") from None
    if len(ranks) != N_MERGEABLE:
        raise GptlabError(
            f"{path} holds {len(ranks):,} tokens, not GPT-2's {N_MERGEABLE:,}; give GPT-2's own vocabulary"
        )
    return ranks


class GPT2Tokenizer:
    kind = "gpt2"
    file_name = "gpt2.tiktoken"
    options = ("tokenizer_file",)
    unk_id = None  # byte-level: every text encodes

    def __init__(self, ranks: dict[bytes, int]):
        self.ranks = ranks
        self.encoding = tiktoken.Encoding(
            name="gpt2", pat_str=openai_public.r50k_pat_str, mergeable_ranks=ranks, special_tokens={EOT: N_MERGEABLE}
        )

    @classmethod
    def from_file(cls, path: str | Path) -> GPT2Tokenizer:
        """GPT-2's tokenizer from local files, no network.

        `path` is one of: a `gpt2.tiktoken` ranks file (tiktoken's format); a `vocab.json` or
        `encoder.json` with its `merges.txt` / `vocab.bpe` in the same folder (Hugging Face's /
        OpenAI's original files); or a folder holding either. Ids equal
        `tiktoken.get_encoding("gpt2")`'s, with <|endoftext|> = 50256.
        """
        return cls(read_ranks(Path(path)))

    @classmethod
    def download(cls) -> GPT2Tokenizer:
        """GPT-2's tokenizer through tiktoken's own download (needs the network once; tiktoken caches it)."""
        try:
            return cls(openai_public.gpt2()["mergeable_ranks"])  # what tiktoken.get_encoding("gpt2") builds
        except Exception as e:  # requests' and tiktoken's errors vary by version; all mean "could not fetch"
            raise GptlabError(
                f"could not fetch GPT-2's vocabulary ({type(e).__name__}); offline, pass --tokenizer-file PATH "
                "to gpt2.tiktoken or vocab.json + merges.txt"
            ) from None

    @classmethod
    def train(cls, texts: Iterable[str], tokenizer_file: str | Path | None = None) -> GPT2Tokenizer:
        """Nothing to learn from `texts`: GPT-2's vocabulary, from `tokenizer_file` or tiktoken's download."""
        return cls.from_file(tokenizer_file) if tokenizer_file else cls.download()

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    @property
    def eot_id(self) -> int:
        return self.encoding.eot_token

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)  # "<|endoftext|>" inside text is ordinary text, not the token

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids)

    def save(self, directory: Path) -> Path:
        path = Path(directory) / self.file_name
        # tiktoken's format (what tiktoken.load.dump_tiktoken_bpe writes, without its blobfile dependency)
        lines = (
            base64.b64encode(token) + b" %d\n" % rank for token, rank in sorted(self.ranks.items(), key=lambda x: x[1])
        )
        path.write_bytes(b"".join(lines))
        return path

    @classmethod
    def load(cls, directory: Path) -> GPT2Tokenizer:
        path = Path(directory) / cls.file_name
        if not path.is_file():
            raise GptlabError(f"tokenizer file {path} is missing; run `gptlab prepare` again")
        return cls.from_file(path)
