"""`measure_run`: every per-head measurement of one finished run, step by step, resumable.

Steps, always in this order (a subset can be asked for with `steps=`):

    subset           eval_subset.json          the fixed eval subset (heads/subset.py)
    importance_pre   importance_pre.jsonl      I ± SE on θ0 (probe or init classifier, heads/probe.py)
                     + importance_pre_per_example.npy  (d_i of every head, exact sweeps)
    gradfisher_pre   gradfisher_pre.jsonl      G, F ± SE on θ0 (heads/plasticity.py), with the
                                               `plasticity_classifier` ("init" default, or "probe")
    update           update.jsonl (+ update_meta.json)   U, Urel from method.delta_weights (heads/update.py)
    importance_post  importance_post.jsonl (+ _per_example.npy)   I ± SE on θ1

plus `importance_taylor_vs_exact.json` (heads/taylor.py) when `importance="both"`, the probe files
(`heads.probe.PROBE_FILES`) when a probe classifier is used, and `measure_manifest.json`.

This module only orchestrates: what a step computes lives in heads/, and every decision about
files — the manifest, the fingerprint that decides skip and sibling reuse, resuming a killed sweep —
lives in `peftlab.bookkeeping` (see its docstring).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from peftlab.bookkeeping import STEPS, Hashes, Manifest, PartialSweep, StepTimer, copy_files, find_sibling, \
    is_finished, step_fingerprint
from peftlab.errors import PeftlabError
from peftlab.runs import check_finite_weights, load_run_model

IMPORTANCE_CHOICES = ("exact", "taylor", "both")
IMPL_CHOICES = ("fast", "naive")
CLASSIFIER_CHOICES = ("probe", "init")
TAYLOR_VS_EXACT_FILE = "importance_taylor_vs_exact.json"
GRADFISHER_FILE = "gradfisher_pre.jsonl"
IMPORTANCE_KEYS = ("layer", "head", "I", "I_se", "I_ci_low", "I_ci_high", "loss_base", "loss_ablate", "metric_name",
                   "metric_base", "metric_ablate", "n_examples", "theta0", "impl", "dL_dgate", "taylor")
# Copied from probe.json onto pre rows measured with the probe classifier (null when probe.json lacks them).
PROBE_ROW_FIELDS = {"probe_heldout_loss": "heldout_loss", "probe_heldout_metric": "heldout_metric",
                    "probe_chance_metric": "chance_metric", "probe_better_than_chance": "better_than_chance"}
GRADFISHER_KEYS = ("layer", "head", "G", "G_se", "F", "F_se", "n_examples", "batch_size", "per", "theta0",
                   "plasticity_classifier")


def importance_file(phase: str) -> str:
    return f"importance_{phase}.jsonl"


def partial_file(phase: str) -> str:
    return f"importance_{phase}.partial.jsonl"


def per_example_file(phase: str) -> str:
    return f"importance_{phase}_per_example.npy"


def probe_files() -> tuple[str, ...]:
    """The files the probe writes (and sibling reuse copies): `heads.probe.PROBE_FILES`."""
    from peftlab.heads.probe import PROBE_FILES

    return tuple(PROBE_FILES)


def step_outputs(step: str, importance: str) -> tuple[str, ...]:
    """Files a finished step leaves in the run dir (what skip checks and reuse copies)."""
    if step == "subset":
        return ("eval_subset.json",)
    if step in ("importance_pre", "importance_post"):
        phase = step.split("_")[1]
        exact = (per_example_file(phase),) if importance != "taylor" else ()
        return (importance_file(phase), *exact)
    if step == "gradfisher_pre":
        return (GRADFISHER_FILE,)
    return ("update.jsonl", "update_meta.json")


def parse_steps(steps: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Requested step names, validated, in pipeline order; None/"" = all steps."""
    if steps is None or steps == "" or steps == []:
        return list(STEPS)
    items = steps.split(",") if isinstance(steps, str) else [s for item in steps for s in str(item).split(",")]
    names = [s.strip().lower().replace("-", "_") for s in items if s.strip()]
    bad = [n for n in names if n not in STEPS]
    if bad:
        raise PeftlabError(f"unknown step {', '.join(repr(b) for b in bad)}; valid steps: {', '.join(STEPS)}")
    return [s for s in STEPS if s in names]


