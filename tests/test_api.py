import io
import sys

import pytest

from gptlab.checkpoint import save_checkpoint
from gptlab.cli import main
from gptlab.config import RunConfig
from gptlab.errors import GptlabError
from gptlab.generation import TextGenerator, load


@pytest.fixture
def checkpoint(tmp_path, char_textgen):
    """The char_textgen model saved as a checkpoint directory, as training writes one."""
    tok = char_textgen.tokenizer
    tok_file = tok.save(tmp_path)
    cfg = RunConfig(model=char_textgen.model.config)
    return save_checkpoint(tmp_path / "ckpt", char_textgen.model, cfg, {"tokenizer": {"kind": tok.kind}}, [tok_file])


def test_load_then_generate_and_stream(checkpoint, char_textgen):
    lm = load(checkpoint, device="cpu", max_new_tokens=25, temperature=1.0)
    assert isinstance(lm, TextGenerator) and lm.settings.max_new_tokens == 25
    text = lm.generate("ROMEO:", seed=4)
    assert text == char_textgen.generate(
        "ROMEO:", max_new_tokens=25, temperature=1.0, seed=4
    )  # same weights, same text
    pieces = list(lm.stream("ROMEO:", seed=4))
    assert "".join(pieces) == text and len(pieces) > 1
    batch = lm.generate_batch("ROMEO:", 3, seed=4)
    assert len(batch) == 3 and all(isinstance(t, str) for t in batch)
    empty = lm.generate(max_new_tokens=5, seed=1)  # empty prompt: the start of a new document
    assert empty == char_textgen.generate("", max_new_tokens=5, temperature=1.0, seed=1) and len(empty) <= 5


def test_api_refuses_bad_input_with_a_message(checkpoint, tmp_path):
    lm = load(checkpoint, device="cpu")
    with pytest.raises(GptlabError, match="temperature"):
        lm.generate("ROMEO:", temperature=-1)
    with pytest.raises(GptlabError, match="at least 1"):
        lm.generate_batch("ROMEO:", 0)
    with pytest.raises(GptlabError, match="unknown sampling setting temprature"):
        lm.generate("ROMEO:", temprature=0.5)  # a misspelt setting is not silently ignored
    with pytest.raises(GptlabError, match="no such checkpoint"):
        load(tmp_path / "missing")


def test_sample_streams_batches_and_stops_from_the_command_line(checkpoint, capsys):
    base = ["sample", str(checkpoint), "--prompt", "ROMEO:", "--max-new-tokens", "30", "--device", "cpu"]
    assert main(base + ["--temperature", "0"]) == 0
    greedy = capsys.readouterr().out
    assert greedy.startswith("ROMEO:") and len(greedy) > len("ROMEO:") + 1
    assert main(base + ["--num-samples", "2", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == f"--- sample 1\n{greedy}--- sample 2\n{greedy}"
    stop = greedy[len("ROMEO:") + 3 :][:2]
    assert main(base + ["--temperature", "0", "--stop", stop]) == 0
    assert capsys.readouterr().out == greedy[: greedy.index(stop, len("ROMEO:"))] + "\n"
    assert main(base + ["--top-p", "2"]) == 2
    assert "top-p must be in (0, 1]" in capsys.readouterr().err


def test_chat_from_the_command_line_reads_lines_until_quit(checkpoint, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("/max 5\nROMEO:\n\n/quit\n"))
    assert main(["chat", str(checkpoint), "--device", "cpu", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count(">: ") == 4 and "max 5" in out and "empty line" in out
