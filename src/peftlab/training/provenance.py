"""What a run records about where it ran: package versions, git commit, peak memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def package_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "peft", "peftlab", "accelerate"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """`git rev-parse HEAD` of the checkout peftlab is imported from; None when it is not a checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and len(commit) == 40 else None


def peak_memory(device) -> tuple[float, str]:
    """(MB, kind): CUDA max allocated on GPU, else this process's peak resident set size."""
    import torch

    if getattr(device, "type", "") == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes. It is the whole process's peak (model, data, Python), since start.
    mb = rss / 2**20 if sys.platform == "darwin" else rss / 2**10
    return mb, "cpu_peak_rss_process"
