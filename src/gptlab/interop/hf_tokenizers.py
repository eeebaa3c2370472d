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


CONVERTERS = {"char": char_to_hf}


def to_hf_tokenizer(tok: Tokenizer) -> HFTokenizer:
    if tok.kind not in CONVERTERS:
        raise GptlabError(f"the {tok.kind!r} tokenizer cannot be exported for transformers yet; kinds that can: {', '.join(CONVERTERS)}")
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
