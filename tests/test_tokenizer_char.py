import pytest

from gptlab.errors import GptlabError
from gptlab.tokenizers import EOT
from gptlab.tokenizers.char import CharTokenizer


def test_round_trip_is_lossless_on_training_text(corpus_file):
    text = corpus_file.read_text() + "Ünïcödé ✓ 中文\n"
    tok = CharTokenizer.train([text])
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == len(set(text)) + 1  # + end-of-text


def test_end_of_text_is_its_own_token():
    tok = CharTokenizer.train(["ab"])
    assert tok.eot_id == 2 and tok.decode([0, tok.eot_id, 1]) == f"a{EOT}b"


def test_unknown_character_is_a_clear_error_not_silent_loss():
    tok = CharTokenizer.train(["hello"])
    with pytest.raises(GptlabError, match="not in this model's vocabulary: 'z'"):
        tok.encode("hez")


def test_save_and_load(tmp_path):
    tok = CharTokenizer.train(["hello world"])
    tok.save(tmp_path)
    again = CharTokenizer.load(tmp_path)
    assert again.chars == tok.chars and again.encode("world") == tok.encode("world")
