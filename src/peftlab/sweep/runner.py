"""Plan a sweep (which runs are done / to resume / to do), dispatch it to a backend, write its tables.

    <out>/SWEEP/<name>/sweep.csv   one row per run: axes, status, dev metrics, train time, parameters
    <out>/SWEEP/<name>/sweep.json  spec, versions, backend, start/end, counts, failures (one line each)

Both are written atomically at the end (and also when the sweep is interrupted or stopped by
--fail-fast, with "complete": false in sweep.json and the not-started runs as status "not run").

Run statuses: finished, skipped (finished before), failed, not run, stopped_early (`search: asha` stopped
it; its run dir is left unfinished). A re-run of an ASHA sweep keeps ASHA's decision: a run that the
previous sweep.csv lists as stopped_early (and that is still unfinished) is not restarted.
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
STOPPED_EARLY = "stopped_early"
STATUSES = ("finished", "skipped", "failed", STOPPED_EARLY, "not run")


def run_state(run: SweepRun, stopped: set[str] = frozenset()) -> str:
    """"done" (finished), "stopped" (ASHA stopped it in an earlier run of this sweep), "resume" (a complete
    Trainer checkpoint to resume from) or "to do"."""
    from peftlab.runs import CHECKPOINTS, is_finished
    from peftlab.training.rundir import last_complete_checkpoint

    if is_finished(run.run_dir):
        return "done"
    if str(run.run_dir) in stopped:
        return "stopped"
    return "resume" if last_complete_checkpoint(run.run_dir / CHECKPOINTS) is not None else "to do"


def stopped_before(spec: SweepSpec, sweep_dir: Path) -> set[str]:
    """Run dirs an earlier run of this ASHA sweep stopped early (from its sweep.csv); empty for a grid."""
    if spec.search != "asha" or not (sweep_dir / SWEEP_CSV).is_file():
        return set()
    with open(sweep_dir / SWEEP_CSV, newline="") as handle:
        return {row["run_dir"] for row in csv.DictReader(handle) if row.get("status") == STOPPED_EARLY}


def sweep_dir_for(spec: SweepSpec, out: str | Path) -> Path:
    from peftlab.runs import safe_output_path

    return safe_output_path(out, "SWEEP", spec.name)


def check_shared_inputs(runs: list[SweepRun]) -> None:
    """Fail with the run's own one-line error, before anything is written, when an input every run of a command
    shares is missing: each (task, data dir)'s train and dev splits load, each model's config loads.

    For `study` / `bench` / `adalora run`, whose runs all share these inputs: without the check a missing data
    dir would fail every run one by one and leave sweep tables behind. (`peftlab sweep` records such failures
    per run instead: its grid may vary the model or data on purpose.)"""
    from peftlab.runs import is_finished
    from peftlab.tasks import get_task, load_split

    seen_data, seen_models = set(), set()
    for run in runs:
        cfg = run.cfg
        if is_finished(run.run_dir):
            continue  # skipped: needs nothing
        task = get_task(cfg.task)
        if (task.name, cfg.data_dir) not in seen_data:
            seen_data.add((task.name, cfg.data_dir))
            for split in ("train", "dev"):
                load_split(task, split, cfg.data_dir)
        if cfg.model not in seen_models:
            seen_models.add(cfg.model)
            _check_model(cfg.model)


def _check_model(model: str | None) -> None:
    """The model's config loads (the same check as the training loop's preflight)."""
    from transformers import AutoConfig

    from peftlab.models import resolve_model

    path = resolve_model(model)
    try:
        AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PeftlabError(f"'{path}' is not a loadable Hugging Face model ({first}); pass --model a model "
                           f"directory or Hub id") from None


def plan_lines(spec: SweepSpec, runs: list[SweepRun], states: list[str]) -> list[str]:
    """What `peftlab sweep` prints before it starts."""
    n_grid = grid_size(spec)
    axes = " × ".join(f"{k}({len(v)})" for k, v in spec.axes.items())
    lines = [f"sweep {spec.name}: grid {axes} = {n_grid} point{'s' * (n_grid != 1)}, {len(runs)} run{'s' * (len(runs) != 1)}"]
    merged = n_grid - len(runs)
    if merged:
        lines.append(f"  {merged} grid point(s) differ only in a setting their method ignores (e.g. rank for fft): "
                     f"trained once")
    counts = {s: states.count(s) for s in ("done", "stopped", "resume", "to do")}
    stopped = f"stopped early before {counts['stopped']}, " if counts["stopped"] else ""
    lines.append(f"  done {counts['done']}, {stopped}to resume {counts['resume']}, to do {counts['to do']}")
    if spec.search == "asha" and spec.asha is not None:
        lines.append(f"  search asha: grace_period {spec.asha.grace_period} epoch(s), reduction_factor "
                     f"{spec.asha.reduction_factor:g} (runs may be stopped early)")
    for run, state in zip(runs, states):
        lines.append(f"  [{state:>6}] {run.label}  ->  {run.run_dir}")
    return lines


def run_sweep(spec: SweepSpec, out: str | Path = "outputs", backend: str = "local", dry_run: bool = False,
              fail_fast: bool = False, ray_address: str | None = None, echo=print, *,
              runs: list[SweepRun] | None = None, sweep_dir: str | Path | None = None, isolate: bool = False,
              force: bool = False, check_inputs: bool = False) -> Path | None:
    """Expand `spec`, print the plan, run it on `backend`, write sweep.csv/json; returns the sweep dir
    (None for a dry run, which writes nothing).

    For commands that build their own grid (`peftlab bench`): `runs` replaces `expand(spec, out)` and
    `sweep_dir` replaces `<out>/SWEEP/<name>`. `isolate`: every run in a fresh process (local: a spawned
    child; ray: no actor reuse), so per-run peak memory is that run's own. `force`: re-train finished runs
    (local backend only; `train_run(force=True)`). `check_inputs`: `check_shared_inputs` before anything is
    written (commands whose runs all share their data and model).
    """
    if backend not in BACKENDS:
        raise PeftlabError(f"unknown sweep backend '{backend}'; choose {' or '.join(BACKENDS)}")
    if ray_address and backend != "ray":
        raise PeftlabError("--ray-address needs --backend ray")
    if force and backend != "local":
        raise PeftlabError("--force re-trains finished runs on the local backend only; drop --force or use "
                           "--backend local")
    if spec.search == "asha" and backend != "ray" and not dry_run:
        raise PeftlabError("search: asha needs the ray backend (Ray Tune's ASHA scheduler stops trials early); "
                           "pass --backend ray, or use search: grid to train every run to the end")
    runs = expand(spec, out) if runs is None else list(runs)  # every grid point validated before anything runs
    asha = None
    if spec.search == "asha":
        from peftlab.sweep.spec import check_asha

        asha = check_asha(spec, runs)
    sweep_dir = sweep_dir_for(spec, out) if sweep_dir is None else Path(sweep_dir)
    stopped = stopped_before(spec, sweep_dir)
    states = [run_state(r, stopped) for r in runs]
    if check_inputs and not dry_run:  # before the plan is printed: a missing data dir or model is the one line
        check_shared_inputs(runs)
    for line in plan_lines(spec, runs, states):
        echo(line)
    if dry_run:
        echo("dry run: nothing trained, nothing written")
        return None
    if backend == "ray":
        from peftlab.sweep.ray_backend import require_ray

        require_ray()  # a missing extra fails before any run starts
    # ASHA's decision from an earlier run of this sweep stands (see module docstring)
    carried = {str(r.run_dir): {"status": STOPPED_EARLY, "error": None, "seconds": 0.0}
               for r, state in zip(runs, states) if state == "stopped"}
    todo = [r for r, state in zip(runs, states) if state != "stopped"]

    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    outcomes: dict[str, dict] = dict(carried)
    extra: dict[str, Any] = {"asha": asha} if asha else {}
    complete = False
    try:
        if backend == "local":
            from peftlab.sweep.local import run_local

            outcomes.update(run_local(todo, spec.resources, fail_fast=fail_fast, echo=echo, isolate=isolate,
                                      force=force))
        else:
            from peftlab.sweep.ray_backend import run_ray

            done, ray_extra = run_ray(todo, spec.resources, sweep_dir, fail_fast=fail_fast, address=ray_address,
                                      echo=echo, asha=asha, isolate=isolate)
            outcomes.update(done)
            extra.update(ray_extra)
        complete = all(str(r.run_dir) in outcomes for r in runs)
    finally:
        write_results(spec, runs, states, outcomes, sweep_dir, backend=backend, started=started,
                      seconds=time.perf_counter() - t0, complete=complete, extra=extra)
    failures = [o for o in outcomes.values() if o["status"] == "failed"]
    n_stopped = sum(o["status"] == STOPPED_EARLY for o in outcomes.values())
    stopped_text = f", {n_stopped} stopped early by ASHA" if asha else ""
    echo(f"sweep {spec.name}: {sum(o['status'] in ('finished', 'skipped') for o in outcomes.values())} of "
         f"{len(runs)} runs finished, {len(failures)} failed{stopped_text} -> {sweep_dir / SWEEP_CSV}")
    return sweep_dir


def read_outcomes(sweep_dir: Path) -> dict[str, float | None]:
    """{run_dir: seconds the sweep spent on it} from a written sweep.json (0 for a skipped run)."""
    from peftlab.io import read_json

    return {r["run_dir"]: r.get("seconds") for r in read_json(sweep_dir / SWEEP_JSON).get("runs", [])}


def raise_for_failures(sweep_dir: Path, what: str) -> None:
    """For commands that need every run (study, bench): one PeftlabError line when a run failed (the run's own
    error when it is the only one), after the sweep recorded all of them."""
    from peftlab.io import read_json

    meta = read_json(sweep_dir / SWEEP_JSON)
    failures = meta.get("failures") or []
    if not failures:
        if not meta.get("complete"):
            raise PeftlabError(f"{what}: the sweep stopped before every run finished; re-run the same command "
                               f"(finished runs are skipped)")
        return
    if len(failures) == 1 and meta.get("n_runs") == 1:
        raise PeftlabError(failures[0]["error"] or f"{what}: the run failed")
    first = failures[0]
    raise PeftlabError(f"{what}: {len(failures)} of {meta.get('n_runs')} runs failed (first, {first['run_dir']}: "
                       f"{first['error']}); all in {sweep_dir / SWEEP_JSON}; fix and re-run (finished runs are "
                       f"skipped)")


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
        if "epoch" in outcome:  # stopped early by ASHA: where, and on what dev score (no final_metrics.json)
            row["stopped_epoch"] = outcome["epoch"]
            row["stopped_score"] = next((v for k, v in outcome.items() if k.startswith("dev_")), None)
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
        "counts": {s: statuses.count(s) for s in STATUSES},
        "failures": [{"run_dir": r["run_dir"], "axes": run.axes, "error": r["error"]}
                     for run, r in zip(runs, rows) if r["status"] == "failed"],
        "stopped_early": [r["run_dir"] for r in rows if r["status"] == STOPPED_EARLY],
        "runs": [{"run_dir": str(run.run_dir), "axes": run.axes, "also": run.also, "status": r["status"],
                  "seconds": (outcomes.get(str(run.run_dir)) or {}).get("seconds")} for run, r in zip(runs, rows)],
        **(extra or {}),
    })
