"""User-facing errors.

`InputError` is raised for bad input a user can fix (a missing model directory, an unreadable image,
an empty file list, `device=cuda` without CUDA). The command line prints its message as one line and
exits non-zero; it never carries a traceback. Messages say what is wrong, why, and how to fix it.
"""

import signal


class InputError(Exception):
    """Bad input: the message is shown to the user as a single line."""


class RunInterrupted(BaseException):
    """A signal (SIGINT, SIGTERM, SIGHUP) ended the run. A BaseException, like KeyboardInterrupt, so that
    `except Exception` in a pass or a library does not swallow it; the exit status is 128 + signal."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        self.name = signal.Signals(self.signum).name
        super().__init__(f"interrupted by {self.name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