def _choice(value: str, choices: tuple[str, ...], option: str) -> str:
    value = str(value).strip().lower()
    if value not in choices:
        raise PeftlabError(f"{option} must be one of {', '.join(choices)}, got '{value}'")
    return value


def check_architecture(run_dir: Path) -> str:
    """The run's HF model_type, or a PeftlabError when peftlab has no ArchSpec for it (before any load)."""
    from peftlab.arch import spec_for_model_type
    from peftlab.io import read_json

    config_path = run_dir / "ckpt_init" / "config.json"
    if not config_path.is_file():
        raise PeftlabError(f"run '{run_dir}' has no ckpt_init/config.json; re-run its training with --force")
    model_type = read_json(config_path).get("model_type", "?")
    spec_for_model_type(model_type)  # PeftlabError naming the supported model types
    return model_type


class Measurement:
    """One `measure_run` call: options, the run's files, lazily loaded models and batches."""

    def __init__(self, run_dir: Path, options: dict[str, Any], force: bool, console=None, progress: bool = True):
        from peftlab.runs import read_run_info

        self.run_dir = run_dir
        self.info = read_run_info(run_dir)  # "not a run directory" errors
        if not self.info.finished:
            raise PeftlabError(
                f"run '{run_dir}' has not finished training (no finished final_metrics.json); "
                f"finish it first with: {self.info.train_command()}"
            )
        check_architecture(run_dir)
        if options["batch_size"] < 1:
            raise PeftlabError(f"--batch-size must be >= 1, got {options['batch_size']}")
        if options["subset_size"] < 1:
            raise PeftlabError(f"--subset-size must be >= 1, got {options['subset_size']}")
        self.options = options
        self.importance, self.impl, self.theta0 = options["importance"], options["impl"], options["theta0"]
        self.plasticity_classifier = options["plasticity_classifier"]
        self.batch_size = options["batch_size"]
        self.force, self.console, self.progress = force, console, progress
        self.config = dict(self.info.run_config.get("config", {}))
        self.hashes = Hashes(run_dir)
        self.manifest = Manifest(run_dir)
        self.timer = StepTimer()
        self._models: dict[str, Any] = {}
        self._batches = None
        self.order: list[int] | None = None  # batch position -> subset position
        self.probe_info: dict[str, Any] | None = None

    def say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)

    def settings(self, step: str) -> dict[str, Any]:
        """The step's fingerprint (peftlab.bookkeeping.step_fingerprint)."""
        options = dict(self.options)
        if step in ("importance_pre", "gradfisher_pre") and "probe" in (self.theta0, self.plasticity_classifier):
            from peftlab.heads.probe import probe_settings
            from peftlab.heads.subset import read_subset

            settings = probe_settings(read_subset(self.run_dir))
            options["probe"] = {k: v for k, v in settings.items() if k != "modules"}
        return step_fingerprint(self.run_dir, step, options, self.info.run_config, self.hashes)

    # ------------------------------------------------------------------ shared inputs

    def theta0_model(self, classifier: str):
        """θ0 in eval mode with the `classifier` "probe" (trained or reused, heads/probe.py) or "init"."""
        if classifier not in self._models:
            with self.timer.part("load"):
                model, tokenizer, _ = load_run_model(self.run_dir, "init")
            check_finite_weights(model, str(self.run_dir / "ckpt_init"))
            self._models.setdefault("tokenizer", tokenizer)
            if classifier == "probe":
                from peftlab.heads.batches import progress_bar
                from peftlab.heads.probe import PROBE_EXAMPLES, ensure_probe, probe_summary
                from peftlab.heads.subset import read_subset

                subset = read_subset(self.run_dir)
                n_batches = -(-PROBE_EXAMPLES // self.batch_size)  # ceil
                with self.timer.part("probe"), progress_bar(n_batches, "θ0 probe features", self.progress) as advance:
                    info = ensure_probe(self.run_dir, model, tokenizer, subset, self.batch_size, force=self.force,
                                        progress=lambda: advance(1))
                self.probe_info = info
                self.say(f"  θ0 probe: {probe_summary(info)}")
            self._models[classifier] = model.eval()
        return self._models[classifier]

    def theta1_model(self):
        if "final" not in self._models:
            with self.timer.part("load"):
                model, tokenizer, _ = load_run_model(self.run_dir, "final")
            check_finite_weights(model, str(self.run_dir / "ckpt_final"))
            self._models.setdefault("tokenizer", tokenizer)
            self._models["final"] = model.eval()
        return self._models["final"]

    def tokenizer(self):
        if "tokenizer" not in self._models:
            from peftlab.models import load_tokenizer

            self._models["tokenizer"] = load_tokenizer(str(self.run_dir / "ckpt_init"))
        return self._models["tokenizer"]

    def batches(self):
        if self._batches is None:
            from peftlab.heads.subset import subset_batches

            self._batches, self.order = subset_batches(self.run_dir, self.tokenizer(), self.batch_size,
                                                       with_order=True)
        return self._batches

    def in_subset_order(self, values):
        """A per-example vector in batch order (length-sorted, see heads/subset.py) in the order of the
        subset's `indices`: out[order[j]] = values[j]."""
        import numpy as np

        if values is None:
            return None
        out = np.empty_like(values)
        out[np.asarray(self.order)] = values  # [N] batch order -> [N] order of eval_subset.json indices
        return out

    def probe_row_fields(self) -> dict[str, Any]:
        """The probe's held-out quality for pre rows (theta0 "probe"); values null when probe.json lacks them."""
        from peftlab.io import read_json

        info = self.probe_info
        path = self.run_dir / "probe.json"
        if info is None and path.is_file():
            info = read_json(path)
        info = info or {}
        return {field: info.get(key) for field, key in PROBE_ROW_FIELDS.items()}


# ---------------------------------------------------------------------- steps


def _ordered(row: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The row with contract keys first (in contract order), then any extra keys."""
    return {**{k: row.get(k) for k in keys}, **{k: v for k, v in row.items() if k not in keys}}


def step_subset(m: Measurement) -> None:
    from peftlab.heads.subset import make_subset, write_subset

    subset = make_subset(m.info.task, m.options["subset_size"], m.options["subset_seed"], m.options["subset_split"],
                         m.config.get("data_dir"))
    write_subset(m.run_dir, subset)
    m.say(f"  subset: {subset['size']} rows of {subset['task']} {subset['split']} (seed {subset['seed']})")


def step_importance(m: Measurement, phase: str, settings: dict[str, Any]) -> None:
    """importance_pre / importance_post: exact (resumable, with d_i), taylor, or both (+ taylor_vs_exact)."""
    from peftlab.arch import head_shape
    from peftlab.heads.importance import exact_importance, taylor_importance
    from peftlab.io import write_jsonl_atomic

    model = m.theta0_model(m.theta0) if phase == "pre" else m.theta1_model()
    extra = {"theta0": m.theta0 if phase == "pre" else None}
    if phase == "pre" and m.theta0 == "probe":
        extra.update(m.probe_row_fields())
    task = m.info.task
    final, npy = m.run_dir / importance_file(phase), m.run_dir / per_example_file(phase)

    def taylor_rows() -> list[dict[str, Any]]:
        with m.timer.part("taylor"):
            return taylor_importance(model, m.batches(), progress=m.progress, task=task)

    if m.importance == "taylor":
        rows = [_ordered({**row, **extra}, IMPORTANCE_KEYS) for row in taylor_rows()]
        write_jsonl_atomic(final, rows)
        npy.unlink(missing_ok=True)  # an earlier exact sweep's d_i do not belong to these rows
        _after_importance(m, phase, rows)
        return

    sweep = PartialSweep(m.run_dir / partial_file(phase), {"kind": "header", "step": f"importance_{phase}",
                                                           "settings": settings})
    done_rows = sweep.resume(force=m.force)
    if done_rows is None:
        gradient = None
        if m.importance == "both":
            gradient = [[row["layer"], row["head"], row["dL_dgate"]] for row in taylor_rows()]
        sweep.start({"dL_dgate": gradient})
        done_rows = []
    else:
        m.say(f"  resuming importance_{phase}: {len(done_rows)} heads already measured")
    gradient_of = {(layer, head): value for layer, head, value in ((sweep.header.get("extra") or {}).get("dL_dgate")
                                                                   or [])}

    def on_head(result) -> None:
        row = dict(result.row)
        dL_dgate = gradient_of.get((row["layer"], row["head"]))
        row.update(extra, dL_dgate=dL_dgate, taylor=None if dL_dgate is None else abs(dL_dgate))
        sweep.append(_ordered(row, IMPORTANCE_KEYS), m.in_subset_order(result.d))

    with m.timer.part("exact"):
        exact_importance(model, m.batches(), m.impl, done=[(r["layer"], r["head"]) for r in done_rows],
                         on_head=on_head, progress=m.progress, task=task)
    shape = head_shape(model)
    heads = [(layer, head) for layer in range(shape.n_layers) for head in range(shape.n_heads)]
    rows = sweep.finish(final, npy, heads)
    _after_importance(m, phase, rows)


def _after_importance(m: Measurement, phase: str, rows: list[dict[str, Any]]) -> None:
    """Record the probe's subset score (pre) and the Taylor-vs-exact comparison ("both"; else drop its phase)."""
    from peftlab.heads.taylor import taylor_vs_exact
    from peftlab.io import atomic_write_json, read_json

    if phase == "pre" and m.theta0 == "probe":
        from peftlab.heads import probe

        record = getattr(probe, "record_subset_score", None)
        if record is not None:
            record(m.run_dir, rows[0]["loss_base"], rows[0]["metric_name"], rows[0]["metric_base"])
    path = m.run_dir / TAYLOR_VS_EXACT_FILE
    report = read_json(path) if path.is_file() else {}
    if m.importance == "both":
        report[phase] = taylor_vs_exact(rows)
    else:
        report.pop(phase, None)  # an earlier comparison no longer describes this phase's rows
    report = {k: report[k] for k in ("pre", "post") if k in report}
    if report:
        atomic_write_json(path, report)
    elif path.is_file():
        path.unlink()


def step_gradfisher(m: Measurement) -> None:
    from peftlab.heads.plasticity import gradfisher
    from peftlab.io import write_jsonl_atomic

    model = m.theta0_model(m.plasticity_classifier)
    with m.timer.part("gradfisher"):
        rows = gradfisher(model, m.batches(), per="example", progress=m.progress)
    extra = {"theta0": m.theta0, "plasticity_classifier": m.plasticity_classifier}
    write_jsonl_atomic(m.run_dir / GRADFISHER_FILE, [_ordered({**r, **extra}, GRADFISHER_KEYS) for r in rows])


def step_update(m: Measurement) -> None:
    from peftlab.heads.update import (UPDATE_FILE, UPDATE_META_FILE, measure_update, undefined_meta,
                                      update_undefined_reason)
    from peftlab.io import atomic_write_json, read_json, write_jsonl_atomic

    method = read_json(m.run_dir / "run_config.json")["method"]
    (m.run_dir / UPDATE_META_FILE).unlink(missing_ok=True)  # decide afresh from the run, not from an old meta
    reason = update_undefined_reason(m.run_dir)  # adapters, BitFit, prompt/LN tuning, IA3 on FFN only, ...
    if reason:
        m.say(f"  update: not applicable for {method} ({reason}); update.jsonl not written, U left empty")
        (m.run_dir / UPDATE_FILE).unlink(missing_ok=True)
        atomic_write_json(m.run_dir / UPDATE_META_FILE, undefined_meta(method, reason))
        return
    rows, meta = measure_update(m.run_dir)
    atomic_write_json(m.run_dir / UPDATE_META_FILE, meta)
    write_jsonl_atomic(m.run_dir / UPDATE_FILE, rows)


def _reuse(m: Measurement, step: str, settings: dict[str, Any]) -> str | None:
    """Copy a θ0 step's outputs (and probe files) from a sibling run with the same fingerprint."""
    if step not in ("importance_pre", "gradfisher_pre") or m.force:
        return None
    uses_probe = (m.theta0 if step == "importance_pre" else m.plasticity_classifier) == "probe"
    probe = probe_files() if uses_probe else ()
    files = step_outputs(step, m.importance) + probe
    sibling = find_sibling(m.run_dir, step, settings, files)
    if sibling is None:
        return None
    copy_files(sibling, m.run_dir, files, keep_existing=probe)  # our own probe: same θ0 and settings, same head
    if step == "importance_pre":
        from peftlab.io import read_jsonl

        _after_importance(m, "pre", read_jsonl(m.run_dir / importance_file("pre")))
    return str(sibling)


# step name -> fn(measurement, fingerprint); only the sweeps store the fingerprint (in their partial file).
STEP_FUNCTIONS = {
    "subset": lambda m, settings: step_subset(m),
    "importance_pre": lambda m, settings: step_importance(m, "pre", settings),
    "gradfisher_pre": lambda m, settings: step_gradfisher(m),
    "update": lambda m, settings: step_update(m),
    "importance_post": lambda m, settings: step_importance(m, "post", settings),
}


def run_step(m: Measurement, step: str) -> None:
    settings = m.settings(step)
    outputs = [m.run_dir / f for f in step_outputs(step, m.importance)]
    if not m.force and is_finished(m.manifest, step, settings, outputs):
        m.say(f"[dim]{step}: finished earlier with the same settings, skipped[/dim]")
        return
    m.say(f"[bold]{step}[/bold]")
    started = time.perf_counter()
    m.timer = StepTimer()
    m.manifest.start(step, settings)
    reused = _reuse(m, step, settings)
    if reused:
        m.say(f"  reused from {reused} (same θ0 files, tokenizer, subset and settings)")
    else:
        STEP_FUNCTIONS[step](m, settings)
    m.manifest.finish(step, settings, time.perf_counter() - started, m.timer.parts, reused)


def measure_run(
    run_dir: str | os.PathLike,
    steps: str | list[str] | None = None,
    importance: str = "exact",
    impl: str = "fast",
    theta0: str = "probe",
    subset_split: str | None = None,
    subset_size: int = 1024,
    subset_seed: int = 999,
    batch_size: int = 32,
    force: bool = False,
    console=None,
    progress: bool = True,
    plasticity_classifier: str = "init",
) -> dict[str, Any]:
    """Run the requested measurement steps on a finished run; returns `measure_manifest.json` as a dict.

    importance: "exact" (ablation), "taylor" (∂L/∂gate only) or "both"; impl: exact sweep "fast" | "naive";
    theta0: the θ0 classifier of importance_pre, "probe" (trained on frozen θ0, heads/probe.py) | "init"
    (the seeded classifier training starts from); plasticity_classifier: the same choice for gradfisher_pre
    (default "init": the gradients training actually starts from).
    """
    import peftlab

    step_names = parse_steps(steps)
    options = {
        "importance": _choice(importance, IMPORTANCE_CHOICES, "--importance"),
        "impl": _choice(impl, IMPL_CHOICES, "--impl"),
        "theta0": _choice(theta0, CLASSIFIER_CHOICES, "--theta0-classifier"),
        "plasticity_classifier": _choice(plasticity_classifier, CLASSIFIER_CHOICES, "--plasticity-classifier"),
        "subset_split": subset_split,
        "subset_size": int(subset_size),
        "subset_seed": int(subset_seed),
        "batch_size": int(batch_size),
        "probe": None,
    }
    m = Measurement(Path(run_dir), options, bool(force), console, progress)
    m.manifest.update(peftlab_version=peftlab.__version__, theta0_classifier=options["theta0"],
                      plasticity_classifier=options["plasticity_classifier"])
    for step in step_names:
        run_step(m, step)
    return json.loads(json.dumps(m.manifest.data))
