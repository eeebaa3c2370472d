import json
import re

import numpy as np
import pytest

from gptlab.cli import main
from gptlab.data import sources as sources_module
from gptlab.data.cleaning import CleaningRules, clean_document, gutenberg_bounds, new_report
from gptlab.data.format import data_tokenizer
from gptlab.data.prepare import prepare
from gptlab.errors import GptlabError

SONNETS_BODY = """THE SONNETS

by William Shakespeare



I

From fairest creatures we desire increase,
That thereby beauty’s rose might never die,
But as the riper should by time decease,
His tender heir might bear his memory:
But thou contracted to thine own bright eyes,
Feed’st thy light’s flame with self-substantial fuel,
Making a famine where abundance lies,
Thy self thy foe, to thy sweet self too cruel:

II

When forty winters shall besiege thy brow,
And dig deep trenches in thy beauty’s field,
Thy youth’s proud livery so gazed on now,
Will be a tattered weed of small worth held:
"""

# The layout of a current Project Gutenberg plain-text file (e.g. ebook #1041), shortened.
GUTENBERG_HEADER = """The Project Gutenberg eBook of The Sonnets, by William Shakespeare

This eBook is for the use of anyone anywhere in the United States and
most other parts of the world at no cost and with almost no restrictions
whatsoever. You may copy it, give it away or re-use it under the terms
of the Project Gutenberg License included with this eBook or online at
www.gutenberg.org. If you are not located in the United States, you
will have to check the laws of the country where you are located before
using this eBook.

Title: The Sonnets

Author: William Shakespeare

Release Date: September, 1997 [eBook #1041]
[Most recently updated: January 5, 2021]

Language: English

Character set encoding: UTF-8

Produced by: the PG Shakespeare Team, a team of about twenty Project Gutenberg volunteers.

*** START OF THE PROJECT GUTENBERG EBOOK THE SONNETS ***



"""
GUTENBERG_FOOTER = """

*** END OF THE PROJECT GUTENBERG EBOOK THE SONNETS ***

Updated editions will replace the previous one--the old editions will
be renamed.

Creating the works from print editions not protected by U.S. copyright
law means that no one owns a United States copyright in these works,
so the Foundation (and you!) can copy and distribute it in the United
States without permission and without paying copyright
royalties. Special rules, set forth in the General Terms of Use part
of this license, apply to copying and distributing Project
Gutenberg™ electronic works to protect the PROJECT GUTENBERG™
concept and trademark.

START: FULL LICENSE

THE FULL PROJECT GUTENBERG LICENSE

PLEASE READ THIS BEFORE YOU DISTRIBUTE OR USE THIS WORK

To protect the Project Gutenberg™ mission of promoting the free
distribution of electronic works, by using or distributing this work
(or any other work associated in any way with the phrase “Project
Gutenberg”), you agree to comply with all the terms of the Full
Project Gutenberg™ License available with this file or online at
www.gutenberg.org/license.

Section 1. General Terms of Use and Redistributing Project Gutenberg™
electronic works

Most people start at our website which has the main PG search
facility: www.gutenberg.org.

This website includes information about Project Gutenberg™,
including how to make donations to the Project Gutenberg Literary
Archive Foundation, how to help produce our new eBooks, and how to
subscribe to our email newsletter to hear about new eBooks.
"""

# An older layout (2000s): CRLF line ends, "THIS PROJECT", and an "End of the Project Gutenberg
# EBook" line before the END marker.
OLD_STYLE = (
    "The Project Gutenberg EBook of Hamlet, by William Shakespeare\r\n\r\n"
    "This eBook is for the use of anyone anywhere at no cost and with\r\n"
    "almost no restrictions whatsoever.  You may copy it, give it away or\r\n"
    "re-use it under the terms of the Project Gutenberg License included\r\n"
    "with this eBook or online at www.gutenberg.net\r\n\r\n"
    "Title: Hamlet\r\n\r\nAuthor: William Shakespeare\r\n\r\n"
    "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n"
    "HAMLET. To be, or not to be, that is the question:\r\n"
    "Whether 'tis nobler in the mind to suffer\r\n\r\n"
    "End of the Project Gutenberg EBook of Hamlet, by William Shakespeare\r\n\r\n"
    "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n\r\n"
    "***** This file should be named 1524.txt or 1524.zip *****\r\n"
)


