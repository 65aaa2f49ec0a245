"""The exception types a user can trigger.

Every error a user can cause (bad task name, missing file, bad rank, ...) is raised as a
`PeftlabError` whose message is one line that says what is wrong and what to do. The CLI prints
that line as `error: ...` and exits with the error's `exit_code` (2; a traceback only with `--debug`).
"""


class PeftlabError(Exception):
    """A user-facing error: `str(err)` is one clear line ending in what to do."""

    exit_code = 2


class DivergedError(PeftlabError):
    """Training produced a non-finite loss or gradient norm and was stopped (exit code 3).

    A distinct exit code lets a sweep script tell "this setting diverged" from "bad input" (2).
    """

    exit_code = 3
