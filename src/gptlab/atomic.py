"""Directories that are either complete or absent, with a checksum of every file.

`atomic_directory` is the one way gptlab writes a directory (data directories, run directories,
checkpoints, Hugging Face exports). The directory is built in a hidden temporary sibling
`.NAME.XXXXXXXX.tmp`, each file's SHA-256 recorded in checksums.json, its files made 0644 (as the
umask allows), everything fsynced, then put in place with one atomic rename. An existing directory
is swapped with the new one in a single step (Linux renameat2 RENAME_EXCHANGE, macOS RENAME_SWAP),
so a kill at any moment leaves the old directory or the new one under NAME, never neither. Where
the system cannot swap, the old one is renamed aside to `.NAME.old` first; a crash between the two
renames leaves it there, and `complete_directory` (and the next gptlab process, see
`gptlab.outputs`) falls back to it.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gptlab.errors import GptlabError

CHECKSUMS = "checksums.json"
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # the disk, the quota or the file size limit is full


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


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> None:
    """Replace a small file whole: written beside it, fsynced, renamed over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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


def _swap_function():
    """The system call that exchanges two paths atomically, as f(a, b) -> 0 on success; None if there is none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        at_fdcwd, rename_exchange = -100, 2
        return lambda a, b: libc.renameat2(at_fdcwd, a, at_fdcwd, b, rename_exchange)
    if sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        rename_swap = 2
        return lambda a, b: libc.renamex_np(a, b, rename_swap)
    return None


_SWAP = _swap_function()


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the system or filesystem cannot."""
    if _SWAP is None:
        return False
    if _SWAP(os.fsencode(a), os.fsencode(b)) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_directory(new: Path, final: Path, keep_previous: bool = False) -> None:
    """Put the directory `new` at `final`: whatever moment a kill lands, `final` is the old or the new one.
    keep_previous: leave the old one at `.NAME.old` (for `restore_previous`) instead of removing it."""
    old = old_path(final)
    remove_directory(old)  # a previous version a replacement killed halfway set aside: final is complete
    if not final.exists():
        os.rename(new, final)
    elif exchange(new, final):  # `new` now holds the old one
        if keep_previous:
            os.replace(new, old)
        else:
            remove_directory(new)  # a kill before this leaves a stale .NAME.*.tmp, removed by the next claim
    else:
        os.replace(final, old)
        os.replace(new, final)
    fsync_path(final.parent)
    if not keep_previous:
        remove_directory(old)


def restore_previous(final: Path) -> None:
    """Undo a replacement made with keep_previous: the old directory back at `final` (or, if there was
    none, `final` removed)."""
    old = old_path(final)
    if not old.is_dir():
        remove_directory(final)
    elif exchange(old, final):
        remove_directory(old)
    else:
        remove_directory(final)
        os.replace(old, final)


def disk_error(e: BaseException) -> int | None:
    """The errno of a full disk (or quota, or file size limit) behind an exception, if that is what it is.

    torch.save raises a RuntimeError with the OSError as its context (when it writes to a file
    object); safetensors puts "(os error N)" in its message."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            return e.errno
        found = re.search(r"\(os error (\d+)\)", str(e))
        if found and int(found.group(1)) in DISK_ERRNOS:
            return int(found.group(1))
        e = e.__cause__ or e.__context__
    return None


@contextmanager
def atomic_directory(final: Path, checksums: bool = True, keep_previous: bool = False) -> Iterator[Path]:
    """Yield an empty directory to fill; on success it replaces `final` whole (with checksums.json unless
    checksums=False; see replace_directory for keep_previous); on error or a signal it vanishes and
    `final` is as it was."""
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise GptlabError(f"{final} is a file, not a directory; choose another path")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        mask = umask()
        tmp.chmod(0o777 & ~mask)  # mkdtemp makes it private; the result is an ordinary directory
        yield tmp
        files = write_checksums(tmp) if checksums else [p for p in tmp.rglob("*") if p.is_file()]
        for path in files:
            path.chmod(0o666 & ~mask)  # 0644 as usual: some writers (safetensors) make their files private
            fsync_path(path)
        fsync_path(tmp)
        replace_directory(tmp, final, keep_previous)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        code = disk_error(e)
        if code is not None:
            kept = f"{final} keeps its previous version" if complete_directory(final) else f"{final} was not written"
            what = "no space left on the disk" if code != errno.EFBIG else "the file size limit was reached"
            raise GptlabError(f"{what} while writing {final}; {kept}; free some space and try again") from None
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
