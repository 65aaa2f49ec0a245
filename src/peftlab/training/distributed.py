"""Multi-process training (`torchrun --nproc_per_node N -m peftlab train ...`): who writes, and waiting.

The HF Trainer does the distributed part itself (DDP; gloo on CPU, NCCL on CUDA, set up by
accelerate from the variables torchrun exports). What peftlab adds: only the main process (rank 0)
writes the run directory, and the other ranks wait at the points where rank 0 changes it, so that
every rank resumes from the same checkpoint and reads final results only after they exist.
"""

from __future__ import annotations

import os


def world_size() -> int:
    """Number of training processes (torchrun's WORLD_SIZE; 1 for a plain `peftlab train`)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    """This process's global rank (torchrun's RANK; 0 for a plain run)."""
    return int(os.environ.get("RANK", "0") or 0)


def is_main() -> bool:
    """True on the one process that writes files (rank 0)."""
    return rank() == 0


def barrier(device) -> None:
    """Wait for every rank (no-op for one process).

    Uses accelerate's `PartialState`, the same process group the Trainer builds later (created here
    on first use with the same arguments the Trainer passes: `cpu=True` on CPU → gloo).
    """
    if world_size() <= 1:
        return
    from accelerate import PartialState

    PartialState(cpu=getattr(device, "type", "cpu") == "cpu").wait_for_everyone()
