"""The one exception type a user can trigger.

Every error a user can cause (bad task name, missing file, bad rank, ...) is raised as a
`PeftlabError` whose message is one line that says what is wrong and what to do. The CLI prints
that line and exits with code 2; a traceback is shown only with `--debug`.
"""


class PeftlabError(Exception):
    """A user-facing error: `str(err)` is one clear line ending in what to do."""

    exit_code = 2
