"""gptlab tokenizers as Hugging Face `tokenizers` files (tokenizer.json) that AutoTokenizer reads.

Each kind is rebuilt as a `tokenizers.Tokenizer` that encodes exactly as ours does, and written
with a tokenizer_config.json naming its end-of-text token.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from gptlab.errors import GptlabError
from gptlab.tokenizers import EOT, Tokenizer

HF_TOKENIZER = "tokenizer.json"
HF_TOKENIZER_CONFIG = "tokenizer_config.json"


def char_to_hf(tok) -> HFTokenizer:
    """One token per character: a word-level vocabulary over characters, each character split off on its own.

    No normaliser and no unknown token, so nothing is altered or silently replaced: a character
    outside the vocabulary is an error, as in gptlab.
    """
    vocab = {c: i for i, c in enumerate(tok.chars)}
    vocab[EOT] = tok.eot_id
    hf = HFTokenizer(models.WordLevel(vocab, unk_token=None))
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every code point, newlines too
    hf.decoder = decoders.Fuse()  # join characters without the spaces a word-level decoder would insert
    return hf


def word_to_hf(tok) -> HFTokenizer:
    """Words and punctuation marks as in gptlab: spaces dropped, the same regex cutting the rest.

    Decoding in transformers puts one space between tokens; gptlab's decode also restores the
    spacing around punctuation, which no `tokenizers` decoder expresses.
    """
    from gptlab.tokenizers.word import TOKEN_RE

    hf = HFTokenizer(models.WordLevel({t: i for i, t in enumerate(tok.tokens)}, unk_token=tok.tokens[tok.unk_id]))
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"[^\S\n]+"), behavior="removed"
            ),  # spaces and tabs are not tokens; line breaks are
            pre_tokenizers.Split(Regex(TOKEN_RE.pattern), behavior="isolated"),
        ]
    )
    return hf


def bpe_to_hf(tok) -> HFTokenizer:
    return HFTokenizer.from_str(tok.hf.to_str())  # it is a `tokenizers` tokenizer already


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte: the alphabet byte-level BPE vocabularies are written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    for n, b in enumerate(b for b in range(256) if b not in mapping):
        mapping[b] = chr(256 + n)
    return mapping


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge that made each multi-byte token, in rank order.

    tiktoken stores only ranks. Running BPE over a token's bytes with the merges ranked below it
    ends in exactly two parts: the pair whose merge created the token.
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            pair_ranks = [ranks.get(a + b, rank) for a, b in zip(parts, parts[1:])]
            i = min(range(len(pair_ranks)), key=pair_ranks.__getitem__)
            if pair_ranks[i] >= rank:
                raise GptlabError(
                    f"token {token!r} cannot be built from earlier merges; the GPT-2 vocabulary file is inconsistent"
                )
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
    return merges


def gpt2_to_hf(tok) -> HFTokenizer:
    """GPT-2's byte-level BPE (tiktoken ranks) as the vocab + merges BPE model transformers' GPT-2 uses."""
    alphabet = bytes_to_unicode()
    text = lambda b: "".join(alphabet[x] for x in b)  # noqa: E731
    vocab = {text(token): rank for token, rank in tok.ranks.items()}
    vocab[EOT] = tok.eot_id
    merges = [(text(a), text(b)) for a, b in merges_from_ranks(tok.ranks)]
    hf = HFTokenizer(models.BPE(vocab, merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's regex, then bytes
    hf.decoder = decoders.ByteLevel()
    return hf


CONVERTERS = {"char": char_to_hf, "word": word_to_hf, "bpe": bpe_to_hf, "gpt2": gpt2_to_hf}


def to_hf_tokenizer(tok: Tokenizer) -> HFTokenizer:
    if tok.kind not in CONVERTERS:
        raise GptlabError(
            f"the {tok.kind!r} tokenizer cannot be exported for transformers yet; kinds that can: "
            f"{', '.join(CONVERTERS)}"
        )
    hf = CONVERTERS[tok.kind](tok)
    hf.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    return hf


def save_hf_tokenizer(tok: Tokenizer, out_dir: Path, model_max_length: int) -> None:
    """Write tokenizer.json + tokenizer_config.json into `out_dir` for AutoTokenizer.from_pretrained."""
    out_dir = Path(out_dir)
    to_hf_tokenizer(tok).save(str(out_dir / HF_TOKENIZER))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOT,
        "eos_token": EOT,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,  # decode must give back exactly what gptlab's decode gives
    }
    (out_dir / HF_TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
