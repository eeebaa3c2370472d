"""The interactive console behind `gptlab chat`: type text at the `>:` prompt, the model continues it.

Everything typed and generated so far is one running text; /reset starts a new one. The window
policy: the model is given the last block_size tokens of that text (TextGenerator's truncate=True),
so a conversation goes on for as long as the user types, and the model remembers as much of it as its
context holds. Commands change the sampling settings while it runs; a turn that fails for any reason
prints one line and the conversation goes on. Input and output are injected (a read_line function
and a text stream), so tests drive it without a terminal.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from gptlab.atomic import write_text_atomic
from gptlab.errors import GptlabError
from gptlab.generation.sampling import sampling_settings
from gptlab.generation.text import TextGenerator
from gptlab.outputs import check_output_file

PROMPT = ">: "

# command -> (settings field, type); commands are spelled like the flags (/top-k), /top_k works too
SETTING_COMMANDS = {
    "temperature": ("temperature", float),
    "top-k": ("top_k", int),
    "top-p": ("top_p", float),
    "repetition-penalty": ("repetition_penalty", float),
    "max": ("max_new_tokens", int),
}

HELP = """\
Type some text and press Enter: the model continues it, streaming, and remembers the conversation
(as much of it as its context holds: it is given the last block_size tokens).
  /temperature T         randomness: 0 = always the most likely token, 1 = the model's own odds
  /top-k K               sample among the K most likely tokens (0 = all)
  /top-p P               sample among the most likely tokens that together reach probability P (1 = all)
  /repetition-penalty R  > 1 makes tokens already in the text less likely (1 = off)
  /max N                 generate at most N tokens per turn
  /seed [N]              fix the random seed (same input, same output); no N: random again
  /stop [TEXT]           also stop where TEXT appears (\\n for a newline); no TEXT: clear stop strings
  /settings              show the current settings
  /save FILE             write the conversation so far to FILE (replacing it)
  /reset                 forget the conversation
  /help                  this list
  /quit                  leave (Ctrl-D too)
