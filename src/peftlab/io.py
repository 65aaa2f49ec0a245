"""Atomic file writes: a file a user sees is always complete.

Everything is written to a temporary sibling (`<name>.tmp-<pid>`) and moved into place with
`os.replace`, which is atomic on POSIX and Windows; a killed process leaves at most a `.tmp-*`
file that no reader looks at.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable


def _tmp_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically (parent directories are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _default(obj: Any):
    # numpy / torch scalars and paths appear in configs and metrics
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps_json(obj: Any) -> str:
    """Pretty JSON with numpy/torch scalars and paths converted."""
    return json.dumps(obj, indent=2, default=_default, ensure_ascii=False) + "\n"


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as pretty JSON atomically."""
    return atomic_write_text(path, dumps_json(obj))


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write one JSON object per line, atomically."""
    text = "".join(json.dumps(row, default=_default, ensure_ascii=False) + "\n" for row in rows)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, default=_default, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
