"""Load a run's saved measurement files into one per-head table (the `heads.csv` of `peftlab analyze`).

One row per head `(layer, head)`, in (layer, head) order (docs/CONTRACTS.md "heads.csv"):
    layer, head, I_pre, I_pre_se, I_pre_ci_low, I_pre_ci_high, I_post, I_post_se, I_post_ci_low,
    I_post_ci_high, G, G_se, F, U, Urel, U_q, U_k, U_v, U_o [, dL_dgate_pre, taylor_pre, dL_dgate_post,
    taylor_post], rank_<col>...
`rank_<col>` is 1 for the largest value (ties share the smallest rank, "min" method); NaN stays NaN.

`I_*` columns hold EXACT importance only (ablation ΔL). A row counts as exact when its `I` is not null
and it has an ablated loss (`loss_ablate`) or an exact `impl` ("fast" | "naive"). Older Taylor-only rows
stored the Taylor score in `I` (with `impl` and `loss_ablate` null): that value goes to `taylor_<phase>`,
never to `I_<phase>`. Where exact I was not measured, `I_<phase>` is empty (NaN) and the statistics say
so or use the Taylor column under its own name (see `stats.importance_column`). Older rows without
`I_se`/`I_ci_*`/`dL_dgate`/`G_se` leave those columns empty.

Where the columns come from:
    importance_pre.jsonl   → I_pre* (+ dL_dgate_pre, taylor_pre)   `peftlab measure RUN --steps importance_pre`  required
    update.jsonl (kind=head) → U, Urel, U_q..U_o                   `peftlab measure RUN --steps update`          required
    gradfisher_pre.jsonl   → G, G_se, F                           `peftlab measure RUN --steps gradfisher_pre`  optional
    importance_post.jsonl  → I_post* (+ dL_dgate_post, taylor_post) `peftlab measure RUN --steps importance_post` optional
A missing optional file leaves its columns out and adds a note; a missing required file is a
PeftlabError naming the command that writes it. Reads tables only — never a model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from peftlab.errors import PeftlabError
from peftlab.io import read_json, read_jsonl

PHASES = ("pre", "post")
CI_SUFFIXES = ("_se", "_ci_low", "_ci_high")
UPDATE_COLUMNS = ("U", "Urel", "U_q", "U_k", "U_v", "U_o")
VALUE_COLUMNS = ("I_pre", "I_pre_se", "I_pre_ci_low", "I_pre_ci_high",
                 "I_post", "I_post_se", "I_post_ci_low", "I_post_ci_high",
                 "G", "G_se", "F", *UPDATE_COLUMNS,
                 "dL_dgate_pre", "taylor_pre", "dL_dgate_post", "taylor_post")
# ranked columns: the per-head quantities themselves (not their uncertainty, not the signed derivative)
RANKED_COLUMNS = ("I_pre", "I_post", "G", "F", *UPDATE_COLUMNS, "taylor_pre", "taylor_post")
EXACT_IMPLS = ("fast", "naive")


@dataclass(frozen=True)
class Source:
    """One measurement file: which step writes it and which heads.csv columns it fills."""

    file: str
    step: str
    required: bool
    what: str


SOURCES = {
    "importance_pre": Source("importance_pre.jsonl", "importance_pre", True, "head importance on θ0"),
    "update": Source("update.jsonl", "update", True, "per-head weight update"),
    "gradfisher_pre": Source("gradfisher_pre.jsonl", "gradfisher_pre", False, "gate gradient/Fisher on θ0"),
    "importance_post": Source("importance_post.jsonl", "importance_post", False, "head importance on θ1"),
}


def measure_command(run_dir: str | Path, steps: list[str]) -> str:
    """The exact CLI command that writes the given measurement steps of a run."""
    return f"peftlab measure {run_dir} --steps {','.join(steps)}"


@dataclass
class HeadsTable:
    """The per-head table of one run plus what was missing and how it was measured."""

    heads: pd.DataFrame  # one row per head, columns as in the module docstring
    n_layers: int
    n_heads: int  # heads per layer
    notes: list[str] = field(default_factory=list)  # one line per missing optional input
    theta0: str | None = None  # classifier on θ0 for the pre measurements ("probe" | "init")
    n_examples: dict[str, int | None] = field(default_factory=dict)  # {"pre", "post", "G"}: subset size N
    plasticity_classifier: str | None = None  # classifier G/F were taken with ("init" | "probe"); None = not recorded
    update_reason: str | None = None  # why U is not defined for this run (empty by design), else None

    @property
    def n_total(self) -> int:
        return self.n_layers * self.n_heads


def _read_head_rows(path: Path) -> pd.DataFrame:
    rows = read_jsonl(path)
    if path.name == "update.jsonl":
        rows = [r for r in rows if r.get("kind", "head") == "head"]  # kind="ffn" lines are per-layer context
    if not rows:
        raise PeftlabError(f"'{path}' has no head rows; re-run its step with --force")
    frame = pd.DataFrame(rows)
    for key in ("layer", "head"):
        if key not in frame or frame[key].isna().any():
            raise PeftlabError(f"'{path}' has rows without '{key}'; re-run its step with --force")
    frame["layer"] = frame["layer"].astype(int)
    frame["head"] = frame["head"].astype(int)
    if frame.duplicated(["layer", "head"]).any():
        raise PeftlabError(f"'{path}' lists a head twice; re-run its step with --force")
    return frame


def _numeric(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce").astype(float)  # None → NaN


def _column(frame: pd.DataFrame, key: str) -> pd.Series:
    """Numeric column `key` of a row table, all-NaN when the rows do not have it (older formats)."""
    return _numeric(frame[key]) if key in frame else pd.Series(np.nan, index=frame.index)


def measured(heads: pd.DataFrame, column: str) -> bool:
    """True when `column` exists and holds at least one value (an all-empty column = not measured)."""
    return column in heads and bool(heads[column].notna().any())


def split_importance(frame: pd.DataFrame, phase: str) -> pd.DataFrame:
    """Importance rows → layer, head, I_<phase>, I_<phase>_se/_ci_low/_ci_high, dL_dgate_<phase>, taylor_<phase>.

    Exact I only where the row is an exact ablation (see the module docstring); a legacy Taylor-only
    row's `I` becomes its Taylor score.
    """
    value = _column(frame, "I")
    if "loss_ablate" in frame:
        ablated = frame["loss_ablate"].notna()
    else:
        ablated = pd.Series(False, index=frame.index)
    impl = frame["impl"] if "impl" in frame else pd.Series(None, index=frame.index)
    exact = value.notna() & (ablated | impl.isin(EXACT_IMPLS))
    taylor = _column(frame, "taylor")
    taylor = taylor.where(taylor.notna() | exact, value)  # legacy Taylor-only rows: I held the Taylor score
    out = frame[["layer", "head"]].copy()
    out[f"I_{phase}"] = value.where(exact)
    for suffix in CI_SUFFIXES:
        out[f"I_{phase}{suffix}"] = _column(frame, f"I{suffix}").where(exact)
    out[f"dL_dgate_{phase}"] = _column(frame, "dL_dgate")
    out[f"taylor_{phase}"] = taylor
    return out


def add_ranks(heads: pd.DataFrame) -> pd.DataFrame:
    """Append `rank_<col>` for every measured ranked column: 1 = largest, ties share the smallest rank."""
    out = heads.copy()
    for col in [c for c in RANKED_COLUMNS if measured(heads, c)]:
        out[f"rank_{col}"] = heads[col].rank(ascending=False, method="min").astype("Int64")
    return out


def _first(frame: pd.DataFrame, key: str):
    if key not in frame or not frame[key].notna().any():
        return None
    return frame[key].dropna().iloc[0]


def load_heads(run_dir: str | Path) -> HeadsTable:
    """Read a run's measurement files into a `HeadsTable` (ranks included).

    Raises PeftlabError when a required file is missing (naming the `peftlab measure` command that
    writes it) or when the files disagree on the set of heads.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PeftlabError(f"run directory '{run_dir}' does not exist; check the path or run `peftlab train` first")
    from peftlab.heads.update import update_undefined_reason

    update_reason = update_undefined_reason(run_dir)  # None, or why U is not defined (no ΔW of q/k/v/o)
    missing_required = [s for s in SOURCES.values() if s.required and not (run_dir / s.file).is_file()
                        and not (s.step == "update" and update_reason)]
    if missing_required:
        files = ", ".join(s.file for s in missing_required)
        steps = [s.step for s in missing_required]
        if not (run_dir / "eval_subset.json").is_file() and "importance_pre" in steps:
            steps = ["subset"] + steps
        raise PeftlabError(f"'{run_dir}' has no {files}; produce it with: {measure_command(run_dir, steps)}")

    notes: list[str] = []
    frames: dict[str, pd.DataFrame] = {}
    if update_reason:
        notes.append(f"update not defined for {_run_method(run_dir)}: {update_reason}; U, Urel, U_q..U_o are empty "
                     f"(null), not 0")
    for key, source in SOURCES.items():
        path = run_dir / source.file
        if key == "update" and update_reason:
            continue  # an update.jsonl of an earlier peftlab (all zeros) is not read
        if path.is_file():
            frames[key] = _read_head_rows(path)
        else:
            notes.append(f"{source.file} missing: no {source.what} columns; produce it with: "
                         f"{measure_command(run_dir, [source.step])}")

    pre = frames["importance_pre"]
    grid = pre[["layer", "head"]]
    n_layers, n_heads = int(grid["layer"].max()) + 1, int(grid["head"].max()) + 1
    if len(grid) != n_layers * n_heads:
        rerun = measure_command(run_dir, ["importance_pre"])
        raise PeftlabError(f"'{run_dir / 'importance_pre.jsonl'}' covers {len(grid)} heads, not a full "
                           f"{n_layers} × {n_heads} grid; re-run: {rerun} --force")
    expected = set(map(tuple, grid.to_numpy()))
    for key, frame in frames.items():
        if set(map(tuple, frame[["layer", "head"]].to_numpy())) != expected:
            raise PeftlabError(f"'{run_dir / SOURCES[key].file}' lists other heads than importance_pre.jsonl "
                               f"({len(frame)} vs {len(grid)}); re-run: {measure_command(run_dir, [key])} --force")

    heads = grid.sort_values(["layer", "head"]).reset_index(drop=True)
    n_examples: dict[str, int | None] = {}
    for phase in PHASES:
        key = f"importance_{phase}"
        if key not in frames:
            continue
        heads = heads.merge(split_importance(frames[key], phase), on=["layer", "head"], how="left")
        n = _first(frames[key], "n_examples")
        n_examples[phase] = None if n is None else int(n)
        if not measured(heads, f"I_{phase}"):
            what = "taylor_" + phase if measured(heads, f"taylor_{phase}") else "no importance at all"
            notes.append(f"exact I_{phase} not measured in {key}.jsonl (only {what}); I_{phase} columns are empty "
                         f"and the statistics name Taylor columns as such; for exact values run: "
                         f"{measure_command(run_dir, [key])} --importance both --force")
    if not measured(heads, "I_pre") and not measured(heads, "taylor_pre"):
        raise PeftlabError(f"'{run_dir / 'importance_pre.jsonl'}' holds neither exact nor Taylor importance; run: "
                           f"{measure_command(run_dir, ['importance_pre'])} --importance both --force")
    theta0 = _first(pre, "theta0")
    plasticity_classifier = None
    if "gradfisher_pre" in frames:
        grad = frames["gradfisher_pre"]
        part = grad[["layer", "head"]].copy()
        for col in ("G", "G_se", "F"):
            part[col] = _column(grad, col)
        heads = heads.merge(part, on=["layer", "head"], how="left")
        n = _first(grad, "n_examples")
        n_examples["G"] = None if n is None else int(n)
        plasticity_classifier = _first(grad, "plasticity_classifier")
    if update_reason:
        for col in UPDATE_COLUMNS:
            heads[col] = np.nan
    else:
        update = frames["update"]
        part = update[["layer", "head"]].copy()
        for col in UPDATE_COLUMNS:
            if col in update:
                part[col] = _numeric(update[col])
        heads = heads.merge(part, on=["layer", "head"], how="left")
    if not update_reason and not measured(heads, "U"):
        raise PeftlabError(f"'{run_dir / 'update.jsonl'}' has no U values; re-run: "
                           f"{measure_command(run_dir, ['update'])} --force")
    for phase in PHASES:  # Taylor columns only when measured in that phase
        if f"taylor_{phase}" in heads and not measured(heads, f"taylor_{phase}"):
            heads = heads.drop(columns=[f"dL_dgate_{phase}", f"taylor_{phase}"])
        elif f"dL_dgate_{phase}" in heads and not measured(heads, f"dL_dgate_{phase}"):
            notes.append(f"importance_{phase}.jsonl has no signed dL_dgate (older format): "
                         f"the Spearman of (−dL_dgate, I) is not measured")
    if not any(measured(heads, f"taylor_{phase}") for phase in PHASES):
        notes.append("no taylor importance measured (run peftlab measure with --importance both to add it)")

    ordered = ["layer", "head", *[c for c in VALUE_COLUMNS if c in heads]]
    return HeadsTable(add_ranks(heads[ordered]), n_layers, n_heads, notes, None if theta0 is None else str(theta0),
                      n_examples, None if plasticity_classifier is None else str(plasticity_classifier),
                      update_reason)


