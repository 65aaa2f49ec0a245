"""One line for a failed run, whatever raised (what `sweep.csv` / `sweep.json` record)."""

from __future__ import annotations

from peftlab.errors import PeftlabError


def one_line_error(err: BaseException) -> str:
    """`PeftlabError` text as is; otherwise `Type: first line`. Follows Ray's wrappers (`.cause`) and
    `__cause__` to the exception that really failed."""
    seen = set()
    current = err
    while id(current) not in seen:
        seen.add(id(current))
        # Ray's RayTaskError subclasses the cause's type but its text is a whole traceback: go to `.cause`
        cause = getattr(current, "cause", None)
        if isinstance(cause, BaseException):
            current = cause
            continue
        if isinstance(current, PeftlabError):
            return " ".join(str(current).split())
        if current.__cause__ is None:
            break
        current = current.__cause__
    lines = [line for line in str(current).strip().splitlines() if line.strip()]
    return f"{type(current).__name__}: {lines[0].strip() if lines else ''}".rstrip(": ")