Ctrl-C stops a generation and returns to the prompt."""


def enable_line_editing() -> None:
    """Arrow keys, line editing and history for input(), where the platform has readline."""
    try:
        import readline  # noqa: F401  (importing it is what switches input() over)
    except ImportError:
        pass


class Console:
    def __init__(self, textgen: TextGenerator, read_line: Callable[[str], str] = input, out: TextIO | None = None):
        self.textgen = textgen
        self.settings = textgen.settings
        self.read_line = read_line
        self.out = out or sys.stdout  # looked up now, not at import, so a redirected stdout is honoured
        self.text = ""  # the conversation so far: what the model continues
        self.commands: dict[str, Callable[[str], bool]] = {
            **{name: (lambda a, name=name: self._set(name, a)) for name in SETTING_COMMANDS},
            "seed": self._seed,
            "stop": self._stop,
            "settings": lambda a: self._say(self._describe_settings()),
            "save": self._save,
            "reset": self._reset,
            "help": lambda a: self._say(HELP),
            "quit": lambda a: False,
        }

    def run(self) -> None:
        """Read lines until /quit or end of input (Ctrl-D). No turn ends the conversation by failing:
        whatever goes wrong in one is told in one line, and the next prompt comes."""
        self.textgen.check_fits(self.settings)  # a --max-new-tokens that cannot fit: refused before the first turn
        self._say("Type text for the model to continue; /help lists the commands, /quit leaves.")
        while True:
            try:
                line = self.read_line(PROMPT)
            except (EOFError, OSError):  # end of input, or a terminal that went away
                self._say("")
                return
            except KeyboardInterrupt:
                self._say("\n(Ctrl-C stops a generation; /quit or Ctrl-D leaves)")
                continue
            except ValueError as e:  # input() refuses a line holding a NUL byte, or bytes that are not text
                self._say(f"error: that line could not be read ({e}); type it again")
                continue
            try:
                if not self.handle(line):
                    return
            except GptlabError as e:
                self._say(f"error: {e}")
            except KeyboardInterrupt:
                self._say("\n[stopped]")
            except Exception as e:  # a bug must not cost the user the conversation
                self._say(f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no details'}")

    def handle(self, line: str) -> bool:
        """One line of input: a command or text to continue. False means leave."""
        command = line.strip()
        if not command:
            self._say("(empty line: type some text for the model to continue, or /help)")
            return True
        if command.startswith("/"):
            name, _, arg = command[1:].partition(" ")
            name = name.replace("_", "-")
            if name not in self.commands:
                self._say(f"unknown command /{name}; /help lists the commands")
                return True
            return self.commands[name](arg.strip())
        self.respond(line)
        return True

    def respond(self, line: str) -> None:
        """Add the line to the conversation and stream the model's continuation of it."""
        prompt = self.text + ("\n" if self.text and not self.text.endswith("\n") else "") + line
        self.textgen.tokenizer.encode(line)  # a line the tokenizer cannot take is refused before it joins the text
        produced: list[str] = []
        try:
            for piece in self.textgen.stream(prompt, truncate=True):  # the window policy: its last block_size tokens
                produced.append(piece)
                self.out.write(piece)
                self.out.flush()
            if not produced:
                self.out.write("(nothing: the model ended the text, or a stop string came first)\n")
            elif not produced[-1].endswith("\n"):
                self.out.write("\n")
        except KeyboardInterrupt:
            self.out.write("\n[stopped]\n")
        self.out.flush()
        self.text = prompt + "".join(produced)

    def _say(self, text: str) -> bool:
        self.out.write(text + "\n")
        self.out.flush()
        return True

    def _set(self, command: str, arg: str) -> bool:
        field, parse = SETTING_COMMANDS[command]
        try:
            value = parse(arg)
        except ValueError:
            example = "0.7" if parse is float else "50"
            return self._say(
                f"/{command} needs a {'number' if parse is float else 'whole number'}, e.g. /{command} {example}"
            )
        if field == "top_k" and value == 0 or field == "top_p" and value == 1:
            value = None  # all tokens
        changed = sampling_settings(self.settings, **{field: value})  # a bad value is refused; the old one stays
        self.textgen.check_fits(changed)  # /max 10000000000: refused now, not at the next turn
        setattr(self.settings, field, value)
        return self._say(self._describe_settings())

    def _seed(self, arg: str) -> bool:
        if not arg:
            self.settings.seed = None
            return self._say("seed: random each time")
        try:
            self.settings.seed = int(arg)
        except ValueError:
            return self._say("/seed needs a whole number, e.g. /seed 1 (or no number for random)")
        return self._say(f"seed: {self.settings.seed} (each turn starts from it)")

    def _stop(self, arg: str) -> bool:
        if not arg:
            self.settings.stop = ()
            return self._say("stop strings cleared")
        self.settings.stop = (*self.settings.stop, arg.replace("\\n", "\n").replace("\\t", "\t"))
        return self._say(f"stop strings: {', '.join(repr(s) for s in self.settings.stop)}")

    def _save(self, arg: str) -> bool:
        if not arg:
            return self._say("/save needs a file name, e.g. /save conversation.txt")
        path = Path(arg).expanduser()
        if path.is_dir():
            return self._say(f"{path} is a directory; give a file name, e.g. /save {path / 'conversation.txt'}")
        try:
            check_output_file(path, flag="/save")  # never over a checkpoint's or a run's own files
            write_text_atomic(path, self.text)  # whole or not at all: an old file is never left half-replaced
        except GptlabError as e:
            return self._say(str(e))
        except OSError as e:
            return self._say(f"could not save to {path}: {e.strerror}; try another path")
        return self._say(f"(conversation saved to {path}: {len(self.text):,} characters)")

    def _reset(self, arg: str) -> bool:
        self.text = ""
        return self._say("(conversation forgotten)")

    def _describe_settings(self) -> str:
        s = self.settings
        return (
            f"temperature {s.temperature}, top-k {s.top_k or 'all'}, top-p {s.top_p or 'all'}, "
            f"repetition-penalty {s.repetition_penalty}, max {s.max_new_tokens}, "
            f"seed {'random' if s.seed is None else s.seed}, stop {list(s.stop) or 'none'}"
        )
