"""Ray backend: each run is one Ray Tune trial of a function trainable that calls `train_run`.

Why Tune and not `Trainer.hyperparameter_search(backend="ray")`: that path needs `model_init` and the
legacy `tune.run`; a Tuner over our own train function keeps one training loop for every backend.

Scheduling is FIFO over the grid with `max_concurrent` trials at a time and per-trial resources
from the spec (`cpus_per_run`, `gpus_per_run`). A grid sweep has no trial scheduler, hence no early
stopping: a sweep over methods × ranks × seeds is a factorial comparison, and stopping the runs that look
worse early would bias exactly the comparison being made (slow starters are dropped, so the surviving
cells are no longer comparable). `search: asha` (a learning-rate search only; spec.py refuses it on
any other axis) adds Ray Tune's ASHAScheduler: each trial reports its dev metric at every epoch's
evaluation (`TuneReport`, a TrainerCallback), and ASHA stops the trials below the top 1/reduction_factor
at each rung; such a run is recorded as "stopped_early" (its run dir stays unfinished).

Local mode starts a private Ray instance sized to the sweep; `--ray-address` joins an existing
cluster, where every node must see the same `--out` (shared storage), which is checked up front.
Ray must be installed (`pip install "peftlab[ray]"`), and on a cluster peftlab on every node.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from peftlab.errors import PeftlabError
from peftlab.sweep.errors import one_line_error
from peftlab.sweep.spec import Resources, SweepRun

# Ray puts unix sockets at <temp_dir>/session_<date>_<time>_<us>_<pid>/sockets/plasma_store; an AF_UNIX path
# may hold at most ~107 bytes, and that suffix is ~63, so a longer temp dir fails deep inside ray.init.
MAX_TEMP_DIR = 40
INSTALL_HINT = 'pip install "peftlab[ray]"'


def require_ray():
    """Import ray (with Tune) or fail with one line naming the extra to install."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reporting (and no network attempt)
    # the legacy reporter honours verbose=0; the new one prints a config box and tables regardless
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    try:
        import ray
        from ray import tune  # noqa: F401 - Tune needs pyarrow etc.: check the whole extra
    except ImportError as err:
        raise PeftlabError(f"the ray backend needs Ray Tune, which is not installed ({err}); "
                           f"run: {INSTALL_HINT}") from None
    return ray


def ray_temp_dir(sweep_dir: Path) -> tuple[Path, str | None]:
    """`<sweep_dir>/ray`, or a short `/tmp/peftlab-ray-<hash>` when that path is too long for Ray's sockets
    (returns the dir and why it is not under the sweep dir)."""
    preferred = (sweep_dir / "ray").resolve()
    if len(str(preferred)) <= MAX_TEMP_DIR:
        return preferred, None
    digest = hashlib.sha1(str(preferred).encode()).hexdigest()[:8]
    short = Path(tempfile.gettempdir()) / f"peftlab-ray-{digest}"
    return short, (f"'{preferred}' is longer than {MAX_TEMP_DIR} characters; Ray's unix socket paths under it "
                   f"would exceed the ~107-byte limit, so Ray's temp dir is '{short}'")


def absolute_config(cfg):
    """The config with every path absolute: a trial may run in another working directory or on another node."""
    import dataclasses

    from peftlab.tasks.loading import resolve_data_dir

    model = cfg.model
    if model and Path(model).expanduser().exists():
        model = str(Path(model).expanduser().resolve())
    return dataclasses.replace(cfg, out=str(Path(cfg.out).resolve()), model=model,
                               data_dir=str(Path(resolve_data_dir(cfg.data_dir)).resolve()))


