"""Ctrl-C (SIGINT) or SIGTERM during training: finish the step, save a checkpoint, say how to resume.

`StopSignals` only records the signal; the training loop looks at `requested` between steps, so a
checkpoint is never cut off midway by the signal that asked for it. A second signal acts at once
(the previous handlers are back after the first), for a user who does not want to wait.
"""

from __future__ import annotations

import signal
import threading

from gptlab.errors import GptlabError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    def __init__(self):
        self.requested: int | None = None  # the signal number, once one arrived
        self.previous: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():  # Python delivers signals to the main thread only
            for sig in SIGNALS:
                self.previous[sig] = signal.signal(sig, self.handle)

    def handle(self, signum, frame) -> None:
        self.requested = signum
        self.restore()

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()


class TrainingInterrupted(GptlabError):
    """Training stopped on a signal after saving its checkpoint; the CLI exits with 128 + the signal number."""

    is_error = False

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