def cleaned(text: str, rules: CleaningRules, block_lines: int = 3) -> tuple[str, dict]:
    """Clean `text` streamed in blocks of a few lines (as read_blocks hands them out)."""
    lines = text.splitlines(keepends=True)
    blocks = ["".join(lines[i : i + block_lines]) for i in range(0, len(lines), block_lines)]
    report = new_report(rules)
    bounds = gutenberg_bounds(blocks) if rules.strip_gutenberg else None
    return "".join(clean_document(blocks, rules, report, bounds)), report


@pytest.mark.parametrize("block_lines", [1, 3, 1000])
def test_gutenberg_header_and_license_are_stripped(block_lines):
    book = GUTENBERG_HEADER + SONNETS_BODY + GUTENBERG_FOOTER
    text, report = cleaned(book, CleaningRules(strip_gutenberg=True), block_lines)
    assert text == "\n\n\n" + SONNETS_BODY + "\n\n"  # exactly the lines between the markers
    assert report["strip_gutenberg"]["chars_removed"] == len(book) - len(text)
    assert report["strip_gutenberg"]["lines_removed"] == book.count("\n") - text.count("\n")


def test_older_gutenberg_layout_is_stripped_too():
    text, _ = cleaned(OLD_STYLE, CleaningRules(strip_gutenberg=True))
    assert (
        text
        == "HAMLET. To be, or not to be, that is the question:\r\nWhether 'tis nobler in the mind to suffer\r\n\r\n"
    )


def test_text_without_markers_is_left_alone():
    text, report = cleaned(SONNETS_BODY, CleaningRules(strip_gutenberg=True))
    assert text == SONNETS_BODY and report["strip_gutenberg"]["chars_removed"] == 0


def test_prepare_strips_gutenberg_and_stores_the_report(tmp_path, monkeypatch):
    monkeypatch.setattr(sources_module, "BLOCK_BYTES", 100)  # the rules see many small blocks
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "sonnets.txt").write_text(GUTENBERG_HEADER + SONNETS_BODY + GUTENBERG_FOOTER)
    (folder / "hamlet.txt").write_bytes(OLD_STYLE.encode())
    rules = CleaningRules(strip_gutenberg=True, collapse_whitespace=True)
    meta = prepare([str(folder)], tmp_path / "data", cleaning=rules, val_fraction=0.1)
    tok = data_tokenizer(tmp_path / "data")
    texts = [
        tok.decode(np.fromfile(tmp_path / "data" / f"{s}.bin", dtype=np.uint16).tolist()) for s in ("train", "val")
    ]
    assert "Gutenberg" not in "".join(texts) and "License" not in "".join(texts)
    assert sorted(texts) == sorted(
        [
            SONNETS_BODY.replace("\n\n\n\n", "\n\n") + "\n",
            "HAMLET. To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n\n",
        ]
    )
    report = meta["cleaning"]["report"]
    assert meta["cleaning"]["rules"] == {"strip_gutenberg": True, "collapse_whitespace": True}
    book_chars = len(GUTENBERG_HEADER + SONNETS_BODY + GUTENBERG_FOOTER) + len(OLD_STYLE)
    assert (
        report["strip_gutenberg"]["chars_removed"] + report["collapse_whitespace"]["chars_removed"]
        == book_chars - meta["stats"]["chars"]
    )
    book_lines = (GUTENBERG_HEADER + SONNETS_BODY + GUTENBERG_FOOTER + OLD_STYLE).count("\n")
    assert report["strip_gutenberg"]["lines_removed"] + report["collapse_whitespace"][
        "lines_removed"
    ] == book_lines - sum(t.count("\n") for t in texts)
    assert (
        report["collapse_whitespace"]["lines_removed"] == 3 + 2 + 1
    )  # blank lines: at the start, in the body, at the end


