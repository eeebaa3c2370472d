import io

from gptlab.generation.console import PROMPT, Console


def scripted(lines):
    """A read_line that types `lines` one by one, then Ctrl-D; it records the prompts it was shown."""
    lines, prompts = list(lines), []

    def read_line(prompt):
        prompts.append(prompt)
        if not lines:
            raise EOFError
        line = lines.pop(0)
        if isinstance(line, BaseException):
            raise line
        return line

    read_line.prompts = prompts
    return read_line


def drive(textgen, lines, out=None):
    out = out or io.StringIO()
    read_line = scripted(lines)
    Console(textgen, read_line, out).run()
    return out.getvalue(), read_line.prompts


def test_commands_change_the_settings_the_next_generation_uses(char_textgen):
    out, prompts = drive(
        char_textgen,
        [
            "/temperature 0",
            "/top-k 5",
            "/top_p 0.9",  # the underscore spelling works too
            "/repetition-penalty 1.2",
            "/max 7",
            "/seed 3",
            "/settings",
            "/quit",
            "never read",
        ],
    )
    s = char_textgen.settings
    assert (s.temperature, s.top_k, s.top_p, s.repetition_penalty, s.max_new_tokens, s.seed) == (0.0, 5, 0.9, 1.2, 7, 3)
    assert "temperature 0.0, top-k 5, top-p 0.9, repetition-penalty 1.2, max 7, seed 3" in out
    assert prompts == [PROMPT] * 8  # /quit left before the last line was read
    drive(char_textgen, ["/top-k 0", "/top-p 1", "/seed"])
    assert (s.top_k, s.top_p, s.seed) == (None, None, None)  # back to all tokens and a random seed


def test_text_is_continued_streaming_and_the_conversation_is_remembered_until_reset(char_textgen):
    char_textgen.settings.temperature = 0
    char_textgen.settings.max_new_tokens = 10
    expected = char_textgen.generate("ROMEO:")
    console = Console(char_textgen, scripted([]), io.StringIO())
    console.handle("ROMEO:")
    assert expected in console.out.getvalue()
    assert console.text == "ROMEO:" + expected
    console.handle("JULIET:")
    assert console.text.startswith("ROMEO:" + expected + ("" if expected.endswith("\n") else "\n") + "JULIET:")
    console.handle("/reset")
    assert console.text == ""
    console.handle("ROMEO:")
    assert console.text == "ROMEO:" + expected  # after /reset the same line gives the same answer


def test_stop_strings_and_seed_from_the_console(char_textgen):
    console = Console(char_textgen, scripted([]), io.StringIO())
    for line in ("/max 20", "/seed 5", "/temperature 1"):
        console.handle(line)
    console.handle("the king")
    first = console.text
    console.handle("/reset")
    console.handle("the king")
    assert console.text == first  # a fixed seed repeats the answer
    answer = first[len("the king") :]
    stop = next(answer[i : i + 2] for i in range(2, len(answer)) if answer[i : i + 2].strip() == answer[i : i + 2])
    console.handle("/reset")
    console.handle(f"/stop {stop}")
    console.handle("the king")
    assert console.text == "the king" + answer[: answer.index(stop)]
    console.handle("/stop")
    assert char_textgen.settings.stop == ()
    console.handle("/max 0")
    console.handle("the king")
    assert console.out.getvalue().endswith("(nothing: the model ended the text, or a stop string came first)\n")


def test_empty_lines_unknown_commands_bad_values_and_unknown_characters_get_a_message(char_textgen):
    out, _ = drive(
        char_textgen,
        [
            "",
            "   ",
            "/frobnicate",
            "/temperature hot",
            "/temperature -2",
            "/max 1.5",
            "/top_p 3",
            "/seed x",
            "the king €",
            "/help",
        ],
    )
    assert out.count("empty line") == 2
    assert "unknown command /frobnicate; /help lists the commands" in out
    assert "/temperature needs a number, e.g. /temperature 0.7" in out
    assert "error: --temperature must be at least 0" in out and char_textgen.settings.temperature == 0.8  # unchanged
    assert "/max needs a whole number" in out
    assert "error: --top-p must be in (0, 1]" in out
    assert "/seed needs a whole number" in out
    assert "not in this model's vocabulary: '€'" in out
    assert "/repetition-penalty" in out and "Ctrl-C" in out  # the help text
    assert "Traceback" not in out


class InterruptingOutput(io.StringIO):
    """Output whose n-th write raises KeyboardInterrupt once: Ctrl-C arriving mid-generation."""

    def __init__(self, at_write):
        super().__init__()
        self.writes, self.at_write = 0, at_write

    def write(self, text):
        self.writes += 1
        if self.writes == self.at_write:
            raise KeyboardInterrupt
        return super().write(text)


def test_ctrl_c_stops_a_generation_and_the_console_carries_on(char_textgen):
    out = InterruptingOutput(at_write=6)  # the greeting and 3 commands answer in writes 1-4; 5.. are streamed pieces
    lines = ["/max 200", "/temperature 1", "/seed 1", "ROMEO:", "/max 3", "JULIET:"]
    _, prompts = drive(char_textgen, lines, out)
    text = out.getvalue()
    assert "[stopped]" in text
    assert len(prompts) == len(lines) + 1  # every line was read after the interrupt, then Ctrl-D
    assert "max 3" in text.split("[stopped]")[1]  # commands still work after it


def test_ctrl_c_at_the_prompt_does_not_leave(char_textgen):
    out, prompts = drive(char_textgen, [KeyboardInterrupt(), "/max 2"])
    assert "/quit or Ctrl-D leaves" in out and "max 2" in out and len(prompts) == 3


def test_save_writes_the_conversation_and_bad_paths_get_a_message(char_textgen, tmp_path):
    char_textgen.settings.max_new_tokens = 10
    console = Console(char_textgen, scripted([]), io.StringIO())
    console.handle("ROMEO:")
    target = tmp_path / "conversation.txt"
    target.write_text("an older conversation")
    console.handle(f"/save {target}")
    assert target.read_text(encoding="utf-8") == console.text and console.text.startswith("ROMEO:")
    assert f"conversation saved to {target}" in console.out.getvalue()
    for arg, message in [
        ("", "/save needs a file name"),
        (str(tmp_path), "is a directory"),
        (str(tmp_path / "missing" / "c.txt"), "could not save to"),
    ]:
        console.handle(f"/save {arg}".rstrip())
        assert message in console.out.getvalue().splitlines()[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conversation.txt"]  # no stray temporary file
