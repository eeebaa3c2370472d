from gptlab.generation.streaming import REPLACEMENT, IncrementalDecoder, StopStrings

TEXT = "naïve café – 東京 😀 ok"  # 2-, 3- and 4-byte characters


class ByteTokenizer:
    """The smallest byte-level tokenizer: one token per UTF-8 byte, decode replaces broken bytes."""

    eot_id = 256

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def stream(decoder, ids):
    pieces = [decoder.push(i) for i in ids]
    return pieces, decoder.flush()


def test_byte_tokens_stream_as_whole_characters():
    tok = ByteTokenizer()
    pieces, rest = stream(IncrementalDecoder(tok), tok.encode(TEXT))
    assert "".join(pieces) + rest == TEXT and rest == ""
    assert not any(REPLACEMENT in p for p in pieces)
    assert "😀" in pieces  # the emoji's 4 tokens come out together, as one piece
    assert pieces.count("") == len(TEXT.encode()) - len(TEXT)  # one silent step per continuation byte


def test_gpt2_tokens_that_split_characters_stream_whole(shared_data):
    from gptlab.tokenizers.gpt2 import GPT2Tokenizer

    tok = GPT2Tokenizer.from_file(shared_data / "gpt2" / "gpt2.tiktoken")
    ids = tok.encode(TEXT)
    assert any(REPLACEMENT in tok.decode([i]) for i in ids)  # GPT-2 does split some of these characters
    pieces, rest = stream(IncrementalDecoder(tok), ids)
    assert "".join(pieces) + rest == TEXT and rest == ""
    assert not any(REPLACEMENT in p for p in pieces)


def test_trained_bpe_tokens_that_split_characters_stream_whole():
    from gptlab.tokenizers.bpe import BPETokenizer

    tok = BPETokenizer.train(["plain english words, over and over. " * 50 + TEXT], vocab_size=300)
    ids = tok.encode(TEXT)
    assert any(REPLACEMENT in tok.decode([i]) for i in ids)
    pieces, rest = stream(IncrementalDecoder(tok), ids)
    assert "".join(pieces) + rest == TEXT and rest == ""
    assert not any(REPLACEMENT in p for p in pieces)


def test_broken_bytes_come_out_as_replacement_rather_than_stalling():
    tok = ByteTokenizer()
    ids = [0xE6, 0x9D] + tok.encode("x") + [0x80] * 4 + tok.encode("ab")  # a cut character, stray bytes, then text
    pieces, rest = stream(IncrementalDecoder(tok), ids)
    assert "".join(pieces) + rest == tok.decode(ids) == f"{REPLACEMENT}x{REPLACEMENT * 4}ab"
    assert pieces[-2:] == ["a", "b"]  # text after the damage still streams


def test_stop_strings_split_over_pieces_are_caught_and_never_shown():
    stops = StopStrings(["\n\n", "THE END"])
    assert stops.push("Hello\n") == "Hello"  # "\n" might start "\n\n": held back
    assert stops.push("world") == "\nworld"  # it did not
    assert stops.push(" THE E") == " "
    assert stops.push("ND of it") == "" and stops.stopped
    assert stops.push("more") == "" and stops.flush() == ""


def test_held_back_text_comes_out_at_the_end():
    stops = StopStrings(["\n\n"])
    assert stops.push("last line\n") == "last line"
    assert not stops.stopped and stops.flush() == "\n"


def test_word_tokens_stream_with_the_spacing_their_decoder_restores():
    from gptlab.tokenizers.word import WordTokenizer

    text = 'He said: "Stay, good friend!" (and left.) Then -- silence.'
    tok = WordTokenizer.train([text])
    ids = tok.encode(text)
    pieces, rest = stream(IncrementalDecoder(tok), ids)
    assert "".join(pieces) + rest == tok.decode(ids)  # the decoder joins words, not pieces: the stream still agrees


def test_a_continuation_reads_in_place_after_its_prompt():
    """Text continuing a prompt is spaced as decode() spaces the whole (the word tokenizer's "queen" after
    "and" is " queen"); only the current document counts as context."""
    from gptlab.tokenizers.word import WordTokenizer

    tok = WordTokenizer.train(["The king and queen spoke, and the queen left."])
    prompt, more = tok.encode("The king and"), tok.encode("queen spoke,")
    pieces, rest = stream(IncrementalDecoder.after(tok, prompt), more)
    assert tok.decode(prompt) + "".join(pieces) + rest == tok.decode(prompt + more)
    assert "".join(pieces).startswith(" queen")
    after_eot = IncrementalDecoder.after(tok, prompt + [tok.eot_id])
    assert "".join(stream(after_eot, more)[0]).startswith("queen")  # a new document starts unspaced
