"""The one exception type that reaches the user as a one-line message, and how the OS's errors read."""

from __future__ import annotations

import errno
import os


class GptlabError(Exception):
    """A problem with the user's input or files: the message says what is wrong and what to do.

    The CLI prints it on one line and exits with code 2; anything else is a bug and keeps its traceback.
    silent: under torchrun, the copy that ranks other than 0 raise of an error rank 0 prints, so it shows once.
    """

    exit_code = 2
    is_error = True  # False for a stop the user asked for (Ctrl-C, SIGTERM): reported without "error:"

    def __init__(self, message: str = "", silent: bool = False):
        super().__init__(message)
        self.silent = silent


class Terminated(BaseException):
    """SIGTERM, raised where the signal lands (as Ctrl-C raises KeyboardInterrupt), so that every
    `finally` runs: temporary directories are removed and locks released before the process ends."""

    exit_code = 128 + 15


# What to do about the OS errors a user's paths and disks cause (the CLI shows them in one line).
OS_ADVICE = {
    errno.ENOSPC: "no space left on the disk; free some space and try again",
    errno.EDQUOT: "your disk quota is used up; free some space and try again",
    errno.EFBIG: "the file is too large for this file system (or a size limit); free space or choose another disk",
    errno.EACCES: "permission denied; check its permissions, or choose another path",
    errno.EPERM: "operation not permitted; choose another path",
    errno.EROFS: "the file system is read-only; choose another path",
    errno.EISDIR: "it is a directory, where a file was expected",
    errno.ENOTDIR: "a part of the path is a file, where a directory was expected",
    errno.ENOENT: "no such file or directory",
    errno.EEXIST: "it already exists",
    errno.ENOTEMPTY: "the directory is not empty",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter one",
    errno.EILSEQ: "the name is not valid on this file system; choose another",
    errno.EMFILE: "too many files are open; raise the limit (ulimit -n) or close other programs",
    errno.EIO: "the disk reported an input/output error; check the disk",
}


def os_error_message(e: OSError) -> str:
    """An OSError as one line: the path(s) it concerns, what went wrong and what to do."""
    paths = [os.fsencode(p).decode("utf-8", "backslashreplace") for p in (e.filename, e.filename2) if p is not None]
    what = OS_ADVICE.get(e.errno) or (e.strerror or str(e) or type(e).__name__)
    return f"{' -> '.join(paths)}: {what}" if paths else what
