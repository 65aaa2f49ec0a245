"""`peftlab.train` — the public name of the one training loop (kept for the documented API).

The loop itself lives in `peftlab.training.loop` as named stages (preflight, resume, θ0, data,
trainer, finalize); this module re-exports what callers use.
"""

from peftlab.training.loop import summary_line, train_run
from peftlab.training.provenance import git_commit, package_versions
from peftlab.training.rundir import check_writable, last_complete_checkpoint

__all__ = ["train_run", "summary_line", "check_writable", "last_complete_checkpoint", "package_versions", "git_commit"]
