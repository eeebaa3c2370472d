"""Turning a stream of token ids into a stream of text, safely.

Two things can go wrong when text is printed token by token:
- a byte-level tokenizer (bpe, gpt2) may split one character over several tokens; decoding such a
  token alone gives U+FFFD (the replacement character), so text is held back until it decodes whole;
- a stop string may arrive in pieces ("\\n" then "\\n"), so the tail that could still become one is
  held back until it is clear either way.
"""

from __future__ import annotations

from gptlab.tokenizers import Tokenizer

REPLACEMENT = "\ufffd"  # what a decoder writes for bytes that are not (yet) a whole UTF-8 character


CONTEXT = 8  # tokens before a position that decide how a token reads there (its spacing, a character it ends)


class IncrementalDecoder:
    """Token ids in, finished text out; works through any tokenizer's decode().

    Each step decodes all ids so far (microseconds for a few thousand tokens) and releases what is new,
    so decoders whose output depends on context, such as the word tokenizer's quotes and spacing,
    stream exactly what decode() gives for the whole.
    """

    def __init__(self, tokenizer: Tokenizer, context: list[int] = ()):
        """`context`: tokens before the first pushed one (a prompt's end), decoded but never given out, so
        the first new text is spaced from them as decode() spaces it (the word tokenizer: " word", ",")."""
        self.tokenizer = tokenizer
        self.ids: list[int] = list(context)
        self.released = len(tokenizer.decode(self.ids)) if self.ids else 0  # characters already given out
        self.settled = len(self.ids)  # ids whose text was released whole

    @classmethod
    def after(cls, tokenizer: Tokenizer, prompt: list[int]) -> IncrementalDecoder:
        """A decoder for the text that continues `prompt`: the prompt's last CONTEXT tokens are its context,
        from the last end-of-text on (a new document starts after it)."""
        tail = list(prompt[-CONTEXT:])
        ends = [i for i, token in enumerate(tail) if token == tokenizer.eot_id]
        return cls(tokenizer, tail[ends[-1] + 1 :] if ends else tail)

    def push(self, token: int) -> str:
        """Add one token; return the text it completes ("" while a character is still partial)."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        # A UTF-8 character is at most 4 bytes: 4 tokens that still end broken are broken text (an undertrained
        # model makes such), so let them out as U+FFFD rather than stall the stream.
        if text.endswith(REPLACEMENT) and len(self.ids) - self.settled < 4:
            return ""
        return self._release(text)

    def flush(self) -> str:
        """The text still held back (at the end, broken bytes come out as U+FFFD)."""
        return self._release(self.tokenizer.decode(self.ids))

    def _release(self, text: str) -> str:
        out, self.released, self.settled = text[self.released :], len(text), len(self.ids)
        return out


class StopStrings:
    """Text in, text out, ending just before the first stop string; `stopped` says whether one came."""

    def __init__(self, stops: tuple[str, ...] | list[str]):
        self.stops = tuple(stops)
        self.held = ""  # text released by the decoder but not yet passed on
        self.stopped = False

    def push(self, text: str) -> str:
        if self.stopped:
            return ""
        self.held += text
        cut = min((i for i in (self.held.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self.held = self.held[:cut], ""
            return out
        keep = self._partial_stop_length()
        out, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
        return out

    def flush(self) -> str:
        out, self.held = ("" if self.stopped else self.held), ""
        return out

    def _partial_stop_length(self) -> int:
        """Length of the longest tail of the held text that is the start of some stop string."""
        for n in range(min(len(self.held), max((len(s) for s in self.stops), default=0)), 0, -1):
            tail = self.held[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0
