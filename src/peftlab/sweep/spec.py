"""Sweep specs: a YAML file naming axes and fixed settings, expanded into `TrainConfig`s.

    name: tiny                                   # the sweep's name: <out>/SWEEP/<name>/
    fixed: {task: rte, epochs: 1, max_train_samples: 64}
    axes:                                        # the grid = the cartesian product of every axis
      method: [fft, lora]
      seed: [1, 2]
    resources: {cpus_per_run: 1, gpus_per_run: 0, max_concurrent: 2}
    search: grid                                 # grid (default) | asha (see below)
    preset: quick                                # optional: config preset chain applied first (like --config)
    by_method: {fft: {lr: 1.0e-4}}               # optional: settings for one method's points (over fixed)

Every axis and fixed key is a `TrainConfig` key, coerced and validated by `peftlab.config` exactly
as `peftlab train key=value` would be, so a typo is the same one-line error. A point's config is
preset → fixed → by_method[its method] → its axis values.

`search: asha` (Ray backend only) early-stops trials with Ray Tune's ASHAScheduler, and only in a
learning-rate search: `lr` must be the one axis. A grid over method, rank, seed, targets, ... is a
factorial comparison, and stopping the cells that look worse early biases exactly that comparison
(slow starters are dropped), so ASHA on such a grid is refused. Its settings:

    asha: {grace_period: 1, reduction_factor: 2}  # epochs before a trial may be stopped; keep the top 1/rf

The metric is the task's main dev metric (accuracy, f1, pearson, matthews_corr: all higher is better,
mode max), reported at each epoch's evaluation; so every run needs eval_each_epoch and more epochs
than grace_period (and no max_steps).

Run directories are the usual `<out>/<METHOD>/<TASK>/seed<S>[_r<R>]` (a sweep run is the very run
`peftlab train` would write). Only task, method, seed and rank name a run directory; an axis over
any other key (lr, targets, epochs, ...) would put several grid points into one directory, so each
such point gets its own output root `<out>/<key>-<value>[__<key>-<value>...]/` (characters other
than letters, digits and `._+-` become `-`) below which the usual layout follows. Grid points that still share a run directory differ only in a setting the
method ignores (e.g. `rank` for `fft`): they are one run, trained once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
from pathlib import Path
from typing import Any

from peftlab.config import FIELD_NAMES, TrainConfig, load_config
from peftlab.errors import PeftlabError

SPEC_KEYS = ("name", "description", "preset", "fixed", "by_method", "axes", "resources", "search", "asha")
RESOURCE_KEYS = ("cpus_per_run", "gpus_per_run", "max_concurrent")
# Keys that name the run directory (runs.run_dir_for); every other axis goes into the output root.
IDENTITY_KEYS = ("task", "method", "seed", "rank")
# `out` is the sweep's --out; the others would make every grid point write somewhere else.
NOT_AXES = ("out",)
# "grid" = every point once, in order, trained to the end. "asha" = Ray Tune's ASHA early stopping, only in
# a learning-rate search (the axes must be exactly ASHA_AXES); never a factorial comparison (module docstring).
SEARCHES = ("grid", "asha")
ASHA_AXES = ("lr",)
ASHA_KEYS = ("grace_period", "reduction_factor")
# Every registered task's main metric is higher-is-better, so ASHA always maximises (checked in asha_metric).
HIGHER_IS_BETTER = ("accuracy", "f1", "pearson", "spearman", "matthews_corr")


@dataclasses.dataclass
class Resources:
    cpus_per_run: float = 1
    gpus_per_run: float = 0
    max_concurrent: int = 1


@dataclasses.dataclass
class Asha:
    """ASHA settings: a trial may be stopped after `grace_period` epochs, then at grace·rf^k epochs; at each
    such rung it goes on only if its dev metric is in the top 1/`reduction_factor` of the trials seen there."""

    grace_period: int = 1
    reduction_factor: float = 2


@dataclasses.dataclass
class SweepSpec:
    name: str
    fixed: dict[str, Any]
    axes: dict[str, list]
    resources: Resources
    search: str = "grid"
    description: str | None = None
    path: str | None = None  # the YAML file it came from
    preset: str | None = None
    by_method: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    asha: Asha | None = None  # set when search == "asha"
    expanded_by: str | None = None  # a command that expands the grid itself (bench), recorded in sweep.json

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "preset": self.preset, "fixed": dict(self.fixed),
                "by_method": {k: dict(v) for k, v in self.by_method.items()},
                "axes": {k: list(v) for k, v in self.axes.items()},
                "resources": dataclasses.asdict(self.resources), "search": self.search,
                "asha": dataclasses.asdict(self.asha) if self.asha else None, "path": self.path,
                "expanded_by": self.expanded_by}


@dataclasses.dataclass
class SweepRun:
    """One grid point: its axis values, its validated config and where it writes."""

    axes: dict[str, Any]
    cfg: TrainConfig
    run_dir: Path
    also: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # merged grid points (same run dir)

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={_text(v)}" for k, v in self.axes.items())


def _text(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _bad(where: str, what: str) -> PeftlabError:
    return PeftlabError(f"sweep spec {where}: {what}")


def _key(raw: Any, where: str, part: str) -> str:
    key = str(raw).strip().replace("-", "_")
    if key not in FIELD_NAMES:
        raise _bad(where, f"unknown config key '{raw}' in {part}; valid keys: {', '.join(FIELD_NAMES)}")
    if key in NOT_AXES:
        raise _bad(where, f"'{key}' cannot be set in {part}; pass --out to `peftlab sweep` instead")
    return key


def _numbers(block: dict, keys: tuple[str, ...], name: str, where: str):
    """(key, raw value, float) for each entry of a numeric settings block (`resources`, `asha`); an unknown key
    or a non-number is one line naming the block."""
    for k, v in block.items():
        if k not in keys:
            raise _bad(where, f"unknown {name} key '{k}'; valid keys: {', '.join(keys)}")
        try:
            yield k, v, float(v)
        except (TypeError, ValueError):
            raise _bad(where, f"{name}.{k} must be a number, got {v!r}") from None


def parse_spec(data: Any, where: str = "<dict>") -> SweepSpec:
    """Check a loaded YAML mapping and return a `SweepSpec` (PeftlabError naming the bad part)."""
    from peftlab.runs import safe_name

    if not isinstance(data, dict):
        raise _bad(where, "must be a mapping with name, fixed, axes, resources; fix the file")
    unknown = [k for k in data if k not in SPEC_KEYS]
    if unknown:
        raise _bad(where, f"unknown top-level key '{unknown[0]}'; valid keys: {', '.join(SPEC_KEYS)}")
    name = data.get("name")
    if not name:
        raise _bad(where, "needs a 'name' (letters, digits, . _ + -); it names <out>/SWEEP/<name>/")
    try:
        name = safe_name(name, "sweep name")
    except PeftlabError:
        raise _bad(where, f"name {name!r} is not a plain name (letters, digits, . _ + -); rename it") from None
    fixed_raw = data.get("fixed") or {}
    axes_raw = data.get("axes") or {}
    if not isinstance(fixed_raw, dict) or not isinstance(axes_raw, dict):
        raise _bad(where, "'fixed' and 'axes' must be mappings (key: value, key: [values])")
    if not axes_raw:
        raise _bad(where, "needs at least one axis under 'axes', e.g. seed: [1, 2]")
    fixed = {_key(k, where, "fixed"): v for k, v in fixed_raw.items()}
    axes: dict[str, list] = {}
    for raw, values in axes_raw.items():
        key = _key(raw, where, "axes")
        if key in fixed:
            raise _bad(where, f"'{key}' is both an axis and fixed; keep one")
        if not isinstance(values, list) or not values:
            raise _bad(where, f"axis '{key}' must be a non-empty list, e.g. {key}: [a, b]")
        axes[key] = values
    res_raw = data.get("resources") or {}
    if not isinstance(res_raw, dict):
        raise _bad(where, f"'resources' must be a mapping of {', '.join(RESOURCE_KEYS)}")
    res = Resources()
    for k, v, number in _numbers(res_raw, RESOURCE_KEYS, "resources", where):
        low = 1 if k == "max_concurrent" else 0
        if not number >= low or (k == "max_concurrent" and not number.is_integer()):
            raise _bad(where, f"resources.{k} must be {'an integer ' if k == 'max_concurrent' else ''}>= {low}, got {v!r}")
        setattr(res, k, int(number) if k == "max_concurrent" else number)
    if res.cpus_per_run <= 0:
        raise _bad(where, f"resources.cpus_per_run must be > 0, got {res.cpus_per_run}")
    search = str(data.get("search") or "grid")
    if search not in SEARCHES:
        raise _bad(where, f"search '{search}' is not available; choose {' or '.join(SEARCHES)}")
    asha = _parse_asha(data.get("asha"), search, list(axes), where)
    preset = data.get("preset")
    if preset is not None and (not isinstance(preset, (str, list)) or not preset):
        raise _bad(where, "'preset' must be a preset name or a comma-separated chain, e.g. quick or rte,quick")
    by_method_raw = data.get("by_method") or {}
    if not isinstance(by_method_raw, dict) or not all(isinstance(v, dict) for v in by_method_raw.values()):
        raise _bad(where, "'by_method' must map a method to its settings, e.g. {fft: {lr: 1.0e-4}}")
    by_method = {}
    for method, settings in by_method_raw.items():
        keys = {_key(k, where, f"by_method.{method}"): v for k, v in settings.items()}
        if "method" in keys:
            raise _bad(where, f"by_method.{method} cannot set 'method'")
        by_method[str(method)] = keys
    return SweepSpec(name=name, fixed=fixed, axes=axes, resources=res, search=search,
                     description=data.get("description"), path=None if where == "<dict>" else where,
                     preset=",".join(map(str, preset)) if isinstance(preset, list) else preset,
                     by_method=by_method, asha=asha)


def _parse_asha(raw: Any, search: str, axes: list[str], where: str) -> Asha | None:
    """The `asha:` block; ASHA only where it cannot bias a comparison (a search over lr alone)."""
    if search != "asha":
        if raw is not None:
            raise _bad(where, "'asha' settings need search: asha; remove them or set search: asha")
        return None
    if sorted(axes) != sorted(ASHA_AXES):
        raise _bad(where, f"search: asha is only for learning-rate searches (the one axis must be "
                          f"{', '.join(ASHA_AXES)}), got axes {', '.join(axes)}; early stopping would bias a "
                          f"factorial comparison: use search: grid")
    if raw is not None and not isinstance(raw, dict):
        raise _bad(where, f"'asha' must be a mapping of {', '.join(ASHA_KEYS)}")
    asha = Asha()
    for k, v, number in _numbers(raw or {}, ASHA_KEYS, "asha", where):
        if k == "grace_period" and not (number >= 1 and number.is_integer()):
            raise _bad(where, f"asha.grace_period must be a whole number of epochs >= 1, got {v!r}")
        if k == "reduction_factor" and not number > 1:
            raise _bad(where, f"asha.reduction_factor must be > 1, got {v!r}")
        setattr(asha, k, int(number) if k == "grace_period" else number)
    return asha


def check_asha(spec: SweepSpec, runs: list[SweepRun]) -> dict[str, Any]:
    """The scheduler settings for an ASHA sweep (metric, mode, time_attr, max_t, ...), after checking that every
    run reports its dev metric often enough for ASHA to act (one PeftlabError line otherwise)."""
    from peftlab.tasks import get_task

    where = spec.path or spec.name
    assert spec.asha is not None
    tasks = {get_task(r.cfg.task).name for r in runs}
    if len(tasks) != 1:  # cannot happen with lr as the only axis; a guard for hand-built specs
        raise _bad(where, f"search: asha needs one task (one metric), got {', '.join(sorted(tasks))}")
    main_metric = get_task(runs[0].cfg.task).main_metric
    if main_metric not in HIGHER_IS_BETTER:
        raise _bad(where, f"search: asha does not know whether '{main_metric}' is better high or low; use search: grid")
    for run in runs:
        cfg = run.cfg
        if not cfg.eval_each_epoch or cfg.max_steps or cfg.epochs <= spec.asha.grace_period:
            raise _bad(where, f"search: asha judges runs on the dev metric of each epoch, so every run needs "
                              f"eval_each_epoch: true, no max_steps and epochs > asha.grace_period "
                              f"({spec.asha.grace_period}); got epochs={cfg.epochs:g}, "
                              f"eval_each_epoch={cfg.eval_each_epoch}, max_steps={cfg.max_steps}")
    return {"metric": f"dev_{main_metric}", "main_metric": main_metric, "mode": "max", "time_attr": "epoch",
            "max_t": int(max(-(-r.cfg.epochs // 1) for r in runs)), "grace_period": spec.asha.grace_period,
            "reduction_factor": spec.asha.reduction_factor}


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep spec YAML file."""
    from peftlab.config import read_yaml_config

    path = Path(path)
    if not path.is_file():
        raise PeftlabError(f"sweep spec '{path}' not found; pass a YAML file (see README, section Sweeps)")
    return parse_spec(read_yaml_config(path), str(path))