def test_each_rule_does_what_it_says_and_is_counted():
    text = "Ｆｕｌｌ ｗｉｄｔｈ ﬁne\n# a comment line\nMixed CASE Text\n  too   many\t spaces  \n\n\n\nend\n"
    out, report = cleaned(text, CleaningRules(normalize="NFKC"))
    assert out.startswith("Full width fine\n") and report["normalize"]["lines_changed"] == 1
    assert report["normalize"]["chars_removed"] == -1  # "ﬁ" became two characters
    out, report = cleaned(text, CleaningRules(drop_lines=r"^#"))
    assert "comment" not in out and report["drop_lines"] == {
        "chars_removed": 17,
        "lines_removed": 1,
        "lines_changed": 0,
        "documents_removed": 0,
    }
    out, report = cleaned(text, CleaningRules(lowercase=True))
    assert "mixed case text" in out and report["lowercase"]["lines_changed"] == 2
    out, report = cleaned(text, CleaningRules(keep_chars="a-zA-Z "))
    assert out == "  ne\n a comment line\nMixed CASE Text\n  too   many spaces  \n\n\n\nend\n"
    assert report["keep_chars"]["chars_removed"] == len(text) - len(out) and report["keep_chars"]["lines_removed"] == 0
    out, report = cleaned(text, CleaningRules(collapse_whitespace=True))
    assert out.endswith("Mixed CASE Text\ntoo many spaces\n\nend\n")
    assert report["collapse_whitespace"]["lines_removed"] == 2


@pytest.mark.parametrize("block_lines", [1, 2, 5])
def test_streamed_cleaning_equals_cleaning_the_whole_text(block_lines):
    text = "\n\n  lead\n" + "word  \t word\n\n\n\n\nnext   line \n" * 5 + " \n\n\n\ntail"
    rules = CleaningRules(collapse_whitespace=True, drop_lines="next", lowercase=True)
    whole, whole_report = cleaned(text, rules, block_lines=10**6)
    streamed, streamed_report = cleaned(text, rules, block_lines)
    assert streamed == whole and streamed_report == whole_report
    assert whole.startswith("lead\nword word\n\n") and "\n\n\n" not in whole


def test_a_document_emptied_by_a_rule_is_counted_and_left_out(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("Real text here.\n" * 20)
    (folder / "b.txt").write_text("#only comments\n#here\n")
    (folder / "c.txt").write_text("More real text.\n" * 20)
    meta = prepare([str(folder)], tmp_path / "data", cleaning=CleaningRules(drop_lines="^#"), val_fraction=0.3)
    assert meta["cleaning"]["report"]["drop_lines"]["documents_removed"] == 1
    assert meta["skipped"]["empty"] == [str(folder / "b.txt")]
    assert str(folder / "b.txt") not in meta["documents"]["train"] + meta["documents"]["val"]


def test_bad_rules_are_clear_errors():
    with pytest.raises(GptlabError, match="--normalize must be one of NFC, NFKC"):
        CleaningRules(normalize="NFD")
    with pytest.raises(GptlabError, match="--drop-lines '\\(' is not a valid regular expression"):
        CleaningRules(drop_lines="(")


def test_cli_prints_and_stores_what_each_rule_removed(tmp_path, capsys):
    book = tmp_path / "sonnets.txt"
    book.write_text(GUTENBERG_HEADER + SONNETS_BODY + GUTENBERG_FOOTER)
    assert main(["prepare", str(book), "--out", str(tmp_path / "d"), "--strip-gutenberg", "--lowercase"]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "d" / "meta.json").read_text())["cleaning"]["report"]
    removed = report["strip_gutenberg"]
    assert (
        f"strip gutenberg: {removed['chars_removed']:,} chars removed, {removed['lines_removed']:,} lines removed"
        in out
    )
    assert re.search(r"lowercase: \d+ lines changed", out)
    assert main(["prepare", str(book), "--out", str(tmp_path / "e"), "--keep-chars", "z-a"]) == 2
    assert "--keep-chars" in capsys.readouterr().err and not (tmp_path / "e").exists()
