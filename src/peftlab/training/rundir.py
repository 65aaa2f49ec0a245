"""Run-directory bookkeeping of the training loop: writability, empty-dir cleanup, checkpoints, atomic dirs."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import zipfile
from pathlib import Path

from peftlab.errors import PeftlabError
from peftlab.runs import safetensors_problem

log = logging.getLogger("peftlab.train")

# Files of a Trainer checkpoint the resume needs, and how to check each cheaply.
STATE_FILE = "peftlab_model_state.safetensors"  # the exact model weights (training/trainer.py)
_TORCH_FILES = ("optimizer.pt", "scheduler.pt")  # torch.save zip archives
TRAINER_STATE = "trainer_state.json"  # written last by the Trainer


def check_writable(run_dir: Path, out: str) -> Path | None:
    """Create `run_dir` and a probe file in it; PeftlabError if that fails.

    Returns the topmost directory this call created (None if `run_dir` existed), so that a run
    failing before it writes anything can remove the empty directories again.
    """
    created = None
    for path in [run_dir, *run_dir.parents]:
        if path.exists():
            break
        created = path
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise PeftlabError(f"output directory {out} is not writable ({err.strerror}); choose a writable --out") from None
    return created


def remove_empty_dirs(run_dir: Path, top: Path | None) -> None:
    """rmdir `run_dir` and its parents up to `top` while they are empty (undo `check_writable`)."""
    if top is None:
        return
    for path in [run_dir, *run_dir.parents]:
        if not path.is_dir() or any(path.iterdir()):
            return
        path.rmdir()
        if path == top:
            return


def checkpoint_problem(path: Path) -> str | None:
    """Why Trainer checkpoint `path` cannot be resumed from (None when it looks complete).

    Cheap checks only: trainer_state.json parses, the weights' safetensors header matches the file
    size, optimizer/scheduler archives have an intact zip directory.
    """
    try:
        json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return f"{TRAINER_STATE} missing or unreadable"
    weights = path / STATE_FILE
    if not weights.is_file():
        return f"{STATE_FILE} missing"
    problem = safetensors_problem(weights)
    if problem:
        return f"{STATE_FILE}: {problem}"
    for name in _TORCH_FILES:
        file = path / name
        if not file.is_file() or not zipfile.is_zipfile(file):
            return f"{name} missing or truncated"
    for file in path.glob("rng_state*.pth"):  # optional (the Trainer resumes without it), but not torn
        if not zipfile.is_zipfile(file):
            return f"{file.name} truncated"
    return None


def last_complete_checkpoint(checkpoints_dir: Path) -> Path | None:
    """Newest `checkpoint-N` that passes `checkpoint_problem`; a newer broken one is reported (warning)
    and skipped, so a run resumes from the previous complete checkpoint."""
    if not checkpoints_dir.is_dir():
        return None
    candidates = []
    for path in checkpoints_dir.glob("checkpoint-*"):
        try:
            candidates.append((int(path.name.split("-", 1)[1]), path))
        except ValueError:
            continue
    for _, path in sorted(candidates, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log.warning("checkpoint %s is incomplete or corrupt (%s); falling back to an earlier one", path, problem)
    return None


def atomic_dir(final: Path, write) -> float:
    """Run `write(tmp_dir)` then rename tmp_dir to `final` (replacing it). Returns seconds taken.

    On failure the temp dir is removed (no `.tmp-*` litter) and an OS error becomes one PeftlabError line.
    """
    from peftlab.models import quiet_transformers

    start = time.perf_counter()
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        with quiet_transformers():  # a "Writing model shards" bar per save is noise
            write(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise PeftlabError(f"cannot write '{final}': {err.strerror or err}; free some space or choose another --out") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return time.perf_counter() - start


def remove_litter(run_dir: Path) -> None:
    """Delete temp dirs/files of writes a kill interrupted (`*.tmp-*`)."""
    for stale in [p for p in run_dir.iterdir() if ".tmp-" in p.name]:
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
