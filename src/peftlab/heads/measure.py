"""`measure_run`: every per-head measurement of one finished run, step by step, resumable.

Steps, always in this order (a subset can be asked for with `steps=`):

    subset           eval_subset.json          the fixed eval subset (heads/subset.py)
    importance_pre   importance_pre.jsonl      I on θ0 (probe or init head, heads/probe.py)
    gradfisher_pre   gradfisher_pre.jsonl      G, F on the same θ0 (heads/plasticity.py)
    update           update.jsonl (+ update_meta.json)   U, Urel from method.delta_weights (heads/update.py)
    importance_post  importance_post.jsonl     I on θ1

plus `importance_taylor_vs_exact.json` (Spearman ρ, p of Taylor vs exact) when `importance="both"`,
`probe.json` / `probe_head.safetensors` with `theta0="probe"`, and `measure_manifest.json`
(`{"run_dir", "steps": {name: {"settings", "seconds", "finished"}}}`), rewritten atomically when a
step starts and when it finishes. A finished step whose settings are unchanged is skipped unless
`force`; settings include the sha256 of eval_subset.json, so a new subset re-runs what depends on it.

Resuming: an exact sweep appends each finished head's row to `importance_<phase>.partial.jsonl`
(first line: a header with the step settings and, for "both", the Taylor scores). A re-run with the
same settings keeps those rows and measures only the missing heads; the final file is written only
when every head is done (rows re-read from the partial file, sorted by (layer, head)), then the
partial file is removed. Rows hold no timing and floats are written at full `repr` precision, so a
resumed sweep's file is byte-identical to an uninterrupted one.

Reuse across methods: θ0 (ckpt_init) is the same for the FFT and LoRA runs of one model/task/seed.
Before measuring importance_pre / gradfisher_pre, sibling run dirs `<out>/*/<TASK>/*` are searched
for the same finished step with identical settings (these include the sha256 of the ckpt_init weight
files and of eval_subset.json); a match is copied (with its probe files) instead of recomputed, and
the manifest step records `reused_from`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from peftlab.errors import PeftlabError

STEPS = ("subset", "importance_pre", "gradfisher_pre", "update", "importance_post")
IMPORTANCE_CHOICES = ("exact", "taylor", "both")
IMPL_CHOICES = ("fast", "naive")
MANIFEST_FILE = "measure_manifest.json"
TAYLOR_VS_EXACT_FILE = "importance_taylor_vs_exact.json"
GRADFISHER_FILE = "gradfisher_pre.jsonl"
IMPORTANCE_KEYS = ("layer", "head", "I", "loss_base", "loss_ablate", "metric_name", "metric_base",
                   "metric_ablate", "n_examples", "theta0", "impl", "taylor")
GRADFISHER_KEYS = ("layer", "head", "G", "F", "n_examples", "batch_size", "per", "theta0")


def importance_file(phase: str) -> str:
    return f"importance_{phase}.jsonl"


def partial_file(phase: str) -> str:
    return f"importance_{phase}.partial.jsonl"


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


def file_sha256(*paths: Path) -> str:
    """sha256 over the bytes of `paths` (in the given order)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


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

    def __init__(self, run_dir: Path, importance: str, impl: str, theta0: str, subset_split: str | None,
                 subset_size: int, subset_seed: int, batch_size: int, force: bool, console=None,
                 progress: bool = True):
        from peftlab.runs import read_run_info

        self.run_dir = run_dir
        self.info = read_run_info(run_dir)  # "not a run directory" errors
        if not self.info.finished:
            raise PeftlabError(
                f"run '{run_dir}' has not finished training (no finished final_metrics.json); "
                f"finish it first with: {self.info.train_command()}"
            )
        check_architecture(run_dir)
        if batch_size < 1:
            raise PeftlabError(f"--batch-size must be >= 1, got {batch_size}")
        if subset_size < 1:
            raise PeftlabError(f"--subset-size must be >= 1, got {subset_size}")
        self.importance, self.impl, self.theta0 = importance, impl, theta0
        self.subset_split, self.subset_size, self.subset_seed = subset_split, subset_size, subset_seed
        self.batch_size, self.force, self.console, self.progress = batch_size, force, console, progress
        self.config = dict(self.info.run_config.get("config", {}))
        self._models: dict[str, Any] = {}
        self._batches = None
        self.manifest_path = run_dir / MANIFEST_FILE
        self.manifest = self._read_manifest()

    # ------------------------------------------------------------------ bookkeeping

    def say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)

    def _read_manifest(self) -> dict[str, Any]:
        from peftlab.io import read_json

        if self.manifest_path.is_file():
            try:
                manifest = read_json(self.manifest_path)
                if isinstance(manifest.get("steps"), dict):
                    return manifest
            except ValueError:
                pass  # unreadable: start a new one (every output is re-checked against its settings)
        return {"run_dir": str(self.run_dir), "steps": {}}

    def write_manifest(self) -> None:
        from peftlab.io import atomic_write_json

        ordered = {name: self.manifest["steps"][name] for name in STEPS if name in self.manifest["steps"]}
        self.manifest = {**self.manifest, "steps": ordered}
        atomic_write_json(self.manifest_path, self.manifest)

    def subset_sha(self) -> str:
        from peftlab.heads.subset import SUBSET_FILE

        path = self.run_dir / SUBSET_FILE
        if not path.is_file():
            raise PeftlabError(f"{path} does not exist; run `peftlab measure {self.run_dir} --steps subset` first")
        return file_sha256(path)

    def weights_sha(self, which: str = "ckpt_init") -> str:
        """sha256 of a checkpoint dir's weight files: identifies θ0 (ckpt_init) or θ1 (ckpt_final) cheaply."""
        files = sorted((self.run_dir / which).glob("*.safetensors")) or sorted((self.run_dir / which).glob("*.bin"))
        return file_sha256(*files) if files else ""

    def settings(self, step: str) -> dict[str, Any]:
        """What determines a step's output; a finished step with equal settings is skipped."""
        from peftlab.heads.probe import probe_settings

        if step == "subset":
            return {"split": self.subset_split, "size": self.subset_size, "seed": self.subset_seed}
        if step == "update":
            return {"method": self.info.method, "theta0_files_sha256": self.weights_sha("ckpt_init"),
                    "theta1_files_sha256": self.weights_sha("ckpt_final")}
        common = {"subset_sha256": self.subset_sha(), "batch_size": self.batch_size}
        if step == "importance_post":
            return {"importance": self.importance, "impl": None if self.importance == "taylor" else self.impl,
                    "theta1_files_sha256": self.weights_sha("ckpt_final"), **common}
        pre = {"theta0": self.theta0, "theta0_files_sha256": self.weights_sha("ckpt_init"), **common}
        if self.theta0 == "probe":
            from peftlab.heads.subset import read_subset

            pre["probe"] = {k: v for k, v in probe_settings(read_subset(self.run_dir)).items() if k != "modules"}
        if step == "gradfisher_pre":
            return pre
        return {"importance": self.importance, "impl": None if self.importance == "taylor" else self.impl, **pre}

    # ------------------------------------------------------------------ shared inputs

    def theta0_model(self):
        """θ0 in eval mode, with the probe head when theta0="probe" (trained or reused)."""
        if "init" not in self._models:
            from peftlab.runs import load_run_model

            model, tokenizer, _ = load_run_model(self.run_dir, "init")
            self._models["tokenizer"] = tokenizer
            if self.theta0 == "probe":
                from peftlab.heads.batches import progress_bar
                from peftlab.heads.probe import PROBE_EXAMPLES, ensure_probe, probe_summary
                from peftlab.heads.subset import read_subset

                subset = read_subset(self.run_dir)
                n_batches = -(-PROBE_EXAMPLES // self.batch_size)  # ceil
                with progress_bar(n_batches, "θ0 probe features", self.progress) as advance:
                    info = ensure_probe(self.run_dir, model, tokenizer, subset, self.batch_size, force=self.force,
                                        progress=lambda: advance(1))
                self.say(f"  θ0 probe: {probe_summary(info)}")
            self._models["init"] = model.eval()
        return self._models["init"]

    def theta1_model(self):
        if "final" not in self._models:
            from peftlab.runs import load_run_model

            model, tokenizer, _ = load_run_model(self.run_dir, "final")
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

            self._batches = subset_batches(self.run_dir, self.tokenizer(), self.batch_size)
        return self._batches

    def metric(self):
        """(name, fn(logits [N, C], labels [N]) -> float): the task's main metric."""
        from peftlab.tasks import get_task, metrics_from_logits

        spec = get_task(self.info.task)

        def main_metric(logits, labels) -> float:
            return float(metrics_from_logits(spec, logits, labels.numpy())[spec.main_metric])

        return spec.main_metric, main_metric


# ---------------------------------------------------------------------- steps


def _ordered(row: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The row with contract keys first (in contract order), then any extra keys."""
    return {**{k: row.get(k) for k in keys}, **{k: v for k, v in row.items() if k not in keys}}


def step_subset(m: Measurement) -> None:
    from peftlab.heads.subset import make_subset, write_subset

    subset = make_subset(m.info.task, m.subset_size, m.subset_seed, m.subset_split, m.config.get("data_dir"))
    write_subset(m.run_dir, subset)
    m.say(f"  subset: {subset['size']} rows of {subset['task']} {subset['split']} (seed {subset['seed']})")


def _resume_rows(partial: Path, header: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Head rows of a partial file whose header equals `header`; None when there is none to resume.

    The file is rewritten (atomically) with only its complete lines, so a line torn by a kill is never
    continued by the next append.
    """
    from peftlab.io import read_jsonl, write_jsonl_atomic

    if not partial.is_file():
        return None
    lines = read_jsonl(partial)
    same = bool(lines) and {k: v for k, v in lines[0].items() if k != "taylor"} == header
    if not same:
        partial.unlink()
        return None
    write_jsonl_atomic(partial, lines)
    return lines[1:]


def step_importance(m: Measurement, phase: str, settings: dict[str, Any]) -> None:
    """importance_pre / importance_post: exact (resumable), taylor, or both (+ Spearman ρ)."""
    from peftlab.arch import head_shape
    from peftlab.heads.importance import exact_importance, taylor_importance
    from peftlab.io import append_jsonl, read_jsonl, write_jsonl_atomic

    model = m.theta0_model() if phase == "pre" else m.theta1_model()
    theta0 = m.theta0 if phase == "pre" else None
    metric_name, metric_fn = m.metric()
    final, partial = m.run_dir / importance_file(phase), m.run_dir / partial_file(phase)
    if m.force and partial.is_file():
        partial.unlink()

    if m.importance == "taylor":
        rows = taylor_importance(model, m.batches(), metric_fn, metric_name, progress=m.progress)
        # impl is null for Taylor-only rows (CONTRACTS.md: "fast"|"naive"|null); I = taylor there.
        rows = [_ordered({**row, "theta0": theta0, "impl": None}, IMPORTANCE_KEYS) for row in rows]
        write_jsonl_atomic(final, rows)
        _after_importance(m, phase, rows)
        return

    header = {"kind": "header", "step": f"importance_{phase}", "settings": settings}
    done_rows = _resume_rows(partial, header) if not m.force else None
    if done_rows is None:
        taylor = None
        if m.importance == "both":
            taylor_rows = taylor_importance(model, m.batches(), metric_fn, metric_name, progress=m.progress)
            taylor = [[row["layer"], row["head"], row["taylor"]] for row in taylor_rows]
        header["taylor"] = taylor
        append_jsonl(partial, header)
        done_rows = []
    else:
        header = read_jsonl(partial)[0]
        m.say(f"  resuming importance_{phase}: {len(done_rows)} heads already measured")
    taylor_of = {(layer, head): value for layer, head, value in (header.get("taylor") or [])}

    def on_head(row: dict[str, Any]) -> None:
        row = {**row, "theta0": theta0, "taylor": taylor_of.get((row["layer"], row["head"]))}
        append_jsonl(partial, _ordered(row, IMPORTANCE_KEYS))

    done = [(row["layer"], row["head"]) for row in done_rows]
    exact_importance(model, m.batches(), m.impl, metric_fn, metric_name, done=done, on_head=on_head,
                     progress=m.progress)
    # The final file is built from the partial file's lines, so resumed and uninterrupted runs match.
    rows = sorted(read_jsonl(partial)[1:], key=lambda r: (r["layer"], r["head"]))
    shape = head_shape(model)
    if [(r["layer"], r["head"]) for r in rows] != [(l, h) for l in range(shape.n_layers) for h in range(shape.n_heads)]:
        raise PeftlabError(f"{partial} does not hold every head exactly once; delete it and re-run")
    write_jsonl_atomic(final, rows)
    partial.unlink()
    _after_importance(m, phase, rows)


def _after_importance(m: Measurement, phase: str, rows: list[dict[str, Any]]) -> None:
    """Record the probe's subset score (pre) and the Taylor-vs-exact Spearman ρ (both)."""
    from peftlab.io import atomic_write_json, read_json

    if phase == "pre" and m.theta0 == "probe":
        from peftlab.heads.probe import record_subset_score

        record_subset_score(m.run_dir, rows[0]["loss_base"], rows[0]["metric_name"], rows[0]["metric_base"])
    if m.importance != "both":
        return
    path = m.run_dir / TAYLOR_VS_EXACT_FILE
    report = read_json(path) if path.is_file() else {}
    report[phase] = spearman_taylor_exact(rows)
    atomic_write_json(path, {k: report[k] for k in ("pre", "post") if k in report})


def spearman_taylor_exact(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Spearman ρ (and two-sided p, scipy) between the exact I and the Taylor score over all heads."""
    import math

    from scipy.stats import spearmanr

    exact = [row["I"] for row in rows]
    taylor = [row["taylor"] for row in rows]
    rho, p = spearmanr(exact, taylor)
    clean = lambda x: None if x is None or math.isnan(float(x)) else float(x)  # noqa: E731 (constant input)
    return {"spearman": clean(rho), "p": clean(p), "n_heads": len(rows)}


def step_gradfisher(m: Measurement) -> None:
    from peftlab.heads.plasticity import gradfisher
    from peftlab.io import write_jsonl_atomic

    rows = gradfisher(m.theta0_model(), m.batches(), per="example", progress=m.progress)
    write_jsonl_atomic(m.run_dir / GRADFISHER_FILE, [_ordered({**r, "theta0": m.theta0}, GRADFISHER_KEYS)
                                                     for r in rows])


def step_update(m: Measurement) -> None:
    from peftlab.heads.update import UPDATE_FILE, UPDATE_META_FILE, measure_update
    from peftlab.io import atomic_write_json, write_jsonl_atomic

    rows, meta = measure_update(m.run_dir)
    atomic_write_json(m.run_dir / UPDATE_META_FILE, meta)
    write_jsonl_atomic(m.run_dir / UPDATE_FILE, rows)


STEP_OUTPUTS = {
    "subset": ("eval_subset.json",),
    "importance_pre": (importance_file("pre"),),
    "gradfisher_pre": (GRADFISHER_FILE,),
    "update": ("update.jsonl",),
    "importance_post": (importance_file("post"),),
}
# What a reused pre step copies from a sibling run besides its output: heads/probe.py's PROBE_FILES.
from peftlab.heads.probe import PROBE_FILES  # noqa: E402 (light module: no torch at import)


def _reuse_from_sibling(m: Measurement, step: str, settings: dict[str, Any]) -> str | None:
    """Copy a pre step's output from a sibling run with the same θ0 files, subset and settings."""
    from peftlab.io import atomic_write_bytes, read_json

    task_dir = m.run_dir.parent
    out_root = task_dir.parent.parent
    for sibling in sorted(out_root.glob(f"*/{task_dir.name}/*")):
        if sibling.resolve() == m.run_dir.resolve() or not (sibling / MANIFEST_FILE).is_file():
            continue
        try:
            their = read_json(sibling / MANIFEST_FILE)["steps"].get(step, {})
        except (ValueError, KeyError, OSError):
            continue
        files = STEP_OUTPUTS[step] + (PROBE_FILES if m.theta0 == "probe" else ())
        if not (their.get("finished") and their.get("settings") == settings
                and all((sibling / f).is_file() for f in files)):
            continue
        for name in files:
            if name in PROBE_FILES and (m.run_dir / name).is_file():
                continue  # keep our own probe (same settings, same θ0: same head)
            atomic_write_bytes(m.run_dir / name, (sibling / name).read_bytes())
        return str(sibling)
    return None


def run_step(m: Measurement, step: str) -> None:
    settings = m.settings(step)
    previous = m.manifest["steps"].get(step, {})
    outputs_exist = all((m.run_dir / f).is_file() for f in STEP_OUTPUTS[step])
    if not m.force and previous.get("finished") and previous.get("settings") == settings and outputs_exist:
        m.say(f"[dim]{step}: finished earlier with the same settings, skipped[/dim]")
        return
    m.say(f"[bold]{step}[/bold]")
    started = time.perf_counter()
    m.manifest["steps"][step] = {"settings": settings, "seconds": None, "finished": False}
    m.write_manifest()
    reused = None
    if step in ("importance_pre", "gradfisher_pre") and not m.force:
        reused = _reuse_from_sibling(m, step, settings)
    if reused:
        m.say(f"  reused from {reused} (same θ0, subset and settings)")
        if step == "importance_pre":
            from peftlab.io import read_jsonl

            _after_importance(m, "pre", read_jsonl(m.run_dir / importance_file("pre")))
    elif step == "subset":
        step_subset(m)
    elif step == "importance_pre":
        step_importance(m, "pre", settings)
    elif step == "gradfisher_pre":
        step_gradfisher(m)
    elif step == "update":
        step_update(m)
    elif step == "importance_post":
        step_importance(m, "post", settings)
    entry = {"settings": settings, "seconds": time.perf_counter() - started, "finished": True}
    if reused:
        entry["reused_from"] = reused
    m.manifest["steps"][step] = entry
    m.write_manifest()


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
) -> dict[str, Any]:
    """Run the requested measurement steps on a finished run; returns `measure_manifest.json` as a dict.

    importance: "exact" (ablation), "taylor" (|∂L/∂gate|) or "both"; impl: exact sweep "fast" | "naive";
    theta0: "probe" (trained head on frozen θ0, see heads/probe.py) | "init" (the random head).
    """
    from peftlab.heads.probe import THETA0_CHOICES

    step_names = parse_steps(steps)
    importance = _choice(importance, IMPORTANCE_CHOICES, "--importance")
    impl = _choice(impl, IMPL_CHOICES, "--impl")
    theta0 = _choice(theta0, THETA0_CHOICES, "--theta0")
    m = Measurement(Path(run_dir), importance, impl, theta0, subset_split, int(subset_size), int(subset_seed),
                    int(batch_size), bool(force), console, progress)
    for step in step_names:
        run_step(m, step)
    return json.loads(json.dumps(m.manifest))
