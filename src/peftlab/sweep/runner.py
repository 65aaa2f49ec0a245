"""Plan a sweep (which runs are done / to resume / to do), dispatch it to a backend, write its tables.

    <out>/SWEEP/<name>/sweep.csv   one row per run: axes, status, dev metrics, train time, parameters
    <out>/SWEEP/<name>/sweep.json  spec, versions, backend, start/end, counts, failures (one line each)

Both are written atomically at the end (and also when the sweep is interrupted or stopped by
--fail-fast, with "complete": false in sweep.json and the not-started runs as status "not run").
"""

from __future__ import annotations

import csv
import io
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from peftlab.errors import PeftlabError
from peftlab.sweep.spec import SweepRun, SweepSpec, expand, grid_size

BACKENDS = ("local", "ray")
SWEEP_CSV, SWEEP_JSON = "sweep.csv", "sweep.json"


def run_state(run: SweepRun) -> str:
    """"done" (finished), "resume" (a complete Trainer checkpoint to resume from) or "to do"."""
    from peftlab.runs import CHECKPOINTS, is_finished
    from peftlab.training.rundir import last_complete_checkpoint

    if is_finished(run.run_dir):
        return "done"
    return "resume" if last_complete_checkpoint(run.run_dir / CHECKPOINTS) is not None else "to do"


def sweep_dir_for(spec: SweepSpec, out: str | Path) -> Path:
    from peftlab.runs import safe_output_path

    return safe_output_path(out, "SWEEP", spec.name)


def plan_lines(spec: SweepSpec, runs: list[SweepRun], states: list[str]) -> list[str]:
    """What `peftlab sweep` prints before it starts."""
    n_grid = grid_size(spec)
    axes = " × ".join(f"{k}({len(v)})" for k, v in spec.axes.items())
    lines = [f"sweep {spec.name}: grid {axes} = {n_grid} point{'s' * (n_grid != 1)}, {len(runs)} run{'s' * (len(runs) != 1)}"]
    merged = n_grid - len(runs)
    if merged:
        lines.append(f"  {merged} grid point(s) differ only in a setting their method ignores (e.g. rank for fft): "
                     f"trained once")
    counts = {s: states.count(s) for s in ("done", "resume", "to do")}
    lines.append(f"  done {counts['done']}, to resume {counts['resume']}, to do {counts['to do']}")
    for run, state in zip(runs, states):
        lines.append(f"  [{state:>6}] {run.label}  ->  {run.run_dir}")
    return lines


def run_sweep(spec: SweepSpec, out: str | Path = "outputs", backend: str = "local", dry_run: bool = False,
              fail_fast: bool = False, ray_address: str | None = None, echo=print) -> Path | None:
    """Expand `spec`, print the plan, run it on `backend`, write sweep.csv/json; returns the sweep dir
    (None for a dry run, which writes nothing)."""
    if backend not in BACKENDS:
        raise PeftlabError(f"unknown sweep backend '{backend}'; choose {' or '.join(BACKENDS)}")
    if ray_address and backend != "ray":
        raise PeftlabError("--ray-address needs --backend ray")
    runs = expand(spec, out)  # every grid point validated before anything runs
    sweep_dir = sweep_dir_for(spec, out)
    states = [run_state(r) for r in runs]
    for line in plan_lines(spec, runs, states):
        echo(line)
    if dry_run:
        echo("dry run: nothing trained, nothing written")
        return None
    if backend == "ray":
        from peftlab.sweep.ray_backend import require_ray

        require_ray()  # a missing extra fails before any run starts

    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    outcomes: dict[str, dict] = {}
    extra: dict[str, Any] = {}
    complete = False
    try:
        if backend == "local":
            from peftlab.sweep.local import run_local

            outcomes = run_local(runs, spec.resources, fail_fast=fail_fast, echo=echo)
        else:
            from peftlab.sweep.ray_backend import run_ray

            outcomes, extra = run_ray(runs, spec.resources, sweep_dir, fail_fast=fail_fast, address=ray_address,
                                      echo=echo)
        complete = all(str(r.run_dir) in outcomes for r in runs)
    finally:
        write_results(spec, runs, states, outcomes, sweep_dir, backend=backend, started=started,
                      seconds=time.perf_counter() - t0, complete=complete, extra=extra)
    failures = [o for o in outcomes.values() if o["status"] == "failed"]
    echo(f"sweep {spec.name}: {sum(o['status'] in ('finished', 'skipped') for o in outcomes.values())} of "
         f"{len(runs)} runs finished, {len(failures)} failed -> {sweep_dir / SWEEP_CSV}")
    return sweep_dir


# ---------------------------------------------------------------- tables


def result_rows(runs: list[SweepRun], states: list[str], outcomes: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per run: axes, status, dev metrics (`dev_<name>`), score, timing, parameters."""
    from peftlab.runs import read_final_metrics

    rows = []
    for run, state in zip(runs, states):
        outcome = outcomes.get(str(run.run_dir), {"status": "not run", "error": None})
        fm = read_final_metrics(run.run_dir) or {}
        timing = fm.get("timing") or {}
        row: dict[str, Any] = {k: ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v
                               for k, v in run.axes.items()}
        row.update({
            "status": outcome["status"],
            "state_before": state,
            "main_metric": fm.get("main_metric"),
            "score": fm.get("score"),
            **{f"dev_{k}": v for k, v in (fm.get("dev") or {}).items()},
            "train_s": timing.get("train_s"),
            "total_s": timing.get("total_s"),
            "trainable_params": fm.get("trainable_params"),
            "total_params": fm.get("total_params"),
            "run_dir": str(run.run_dir),
            "error": outcome.get("error"),
        })
        rows.append(row)
    return rows


def _csv_text(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]  # dev metrics differ by task: union, first-seen order
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return buf.getvalue()


def write_results(spec: SweepSpec, runs: list[SweepRun], states: list[str], outcomes: dict[str, dict],
                  sweep_dir: Path, backend: str, started: str, seconds: float, complete: bool,
                  extra: dict[str, Any] | None = None) -> None:
    from peftlab.io import atomic_write_json, atomic_write_text
    from peftlab.training.provenance import git_commit, package_versions

    rows = result_rows(runs, states, outcomes)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(sweep_dir / SWEEP_CSV, _csv_text(rows))
    versions = package_versions()
    if backend == "ray":
        from importlib.metadata import PackageNotFoundError, version

        try:
            versions["ray"] = version("ray")
        except PackageNotFoundError:  # pragma: no cover
            versions["ray"] = None
    statuses = [r["status"] for r in rows]
    atomic_write_json(sweep_dir / SWEEP_JSON, {
        "spec": spec.to_dict(),
        "backend": backend,
        "versions": versions,
        "git_commit": git_commit(),
        "started": started,
        "ended": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "complete": complete,
        "grid_points": grid_size(spec),
        "n_runs": len(runs),
        "counts": {s: statuses.count(s) for s in ("finished", "skipped", "failed", "not run")},
        "failures": [{"run_dir": r["run_dir"], "axes": run.axes, "error": r["error"]}
                     for run, r in zip(runs, rows) if r["status"] == "failed"],
        "runs": [{"run_dir": str(run.run_dir), "axes": run.axes, "also": run.also,
                  "seconds": (outcomes.get(str(run.run_dir)) or {}).get("seconds")} for run in runs],
        **(extra or {}),
    })
