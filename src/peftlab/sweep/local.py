"""Local backend: the runs one after another in this process, a progress bar over runs.

A failing run is recorded (one line) and the sweep goes on, unless `fail_fast`. Ctrl-C stops the
sweep (the interrupted run resumes from its last checkpoint next time). `isolate` trains each run in a
fresh spawned process (`peftlab bench`: peak memory counted since process start is then the run's own).
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from peftlab.sweep.errors import one_line_error
from peftlab.sweep.spec import Resources, SweepRun


@contextmanager
def torch_threads(n: float):
    """torch intra-op threads = the run's CPUs (as a Ray trial gets), restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_in_child(cfg, force: bool) -> str:
    """Module-level (picklable) body of an isolated training process."""
    from peftlab.train import train_run

    return str(train_run(cfg, force=force))


def train_isolated(cfg, force: bool = False):
    """`train_run(cfg)` in a fresh spawned process (a finished run is skipped without one); a PeftlabError in
    the child is re-raised here."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from pathlib import Path

    from peftlab.runs import is_finished, run_dir_for
    from peftlab.train import train_run

    if not force and is_finished(run_dir_for(cfg)):
        return train_run(cfg)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return Path(pool.submit(_train_in_child, cfg, force).result())


def run_local(runs: list[SweepRun], resources: Resources, fail_fast: bool = False, echo=print,
              isolate: bool = False, force: bool = False) -> dict[str, dict]:
    """Train every run in order; returns {run_dir: {"status", "error", "seconds"}} for the runs started."""
    from tqdm.auto import tqdm

    from peftlab.runs import is_finished
    from peftlab.train import summary_line, train_run

    outcomes: dict[str, dict] = {}
    bar = tqdm(total=len(runs), desc="sweep", unit="run", disable=not sys.stderr.isatty())

    def say(line: str) -> None:
        with tqdm.external_write_mode():  # clears the bar, prints, redraws it
            echo(line)
    try:
        for i, run in enumerate(runs, 1):
            was_done = is_finished(run.run_dir) and not force
            start = time.perf_counter()
            try:
                if isolate:
                    train_isolated(run.cfg, force=force)  # the child keeps torch's default threads
                else:
                    with torch_threads(resources.cpus_per_run):
                        train_run(run.cfg, force=force)
            except Exception as err:  # noqa: BLE001 - a failing run is recorded, the sweep goes on
                line = one_line_error(err)
                outcomes[str(run.run_dir)] = {"status": "failed", "error": line,
                                              "seconds": time.perf_counter() - start}
                say(f"[{i}/{len(runs)}] {run.label}: failed: {line}")
                if fail_fast:
                    break
            else:
                status = "skipped" if was_done else "finished"
                outcomes[str(run.run_dir)] = {"status": status, "error": None, "seconds": time.perf_counter() - start}
                say(f"[{i}/{len(runs)}] {run.label}: {status}: {summary_line(run.run_dir)}")
            bar.update(1)
    finally:
        bar.close()
    return outcomes
