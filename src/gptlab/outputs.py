"""Where gptlab may write, and who may write there: the overwrite guard, the directory lock, leftovers.

Every command that writes a directory (prepare, train, train --resume, import-gpt2, export-hf)
claims it first with `claim_output`, and writes it with `gptlab.atomic.atomic_directory`:

- the guard (`check_output_dir`): --overwrite replaces only a directory recognisably of the kind the
  command writes (a data directory, a run, a checkpoint, an export), never one that holds or is one
  of the command's inputs, never `/`, the home directory, the current directory or a parent of it,
  never a symbolic link, never a file. Files a command writes (report, pictures, /save) go through
  `check_output_file`, which never overwrites an input or a file of a gptlab directory;
- the lock: an exclusive flock on `.NAME.lock` beside the directory, held for the life of the
  process (the kernel drops it when the process dies, so a crash never leaves a stale lock); a
  second process is refused in one line naming the first;
- leftovers: under the lock no one else writes NAME, so hidden temporary directories of it
  (`.NAME.XXXXXXXX.tmp` / `.trash`) are from processes that were killed: they are removed, and a
  `.NAME.old` left between the two renames of a replacement is put back, each with a note.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gptlab.atomic import CHECKSUMS

try:
    import fcntl
except ImportError:  # Windows: no flock; the guard still applies, the lock does not
    fcntl = None

from gptlab.errors import GptlabError

# Files that belong to a gptlab directory (run, checkpoint, data directory): never overwritten by a report,
# a picture or a saved conversation.
RESERVED_NAMES = ("config.json", "meta.json", "metrics.jsonl", CHECKSUMS, "model.safetensors", "trainer.pt")
TEMP_SUFFIXES = (".tmp", ".trash")


@dataclass(frozen=True)
class OutputKind:
    """What a command writes, for the guard: how to recognise one, and how to talk about it."""

    what: str  # "a gptlab run"
    that: str  # "that run"
    recognise: Callable[[Path], bool]
    alternative: str = ""  # more advice when it exists, e.g. ", or --resume it"
    inner_leftovers: bool = False  # also clean temporary directories inside it (a run's checkpoints)


def printable(path: Path | str) -> str:
    """A path as text, with bytes that are not UTF-8 shown as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def check_name(path: Path | str) -> None:
    """A path gptlab writes into meta.json, config.json and messages must be valid UTF-8."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise GptlabError(
            f"{printable(path)}: the name is not valid UTF-8; rename it (e.g. with convmv) or choose another name"
        ) from None


def protected(resolved: Path) -> str | None:
    """Why a directory may never be replaced or removed, or None."""
    cwd = Path.cwd().resolve()
    if resolved == Path(resolved.anchor):
        return "the root directory"
    if resolved == Path.home().resolve():
        return "your home directory"
    if resolved == cwd:
        return "the current directory"
    if resolved in cwd.parents:
        return "a parent of the current directory"
    return None


def holds(directory: Path, path: Path) -> bool:
    """Whether `path` is `directory` or inside it (both resolved)."""
    return path == directory or directory in path.parents


def check_parent(path: Path, flag: str) -> None:
    """The nearest existing folder above `path` must be a folder this process can write in."""
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise GptlabError(f"{flag} {printable(path)}: {printable(parent)} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise GptlabError(f"{flag} {printable(path)}: {printable(parent)} is not writable; choose another path")


def check_output_dir(
    final: Path, kind: OutputKind, overwrite: bool, inputs: Iterable[Path | str] = (), flag: str = "--out"
) -> None:
    """Refuse, before anything is written, a directory the command must not write or replace."""
    final = Path(final)
    check_name(final)
    resolved = final.resolve()
    why = protected(resolved)
    if why:
        raise GptlabError(
            f"{flag} {final} is {why}, which gptlab never replaces; give a new directory, e.g. {final / 'out'}"
        )
    if final.is_symlink():
        raise GptlabError(f"{flag} {final} is a symbolic link; give the directory itself ({resolved})")
    if final.exists() and not final.is_dir():
        raise GptlabError(f"{flag} {final} is an existing file, not a directory; choose another {flag}")
    if final.exists() and any(final.iterdir()):
        if not overwrite:
            raise GptlabError(
                f"{final} already exists and holds files; choose another {flag}, pass --overwrite to replace "
                f"{kind.that}{kind.alternative}"
            )
        for given in inputs:
            if holds(resolved, Path(given).resolve()):
                relation = "is" if Path(given).resolve() == resolved else "holds"
                raise GptlabError(
                    f"{final} {relation} {given}, an input of this command; refusing to replace it, choose another "
                    f"{flag}"
                )
        if not kind.recognise(final):
            raise GptlabError(
                f"{final} is not empty and is not {kind.what}; refusing to replace it (--overwrite replaces only "
                f"{kind.what}), choose another {flag}"
            )
    check_parent(final, flag)


def check_output_file(path: Path, inputs: Iterable[Path | str] = (), flag: str = "--out") -> None:
    """Refuse a file the command must not write: a folder, a device, one of its inputs, a gptlab directory's file."""
    path = Path(path)
    check_name(path)
    if path.is_dir():
        raise GptlabError(f"{flag} {path} is a directory; give a file name, e.g. {path / 'out'}{path.suffix}")
    if path.exists():
        if not path.is_file():
            raise GptlabError(f"{flag} {path} is not a regular file; give a file name")
        resolved = path.resolve()
        if any(resolved == Path(p).resolve() for p in inputs):
            raise GptlabError(
                f"{flag} {path} is an input of this command; refusing to overwrite it, choose another name"
            )
        if path.name in RESERVED_NAMES or listed_in_checksums(path):
            raise GptlabError(
                f"{flag} {path} belongs to a gptlab directory; refusing to overwrite it, choose another name"
            )
    check_parent(path, flag)