def check_shared_storage(ray, directory: Path) -> list[str]:
    """Write a probe file into `directory` and check from every alive node that it is visible there.

    On a cluster every trial writes its run directory under `--out` and the driver reads them back,
    so `--out` must be storage every node shares (NFS, a cluster file system). Raises on a node that
    cannot see the probe; returns the node addresses checked.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    directory.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{time.time_ns()}"
    probe = directory / f".shared-probe-{token}"
    probe.write_text(token)

    @ray.remote(num_cpus=0)
    def sees(path: str, expected: str) -> bool:
        try:
            return Path(path).read_text() == expected
        except OSError:
            return False

    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        checks = [sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                  .remote(str(probe), token) for n in nodes]
        for node, ok in zip(nodes, ray.get(checks)):
            if not ok:
                raise PeftlabError(
                    f"node {node.get('NodeManagerAddress')} cannot see '{directory}'; on a Ray cluster --out must "
                    f"be shared storage mounted at the same path on every node (e.g. NFS)")
        return [n.get("NodeManagerAddress") for n in nodes]
    finally:
        probe.unlink(missing_ok=True)


def tune_report_callback(metric: str, main_metric: str):
    """A TrainerCallback reporting `{epoch, <metric>, step}` to Tune at each evaluation during training (not at
    the last optimizer step, whose run is as good as finished, nor the final re-evaluation of it). When ASHA
    stops the trial, Tune ends it inside `tune.report` (SystemExit in the trial's thread), which unwinds
    `train_run` like an interruption."""
    from ray import tune
    from transformers import TrainerCallback

    class TuneReport(TrainerCallback):
        def __init__(self):
            self.last_step = -1

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            value = (metrics or {}).get(f"eval_{main_metric}")
            if value is None or state.global_step <= self.last_step:
                return
            if state.max_steps and state.global_step >= state.max_steps:
                return  # the last evaluation: training is over, stopping now would only throw the run away
            self.last_step = state.global_step
            tune.report({"epoch": int(round(state.epoch or 0)), metric: float(value), "step": state.global_step})

    return TuneReport()


def _trial(config: dict, cfgs: list[dict], cpus: float, fail_fast: bool, asha: dict | None = None) -> None:
    """One Tune trial = one `train_run` (runs in a Ray worker process)."""
    import torch
    from ray import tune

    from peftlab.config import config_from_dict
    from peftlab.sweep.errors import one_line_error as _line
    from peftlab.train import train_run

    torch.set_num_threads(max(1, int(cpus)))  # Ray sets OMP_NUM_THREADS to the trial's CPUs; torch likewise
    callbacks = [tune_report_callback(asha["metric"], asha["main_metric"])] if asha else []
    # with a scheduler, Tune requires its metric in every result with more than one key: None = nothing to rank
    last = {asha["metric"]: None} if asha else {}
    try:
        train_run(config_from_dict(cfgs[config["index"]]), callbacks=callbacks)
    except Exception as err:  # noqa: BLE001 - reported as one line; re-raised only to stop a fail-fast sweep
        tune.report({"failed": 1, "error": _line(err), **last})
        if fail_fast:
            raise
        return
    tune.report({"failed": 0, "error": "", **last})


def _progress_callback(tune, runs: list[SweepRun], echo, total: int):
    """A Tune callback printing one line per finished trial (worker output is not forwarded)."""

    class Progress(tune.Callback):
        def __init__(self):
            self.n_done = 0

        def _line(self, trial, what: str) -> None:
            self.n_done += 1
            index = (trial.config or {}).get("index")
            label = runs[index].label if isinstance(index, int) else trial.trial_id
            result = trial.last_result or {}
            status = f"failed: {result.get('error')}" if result.get("failed") == 1 else what
            if what == "done" and "failed" not in result:  # ended without its final report: ASHA stopped it
                status = f"stopped early by ASHA after epoch {result.get('epoch')}"
            echo(f"[{self.n_done}/{total}] {label}: {status}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._line(trial, "done")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._line(trial, "failed")

    return Progress()


def run_ray(runs: list[SweepRun], resources: Resources, sweep_dir: Path, fail_fast: bool = False,
            address: str | None = None, echo=print, asha: dict | None = None,
            isolate: bool = False) -> tuple[dict[str, dict], dict[str, Any]]:
    """Run the grid as Tune trials; returns ({run_dir: outcome}, extra fields for sweep.json).

    `asha`: the scheduler settings from `spec.check_asha` (None = grid, no scheduler). `isolate`: no actor
    reuse, so every trial runs in a fresh worker process (per-run peak memory)."""
    ray = require_ray()
    from ray import tune

    from peftlab.runs import is_finished

    # finished runs are not sent to Ray at all (a trial would only start a worker to find them done)
    outcomes: dict[str, dict] = {str(r.run_dir): {"status": "skipped", "error": None, "seconds": 0.0}
                                 for r in runs if is_finished(r.run_dir)}
    todo = [i for i, r in enumerate(runs) if str(r.run_dir) not in outcomes]
    extra: dict[str, Any] = {"ray": {"address": address, "trials": len(todo)}}
    if not todo:
        return outcomes, extra
    started_here = not ray.is_initialized()
    t0 = time.perf_counter()
    if started_here:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            temp_dir, why = ray_temp_dir(sweep_dir)
            extra["ray"].update({"temp_dir": str(temp_dir), "temp_dir_note": why})
            n_parallel = min(resources.max_concurrent, len(todo))
            ray.init(num_cpus=max(1, int(resources.cpus_per_run * n_parallel + 0.999)),
                     num_gpus=int(resources.gpus_per_run * n_parallel + 0.999) if resources.gpus_per_run else None,
                     include_dashboard=False, _temp_dir=str(temp_dir), log_to_driver=False)
    extra["ray"]["init_s"] = round(time.perf_counter() - t0, 3)
    try:
        if address:
            extra["ray"]["nodes_checked"] = check_shared_storage(ray, sweep_dir)
        cfgs = [absolute_config(r.cfg).to_dict() for r in runs]
        per_trial = {"cpu": resources.cpus_per_run}
        if resources.gpus_per_run:
            per_trial["gpu"] = resources.gpus_per_run
        trainable = tune.with_resources(
            tune.with_parameters(_trial, cfgs=cfgs, cpus=resources.cpus_per_run, fail_fast=fail_fast, asha=asha),
            per_trial)
        scheduler = None
        if asha:
            from ray.tune.schedulers import ASHAScheduler

            scheduler = ASHAScheduler(time_attr=asha["time_attr"], metric=asha["metric"], mode=asha["mode"],
                                      max_t=asha["max_t"], grace_period=asha["grace_period"],
                                      reduction_factor=asha["reduction_factor"])
        tuner = tune.Tuner(
            trainable,
            # grid_search over the run index: trials start in grid order (FIFO); a grid has no scheduler and
            # so no early stopping (module docstring); `search: asha` adds the ASHA scheduler
            param_space={"index": tune.grid_search(todo)},
            # reuse_actors: a finished trial's worker process takes the next one, so torch/transformers are
            # imported once per concurrent slot rather than once per run (train_run sets its own seeds and state)
            tune_config=tune.TuneConfig(max_concurrent_trials=resources.max_concurrent, reuse_actors=not isolate,
                                        scheduler=scheduler),
            run_config=tune.RunConfig(name="tune", storage_path=str(sweep_dir.resolve()), verbose=0,
                                      callbacks=[_progress_callback(tune, runs, echo, len(todo))],
                                      failure_config=tune.FailureConfig(fail_fast=fail_fast)),
        )
        t_fit = time.perf_counter()
        try:
            results = tuner.fit()
        except Exception as err:  # noqa: BLE001 - fail-fast stops the experiment by raising; keep what ran
            extra["ray"]["stopped"] = one_line_error(err)
            results = tuner.get_results()
        extra["ray"]["fit_s"] = round(time.perf_counter() - t_fit, 3)
        for result in results:
            index = (result.config or {}).get("index")
            if index is None:
                continue
            key = str(runs[index].run_dir)
            metrics = result.metrics or {}
            if metrics.get("failed") == 1:
                outcomes[key] = {"status": "failed", "error": metrics.get("error"), "seconds": metrics.get("time_total_s")}
            elif result.error is not None:
                outcomes[key] = {"status": "failed", "error": one_line_error(result.error),
                                 "seconds": metrics.get("time_total_s")}
            elif metrics.get("failed") == 0:
                outcomes[key] = {"status": "finished", "error": None, "seconds": metrics.get("time_total_s")}
            elif asha and not is_finished(runs[index].run_dir):  # ended at an epoch report: ASHA stopped it
                outcomes[key] = {"status": "stopped_early", "error": None, "seconds": metrics.get("time_total_s"),
                                 "epoch": metrics.get("epoch"), asha["metric"]: metrics.get(asha["metric"])}
        return outcomes, extra
    finally:
        if started_here:
            ray.shutdown()
