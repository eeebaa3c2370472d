"""From a sequence's tokens to what a response shows: text in whole characters, cut before a stop
string, and the tokens behind each piece of text (for logprobs).

The text comes out of gptlab.generation.streaming (IncrementalDecoder, then StopStrings); the tokens
go out with the text they make, so in every chunk and in every whole response the tokens' texts joined
are exactly the text: a token inside a multi-byte character shows as "" and goes out with the token
that completes the character, and the last token before a stop string shows only its part before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gptlab.generation.streaming import CONTEXT, IncrementalDecoder, StopStrings
from gptlab.serving.engine import PromptScores, Step
from gptlab.tokenizers import Tokenizer


@dataclass
class TokenText:
    """One token as a response shows it."""

    token: int
    text: str  # its share of the text
    offset: int  # where that share starts in the choice's text
    logprob: float | None  # None for a prompt's first token (nothing predicts it)
    top: list[tuple[int, float]] | None  # likeliest alternatives (token, logprob); None where there are none
    before: list[int] = field(default_factory=list)  # the last CONTEXT tokens before it, for in_context


def in_context(tokenizer: Tokenizer, before: list[int], token: int) -> str:
    """The text `token` adds after the tokens `before`: what an alternative would read as in its place,
    so that the text before it plus this is the text with it (the word tokenizer puts a space before a
    word but not before a comma; a byte-level token alone may be a partial character, U+FFFD)."""
    head = tokenizer.decode(before)
    return tokenizer.decode([*before, token])[len(head) :]


class ChoiceText:
    """One choice's tokens in, (text, tokens) out as they become final; `finish_reason` once it ended."""

    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...], start: int = 0, context: list[int] = ()):
        self.start = start  # where the generated text begins in the choice's text (after an echoed prompt)
        self.decoder = IncrementalDecoder.after(tokenizer, context)  # context: the prompt's last tokens
        self.stops = StopStrings(stop)
        self.pending: list[TokenText] = []  # tokens whose text is not out yet
        self.decoded = 0  # characters decoded so far
        self.released = 0  # characters the stop-string filter let through
        self.tokens = 0  # tokens generated, for usage (those that made a stop string included)
        self.finish_reason: str | None = None

    def push(self, step: Step) -> tuple[str, list[TokenText]]:
        self.tokens += 1
        before = self.decoder.ids[-CONTEXT:]
        piece = self.decoder.push(step.token)
        self.pending.append(TokenText(step.token, piece, self.start + self.decoded, step.logprob, step.top, before))
        self.decoded += len(piece)
        self.released += len(self.stops.push(piece))
        if self.stops.stopped:
            self.finish_reason = "stop"
            return self._cut()
        return self._take()

    def finish(self, reason: str) -> tuple[str, list[TokenText]]:
        """The sequence ended ("stop": end-of-text, "length": max_tokens): let out what was held back."""
        tail = self.decoder.flush()  # characters still held belong to the last tokens, which are pending
        if tail:
            self.pending[-1].text += tail
            self.decoded += len(tail)
        self.released += len(self.stops.push(tail))
        if self.stops.stopped:
            self.finish_reason = "stop"
            return self._cut()
        self.released += len(self.stops.flush())
        self.finish_reason = reason
        out, self.pending = self.pending, []
        return "".join(t.text for t in out), out

    def _take(self) -> tuple[str, list[TokenText]]:
        """The pending tokens whose text is wholly released; one that completed no text yet waits for the
        token that does, so a character's tokens go out together."""
        n = 0
        for i, t in enumerate(self.pending):
            if t.text:
                if t.offset - self.start + len(t.text) > self.released:
                    break
                n = i + 1
        out, self.pending = self.pending[:n], self.pending[n:]
        return "".join(t.text for t in out), out

    def _cut(self) -> tuple[str, list[TokenText]]:
        """A stop string begins at `released`: the tokens before it go out, the last one trimmed to it."""
        cut = self.start + self.released
        out = [t for t in self.pending if t.offset < cut]
        if out:
            out[-1].text = out[-1].text[: cut - out[-1].offset]
        self.pending = []
        return "".join(t.text for t in out), out


def prompt_tokens(tokenizer: Tokenizer, ids: list[int], scores: PromptScores | None) -> list[TokenText]:
    """The prompt's tokens with their share of its text and, when scored, their logprobs."""
    decoder = IncrementalDecoder(tokenizer)
    out, offset = [], 0
    steps = [None, *(scores.steps if scores else [])]
    for token, step in zip(ids, steps):
        before = decoder.ids[-CONTEXT:]
        piece = decoder.push(token)
        out.append(TokenText(token, piece, offset, step.logprob if step else None, step.top if step else None, before))
        offset += len(piece)
    if out:
        out[-1].text += decoder.flush()
    return out


def legacy_logprobs(tokenizer: Tokenizer, tokens: list[TokenText]) -> dict:
    """The completions API's logprobs object; the sampled token is always among its alternatives, each
    written as it would read in the sampled one's place (in_context)."""
    top = []
    for t in tokens:
        if t.top is None:
            top.append(None)
            continue
        alternatives = {in_context(tokenizer, t.before, i): lp for i, lp in t.top}
        alternatives.setdefault(in_context(tokenizer, t.before, t.token), t.logprob)
        top.append(alternatives)
    return {
        "tokens": [t.text for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": top,
        "text_offset": [t.offset for t in tokens],
    }


def chat_logprobs(tokenizer: Tokenizer, tokens: list[TokenText]) -> list[dict]:
    """The chat API's logprobs.content entries."""

    def entry(text: str, logprob: float) -> dict:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return [
        {
            **entry(t.text, t.logprob),
            "top_logprobs": [entry(in_context(tokenizer, t.before, i), lp) for i, lp in t.top or []],
        }
        for t in tokens
    ]