def _variant(point: dict[str, Any], cfg: TrainConfig) -> str | None:
    """`lr-0.0001__targets-q+v`: the output-root component of a point's non-identity axes (None if none)."""
    from peftlab.runs import safe_name

    from peftlab.methods import get_method

    identity = IDENTITY_KEYS + tuple(getattr(get_method(cfg.method), "dir_keys", ()))  # e.g. AdaLoRA's signal
    parts = []
    for key in point:
        if key in identity:
            continue
        value = getattr(cfg, key)
        text = "+".join(map(str, value)) if isinstance(value, tuple) else str(value)
        parts.append(f"{key}-{text}")
    if not parts:
        return None
    text = re.sub(r"[^A-Za-z0-9._+-]", "-", "__".join(parts)).lstrip(".-")
    if len(text) > 80:  # e.g. a model path: keep it readable and unique
        text = f"{text[:60]}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"
    return safe_name(text, "sweep axis values")


def expand(spec: SweepSpec, out: str | Path, name_points: bool = True) -> list[SweepRun]:
    """Every grid point as a validated config, in axis order (the first axis varies slowest).

    Each point goes through `load_config(preset, {**fixed, **by_method[method], **point, out})`, the same
    path as `peftlab train --config preset key=value ...`, so its run directory and settings are those of a
    train call. A `rank` point of a method without a rank (fft, ...) is not applied: its config does not
    depend on which rank point came first. `name_points=False`: a bad value raises its own error line,
    without the "sweep spec NAME: grid point (...)" prefix (for commands whose flags built the spec).
    """
    from peftlab.methods import get_method
    from peftlab.runs import run_dir_for

    where = spec.path or spec.name
    runs: dict[Path, SweepRun] = {}
    keys = list(spec.axes)
    for values in itertools.product(*(spec.axes[k] for k in keys)):
        point = dict(zip(keys, values))
        try:
            settings = {**spec.fixed, **point, "out": str(out)}
            # the point's method (the preset may set it too) decides its by_method settings and whether rank applies
            method = get_method(load_config(spec.preset, settings, validate_config=False).method)
            settings = {**spec.fixed, **_by_method(spec, method.name), **point, "out": str(out)}
            if "rank" in point and not getattr(method, "low_rank", False):
                settings.pop("rank")  # (rank cannot also be fixed: parse_spec refuses a key in both)
            cfg = load_config(spec.preset, settings)
        except PeftlabError as err:
            if not name_points:  # a command's own flags built the grid: its error needs no spec context
                raise
            label = ", ".join(f"{k}={_text(v)}" for k, v in point.items())
            raise _bad(where, f"grid point ({label}): {err}") from None
        variant = _variant(point, cfg)
        if variant is not None:
            cfg = dataclasses.replace(cfg, out=str(Path(out) / variant))
        run_dir = run_dir_for(cfg)
        if run_dir in runs:  # differs only in a setting this method ignores (e.g. rank for fft)
            runs[run_dir].also.append(point)
            continue
        runs[run_dir] = SweepRun(axes=point, cfg=cfg, run_dir=run_dir)
    return list(runs.values())


