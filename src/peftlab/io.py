"""Atomic file writes: a file a user sees is always complete.

Everything is written to a temporary sibling (`<name>.tmp-<pid>`) and moved into place with
`os.replace`, which is atomic on POSIX and Windows. A write that fails (disk full, permission,
a value that cannot be serialised) removes its temporary file and raises one `PeftlabError` line;
only a killed process can leave a `.tmp-*` file behind, and no reader looks at those.

JSON convention: peftlab never writes bare `NaN`/`Infinity` (not JSON; many readers reject it).
A non-finite float is written as `null`. Writers that know why a value is missing say so in a
sibling field (e.g. `"score": null, "score_note": "..."`); `nonfinite_keys()` lists the keys a
writer is about to null so it can add such a note.
"""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from peftlab.errors import PeftlabError


def _tmp_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def _os_error(path: Path, err: OSError) -> PeftlabError:
    """One line for an OS error while writing `path`: what happened and what to do."""
    if err.errno == errno.ENOSPC:
        what, todo = "the disk is full", "free some space or choose another --out"
    elif err.errno == errno.EDQUOT:
        what, todo = "the disk quota is exceeded", "free some space or choose another --out"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what, todo = "permission denied", "choose a writable --out"
    else:
        what, todo = err.strerror or type(err).__name__, "check the output directory and re-run"
    return PeftlabError(f"cannot write '{path}': {what}; {todo}")


def _write_atomic(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)  # no `.tmp-*` litter after a failed write
        raise _os_error(path, err) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically (parent directories are created)."""
    return _write_atomic(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    return _write_atomic(path, bytes(data))


def _default(obj: Any):
    # numpy / torch scalars and paths appear in configs and metrics
    if hasattr(obj, "item") and getattr(obj, "ndim", 0) == 0:
        return finite_or_none(obj.item())
    if hasattr(obj, "tolist"):
        return json_safe(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return json_safe(list(obj))
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def finite_or_none(value: Any) -> Any:
    """`value`, or None when it is a non-finite float (NaN, ±inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_safe(obj: Any) -> Any:
    """`obj` with every non-finite float (also nested in dicts/lists/tuples) replaced by None."""
    if isinstance(obj, float):
        return finite_or_none(obj)
    if isinstance(obj, dict):
        return {key: json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(value) for value in obj]
    return obj


def nonfinite_keys(obj: Any, prefix: str = "") -> list[str]:
    """Dotted keys of the non-finite floats in `obj` (what `json_safe` will write as null)."""
    out: list[str] = []
    if isinstance(obj, float) and not math.isfinite(obj):
        out.append(prefix or "<value>")
    elif isinstance(obj, dict):
        for key, value in obj.items():
            out += nonfinite_keys(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            out += nonfinite_keys(value, f"{prefix}[{i}]")
    return out


def _dumps(obj: Any, indent: int | None) -> str:
    # allow_nan=False: a non-finite float that slipped past json_safe (e.g. from a numpy scalar in
    # _default) is an error here rather than a bare NaN in a file.
    return json.dumps(json_safe(obj), indent=indent, default=_default, ensure_ascii=False, allow_nan=False)


def dumps_json(obj: Any) -> str:
    """Pretty JSON with numpy/torch scalars and paths converted and non-finite floats as null."""
    return _dumps(obj, 2) + "\n"


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as pretty JSON atomically (non-finite floats → null)."""
    return atomic_write_text(path, dumps_json(obj))


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write one JSON object per line, atomically (non-finite floats → null)."""
    text = "".join(_dumps(row, None) + "\n" for row in rows)
    return atomic_write_text(path, text)


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSONL file; a trailing partial line (from a killed writer) is ignored."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # torn last line of an append-only partial file
    return rows


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one line and fsync: for `*.partial.jsonl` progress files that make work resumable."""
    path = Path(path)
    line = _dumps(row, None) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise _os_error(path, err) from err
