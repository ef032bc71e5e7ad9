"""User-facing errors.

`InputError` is raised for bad input a user can fix (a missing model directory, an unreadable image,
an empty file list, `device=cuda` without CUDA). The command line prints its message as one line and
exits non-zero; it never carries a traceback. Messages say what is wrong, why, and how to fix it.
"""


class InputError(Exception):
    """Bad input: the message is shown to the user as a single line."""
