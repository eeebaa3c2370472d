"""Directories that are either complete or absent, with a checksum of every file.

A directory is built in a hidden temporary sibling, each file's SHA-256 recorded in checksums.json,
everything fsynced, then renamed into place (and the parent fsynced), so a crash or power loss at
any moment leaves the previous directory or the new one, never a half-written one under the final
name. Replacing an existing directory takes two renames (old aside, new in); a crash between them
leaves the old one as `.NAME.old`, which `complete_directory` falls back to.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gptlab.errors import GptlabError

CHECKSUMS = "checksums.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's entries to disk (directories: so a rename survives power loss)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (and Windows) cannot fsync a directory; the rename is still atomic
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace a small file whole: written beside it, fsynced, renamed over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


def old_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.old")


def remove_directory(path: Path) -> None:
    """Rename aside, then delete: a directory half-deleted by a crash never keeps a name that is read."""
    if not path.exists():
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".trash", dir=path.parent))
    os.replace(path, trash / path.name)
    shutil.rmtree(trash, ignore_errors=True)


def write_checksums(directory: Path) -> list[Path]:
    """Record the SHA-256 of every file under `directory` in its checksums.json.

    Returns the files, checksums.json included."""
    directory = Path(directory)
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != CHECKSUMS)
    sums = {p.relative_to(directory).as_posix(): sha256_file(p) for p in files}
    (directory / CHECKSUMS).write_text(json.dumps({"sha256": sums}, indent=2) + "\n")
    return files + [directory / CHECKSUMS]


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield an empty directory to fill; on success it replaces `final` whole, with checksums; on error it vanishes."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
        yield tmp
        for path in write_checksums(tmp):
            fsync_path(path)
        fsync_path(tmp)
        old = old_path(final)
        if final.exists():  # final is complete, so an old one left by an earlier crash is not needed
            remove_directory(old)
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_path(final.parent)
        remove_directory(old)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = f"{final} keeps its previous version" if complete_directory(final) else f"{final} was not written"
            raise GptlabError(
                f"no space left on the disk while writing {final}; {kept}; free some space and try again"
            ) from None
        raise


def complete_directory(final: Path) -> Path | None:
    """`final`, or the previous version a crash left aside mid-replacement, or None."""
    final = Path(final)
    for candidate in (final, old_path(final)):
        if (candidate / CHECKSUMS).is_file():
            return candidate
    return None


def verify_directory(path: Path) -> None:
    """Every file named in checksums.json is present with the recorded SHA-256."""
    path = Path(path)
    try:
        sums = json.loads((path / CHECKSUMS).read_text())["sha256"]
    except FileNotFoundError:
        raise GptlabError(
            f"{path} has no {CHECKSUMS}: it was not written completely by gptlab; use another checkpoint"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise GptlabError(f"{path / CHECKSUMS} is corrupt; use another checkpoint") from None
    for name, expected in sums.items():
        file = path / name
        if not file.is_file():
            raise GptlabError(f"{file} is missing from the checkpoint; use another checkpoint")
        if sha256_file(file) != expected:
            raise GptlabError(
                f"{file} is truncated or corrupt (its SHA-256 differs from {CHECKSUMS}); use another checkpoint"
            )