def _run_method(run_dir: Path) -> str:
    try:
        return str(read_json(run_dir / "run_config.json").get("method"))
    except (OSError, ValueError):
        return "this method"


# --- run metadata -------------------------------------------------------------------------------

_LABEL = re.compile(r"^(?P<dir>.+?)(?:_r(?P<rank>\d+))?$")


@dataclass
class RunMeta:
    """What the analysis needs to know about a run, read from its JSON files (no model)."""

    run_dir: Path
    task: str
    method: str  # registry key, e.g. "lora"
    dir_name: str  # run-dir component, e.g. "LoRA"
    seed: int
    rank: int | None  # None for full-rank methods
    model: str | None  # None = packaged default model
    final: dict[str, Any] | None  # final_metrics.json
    synthetic: bool = False  # run_config.json says "synthetic": true (test fixtures), never a measurement

    @property
    def label(self) -> str:
        """'FFT', 'LoRA_r8', 'PEFT-LoRA_r8': how plots and tables name the method."""
        return f"{self.dir_name}_r{self.rank}" if self.rank is not None else self.dir_name

    @property
    def score(self) -> float | None:
        return None if not self.final else self.final.get("score")

    @property
    def main_metric(self) -> str | None:
        return None if not self.final else self.final.get("main_metric")

    @property
    def model_name(self) -> str:
        return self.model or "packaged all-MiniLM-L6-v2"


