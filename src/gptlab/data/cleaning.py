"""Opt-in cleaning rules, applied in a fixed order to each document as it streams past, and counted.

Every rule is off unless asked for; what each one removed (characters, lines, whole documents)
or changed (lines) is counted, printed by `prepare` and stored in meta.json: never silent.
Rules work on blocks of whole lines, so a document is never held in memory at once.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from gptlab.errors import GptlabError

# Project Gutenberg's markers. The header ends with the START line (or, in texts from the 1990s,
# the end of the "small print"); the footer starts at the END line or the "End of the Project
# Gutenberg EBook of ..." line that older texts put before it.
GUTENBERG_START = re.compile(
    r"^[ \t]*(?:\*{3} ?START OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK|\*END\*THE SMALL PRINT)",
    re.IGNORECASE | re.MULTILINE,
)
GUTENBERG_END = re.compile(
    r"^[ \t]*(?:\*{3} ?END OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK|End of (?:the )?Project Gutenberg)",
    re.IGNORECASE | re.MULTILINE,
)
NORMAL_FORMS = ("NFC", "NFKC")
RULES = (
    "strip_gutenberg",
    "normalize",
    "drop_lines",
    "lowercase",
    "keep_chars",
    "collapse_whitespace",
)  # applied in this order
INLINE_SPACE = re.compile(r"[^\S\n]+")  # whitespace other than line breaks
SPACE_AROUND_LINES = re.compile(r" *\n *")
BLANK_RUNS = re.compile(r"\n{3,}")
LINE = re.compile(r"[^\n]*\n|[^\n]+")  # one line with its line break (the last may have none)


@dataclass(frozen=True)
class CleaningRules:
    strip_gutenberg: bool = False  # drop Project Gutenberg's header and footer (license) around the text
    normalize: str | None = None  # "NFC" or "NFKC" Unicode normalisation
    drop_lines: str | None = None  # drop lines matching this regular expression (re.search)
    lowercase: bool = False
    keep_chars: str | None = (
        None  # keep only these characters (a regex character class body, e.g. "a-z .,'"); line breaks always stay
    )
    collapse_whitespace: bool = (
        False  # runs of spaces/tabs -> one space, no spaces at line ends, at most one blank line in a row
    )

    def __post_init__(self):
        if self.normalize is not None and self.normalize not in NORMAL_FORMS:
            raise GptlabError(f"--normalize must be one of {', '.join(NORMAL_FORMS)}, got {self.normalize!r}")
        for flag, pattern in (
            ("--drop-lines", self.drop_lines),
            ("--keep-chars", self.keep_chars and f"[{self.keep_chars}]"),
        ):
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise GptlabError(f"{flag} {pattern!r} is not a valid regular expression ({e})") from None

    def active(self) -> list[str]:
        return [rule for rule in RULES if getattr(self, rule) not in (None, False)]

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, False)}


def new_report(rules: CleaningRules) -> dict[str, dict[str, int]]:
    return {
        rule: {"chars_removed": 0, "lines_removed": 0, "lines_changed": 0, "documents_removed": 0}
        for rule in rules.active()
    }


def gutenberg_bounds(blocks: Iterable[str]) -> tuple[int, int | None] | None:
    """(index of the header's last line, index of the footer's first line or None) for a document
    with Project Gutenberg markers; None without them. Lines are counted by line breaks."""
    start = end = None
    line = 0  # index of the block's first line
    for block in blocks:
        if start is None and (m := GUTENBERG_START.search(block)):
            start = line + block.count("\n", 0, m.start())
        if start is not None and end is None:
            for m in GUTENBERG_END.finditer(block):
                at = line + block.count("\n", 0, m.start())
                if at > start:
                    end = at
                    break
        line += block.count("\n")
    return None if start is None else (start, end)


class Cleaner:
    """Cleans one document's blocks; counts into a shared report (pass report=None not to count)."""

    def __init__(self, rules: CleaningRules, report: dict | None, gutenberg: tuple[int, int | None] | None):
        self.rules, self.report, self.bounds = rules, report, gutenberg
        self.steps = [(rule, getattr(self, rule)) for rule in rules.active()]
        self.line = 0  # raw line index at the start of the current block (strip_gutenberg runs first, on raw lines)
        self.trailing_newlines = 2  # collapse_whitespace: drop blank lines at the start of the document
        self.drop = re.compile(rules.drop_lines) if rules.drop_lines else None
        self.unwanted = re.compile(f"[^{rules.keep_chars}\n]+") if rules.keep_chars else None
        self.left = {rule: 0 for rule in rules.active()}  # characters left after each rule, to spot emptied documents
        self.had_text = False

    def clean(self, blocks: Iterable[str]) -> Iterator[str]:
        for block in blocks:
            self.had_text = self.had_text or bool(block)
            for rule, step in self.steps:
                before = block
                block = step(block)
                self.left[rule] += len(block)
                if self.report is not None:
                    self.count(rule, before, block)
            if block:
                yield block
        if self.report is not None and self.had_text:
            for rule, _ in self.steps:
                if self.left[rule] == 0:
                    self.report[rule]["documents_removed"] += 1
                    break  # the first rule that emptied it removed it

    def count(self, rule: str, before: str, after: str) -> None:
        r = self.report[rule]
        r["chars_removed"] += len(before) - len(after)
        r["lines_removed"] += before.count("\n") - after.count("\n")
        if rule in ("normalize", "lowercase") and before != after:  # they keep line breaks, so lines pair up
            r["lines_changed"] += sum(a != b for a, b in zip(before.split("\n"), after.split("\n")))

    def strip_gutenberg(self, block: str) -> str:
        first = self.line
        self.line += block.count("\n")
        if self.bounds is None:
            return block
        start, end = self.bounds
        if start < first and (end is None or self.line < end):
            return block  # wholly inside the body
        return "".join(
            s for i, s in enumerate(LINE.findall(block)) if start < first + i and (end is None or first + i < end)
        )

    def normalize(self, block: str) -> str:
        return unicodedata.normalize(self.rules.normalize, block)

    def drop_lines(self, block: str) -> str:
        return "".join(s for s in LINE.findall(block) if not self.drop.search(s))

    def lowercase(self, block: str) -> str:
        return block.lower()

    def keep_chars(self, block: str) -> str:
        return self.unwanted.sub("", block)

    def collapse_whitespace(self, block: str) -> str:
        # blocks start at a line start, so stripping the block's ends strips its first and last line
        block = BLANK_RUNS.sub("\n\n", SPACE_AROUND_LINES.sub("\n", INLINE_SPACE.sub(" ", block)).strip(" "))
        lead = len(block) - len(block.lstrip("\n"))
        block = block[max(0, lead - max(0, 2 - self.trailing_newlines)) :]  # blank lines may run on across blocks
        body = block.rstrip("\n")
        self.trailing_newlines = len(block) - len(body) if body else self.trailing_newlines + len(block)
        return block


def clean_document(
    blocks: Iterable[str], rules: CleaningRules, report: dict | None, gutenberg: tuple[int, int | None] | None
) -> Iterator[str]:
    """The document's blocks with the rules applied; counts go into `report` unless it is None."""
    if not rules.active():
        return iter(blocks)
    return Cleaner(rules, report, gutenberg).clean(blocks)