def _by_method(spec: SweepSpec, method: str) -> dict[str, Any]:
    """`by_method` settings of one method (keys may be any registered spelling of it)."""
    from peftlab.methods import get_method

    out: dict[str, Any] = {}
    for name, settings in spec.by_method.items():
        if get_method(name).name == method:
            out.update(settings)
    return out


def command_resources(backend: str, max_concurrent: int = 1, cpus_per_run: float | None = None,
                      gpus_per_run: float = 0) -> Resources:
    """Resources of a grid built by `study` / `bench` / `adalora run`: by default the local backend keeps torch's
    own thread count (as those commands always did) and Ray splits this machine's CPUs over the concurrent trials."""
    import os

    if max_concurrent < 1 or (cpus_per_run is not None and cpus_per_run <= 0) or gpus_per_run < 0:
        raise PeftlabError(f"--max-concurrent must be >= 1, --cpus-per-run > 0 and --gpus-per-run >= 0; got "
                           f"{max_concurrent}, {cpus_per_run}, {gpus_per_run}")
    if cpus_per_run is None:
        if backend == "local":
            import torch

            cpus_per_run = torch.get_num_threads()
        else:
            cpus_per_run = max(1, (os.cpu_count() or 1) // max_concurrent)
    return Resources(cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run, max_concurrent=max_concurrent)


def grid_overrides(overrides: list[str], own: dict[str, str], command: str) -> dict[str, str]:
    """`key=value` overrides of a command as a dict, refusing keys the command's own grid sets (`own`: key → flag)."""
    from peftlab.config import parse_overrides

    updates = parse_overrides(overrides)
    for key in updates:
        norm = key.replace("-", "_")
        if norm in own:
            raise PeftlabError(f"{command}: the override '{key}=...' would replace the grid's own {norm}; "
                               f"pass {own[norm]} instead")
    return updates


def grid_size(spec: SweepSpec) -> int:
    n = 1
    for values in spec.axes.values():
        n *= len(values)
    return n


__all__ = ["SweepSpec", "SweepRun", "Resources", "Asha", "parse_spec", "load_spec", "expand", "grid_size", "check_asha",
           "command_resources", "grid_overrides", "IDENTITY_KEYS"]