def read_run_meta(run_dir: str | Path) -> RunMeta:
    """Task, method, seed, rank, model and final metrics of a run directory."""
    from peftlab.methods import METHODS
    from peftlab.runs import read_run_info

    # Everything from the run's own files, never from its directory name (a run may be copied or renamed).
    run = read_run_info(run_dir)
    info = run.run_config
    config = info.get("config", {})
    method_name = str(info.get("method") or config.get("method"))
    method = METHODS.get(method_name)
    rank = config.get("rank") if getattr(method, "low_rank", False) else None
    return RunMeta(run_dir=run.run_dir, task=str(info.get("task") or config.get("task")), method=method_name,
                   dir_name=getattr(method, "dir_name", method_name), seed=int(config.get("seed", 0)),
                   rank=None if rank is None else int(rank), model=config.get("model"), final=run.final_metrics,
                   synthetic=bool(info.get("synthetic")))


PROBE_KEYS = ("metric_name", "heldout_metric", "chance_metric", "better_than_chance", "heldout_loss", "chance_loss",
              "margin_rule", "n_train", "n_heldout")


def read_probe(run_dir: str | Path) -> dict[str, Any]:
    """The θ0 probe's held-out score next to its chance level, from probe.json (saved table, no model).

    {"measured": False, "why": ...} when probe.json is absent or predates the held-out fields.
    """
    from peftlab.io import read_json

    path = Path(run_dir) / "probe.json"
    if not path.is_file():
        return {"measured": False, "why": "no probe.json (θ0 not probed, or not measured)"}
    info = read_json(path)
    if info.get("heldout_metric") is None:
        return {"measured": False, "why": "probe.json has no held-out score (written before held-out evaluation)"}
    return {"measured": True, **{k: info.get(k) for k in PROBE_KEYS}}