def check_output_folder(path: Path, flag: str = "--out") -> None:
    """A folder that files are written into (not replaced): it must not be a file."""
    path = Path(path)
    check_name(path)
    if path.exists() and not path.is_dir():
        raise GptlabError(f"{flag} {path} is an existing file, not a folder; choose another {flag}")
    check_parent(path, flag)


def listed_in_checksums(path: Path) -> bool:
    try:
        return path.name in (path.parent / CHECKSUMS).read_text()
    except (OSError, UnicodeDecodeError):
        return False


def make_parents(directory: Path) -> list[Path]:
    """mkdir -p; returns the folders it created, deepest last."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
    return missing[::-1]


class DirectoryLock:
    """An exclusive lock on a directory, as a flock on `.NAME.lock` beside it, held until `release`.

    The lock file is removed on release; a process that opened it just before must then find it
    is no longer the file at that path, and tries again."""

    def __init__(self, final: Path):
        self.shown = Path(final)
        self.final = self.shown.resolve()  # one lock however the directory is named (., symlinked parents)
        self.path = self.final.parent / f".{self.final.name}.lock"
        self.fd: int | None = None
        self.made: list[Path] = []

    def acquire(self) -> None:
        try:
            self.made = make_parents(self.final.parent)
            self._lock()
        except OSError as e:
            self._remove_parents()
            raise GptlabError(
                f"cannot write in {printable(self.final.parent)} ({e.strerror}); choose another place"
            ) from None

    def _lock(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if fcntl is None:
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                holder = os.pread(fd, 500, 0).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise GptlabError(
                    f"{self.shown} is in use by another gptlab process ({holder}); wait for it to finish or stop "
                    "it, then try again"
                ) from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # its holder removed it between our open and our lock: take the new one
        os.ftruncate(fd, 0)
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
        os.write(fd, f"pid {os.getpid()}: {command}"[:400].encode("utf-8", "backslashreplace"))
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd = None
        if not self.final.exists():
            self._remove_parents()

    def _remove_parents(self) -> None:
        """The folders acquire() created for an output that was never written: nothing left behind."""
        for d in reversed(self.made):
            try:
                d.rmdir()
            except OSError:
                break
        self.made = []


def temporary_names(name: str | None) -> re.Pattern:
    """Hidden temporary directories atomic_directory and remove_directory make for NAME (None: any name):
    .NAME.XXXXXXXX.tmp, .NAME.XXXXXXXX.trash, and the .trash of a .NAME.old or of a swapped-out .tmp."""
    stem = re.escape(name) if name is not None else r"[^/]+?"
    return re.compile(rf"^\.{{1,2}}{stem}(\.old|\.\w{{8}}\.tmp)?\.\w{{8}}(\.tmp|\.trash)?$")


def clean_leftovers(final: Path, inner: bool = False) -> list[str]:
    """Under the lock of `final`: remove its stale temporary directories and put back a `.NAME.old` that a
    replacement killed between its two renames left; with inner, the same inside it (and its checkpoints/).
    Returns what was done."""
    done = []
    places = [(final.parent, final.name)]
    if inner and final.is_dir():
        places += [(final, None)] + ([(final / "checkpoints", None)] if (final / "checkpoints").is_dir() else [])
    for folder, name in places:
        temporary = temporary_names(name)
        for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
            if entry.is_symlink():
                continue
            if temporary.match(entry.name) and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
                done.append(f"removed {entry}")
            elif name is None and entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file():
                entry.unlink(missing_ok=True)  # a file write_text_atomic did not get to rename
                done.append(f"removed {entry}")
            elif entry.name.endswith(".old") and entry.is_dir() and entry.name[1:-4] == (name or entry.name[1:-4]):
                target = folder / entry.name[1:-4]
                if target.exists():  # the replacement got as far as the new one: the old one is not needed
                    shutil.rmtree(entry, ignore_errors=True)
                    done.append(f"removed {entry}")
                else:
                    os.replace(entry, target)
                    done.append(f"put back {target} from {entry.name}")
    return done


@contextmanager
def claim_output(
    final: Path,
    kind: OutputKind | None = None,
    overwrite: bool = False,
    inputs: Iterable[Path | str] = (),
    flag: str = "--out",
) -> Iterator[Path]:
    """Hold `final` for this process: check it (unless kind is None: continuing one's own output, as
    --resume does), lock it, clean what killed processes left; on exit, unlock."""
    final = Path(final)
    inputs = list(inputs)
    if kind is not None:
        check_output_dir(final, kind, overwrite, inputs, flag)
    lock = DirectoryLock(final)
    lock.acquire()
    try:
        if kind is not None:
            check_output_dir(final, kind, overwrite, inputs, flag)  # again, now that no one else can change it
        for line in clean_leftovers(lock.final, inner=kind is None or kind.inner_leftovers):
            print(f"note: {line} (left by an interrupted gptlab process)", file=sys.stderr)
        yield final
    finally:
        lock.release()