def loss_unit(task: str) -> str:
    """'nats, CE' for classification, 'MSE' for regression tasks: the unit of I = ΔL."""
    from peftlab.tasks import get_task

    try:
        return "MSE" if get_task(task).is_regression else "nats, CE"
    except PeftlabError:
        return "nats, CE"


def parse_label(label: str) -> tuple[str, int | None]:
    """'LoRA_r8' → ('LoRA', 8); 'FFT' → ('FFT', None)."""
    match = _LABEL.match(label.strip())
    if not match:
        raise PeftlabError(f"cannot read method label '{label}'; use e.g. FFT, LoRA_r8, PEFT-LoRA_r8")
    rank = match.group("rank")
    return match.group("dir"), (int(rank) if rank else None)


def train_command(task: str, dir_name: str, seed: int, rank: int | None, out: str | Path) -> str:
    """The `peftlab train` command that creates a run of this label (method key = dir name, lower-cased)."""
    cmd = f"peftlab train --task {task} --method {dir_name.lower()} --seed {seed}"
    if rank is not None:
        cmd += f" --rank {rank}"
    return cmd + f" --out {out}"


def run_dir_for_label(out: str | Path, task: str, label: str, seed: int) -> Path:
    """`<out>/<DirName>/<TASK>/seed<S>[_r<R>]` for a label like 'LoRA_r8' (dir name matched case-insensitively)."""
    dir_name, rank = parse_label(label)
    out = Path(out)
    if out.is_dir():
        for child in out.iterdir():
            if child.is_dir() and child.name.lower() == dir_name.lower():
                dir_name = child.name
                break
    name = f"seed{seed}_r{rank}" if rank is not None else f"seed{seed}"
    return out / dir_name / task / name


def canonical_task(task: str) -> str:
    """'rte' → 'RTE' via the task registry (unknown names raise its PeftlabError)."""
    from peftlab.tasks import get_task

    return get_task(task).name


def head_label(layer: int, head: int) -> str:
    """'L{layer}H{head}', 0-based, as figures annotate heads."""
    return f"L{int(layer)}H{int(head)}"


def as_float_list(values) -> list[float | None]:
    """JSON-ready floats (NaN → None)."""
    return [None if (v is None or (isinstance(v, float) and np.isnan(v))) else float(v) for v in values]
