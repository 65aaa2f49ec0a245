"""Sweep specs: a YAML file naming axes and fixed settings, expanded into `TrainConfig`s.

    name: tiny                                   # the sweep's name: <out>/SWEEP/<name>/
    fixed: {task: rte, epochs: 1, max_train_samples: 64}
    axes:                                        # the grid = the cartesian product of every axis
      method: [fft, lora]
      seed: [1, 2]
    resources: {cpus_per_run: 1, gpus_per_run: 0, max_concurrent: 2}
    search: grid                                 # the only search so far (see SEARCHES)

Every axis and fixed key is a `TrainConfig` key, coerced and validated by `peftlab.config` exactly
as `peftlab train key=value` would be, so a typo is the same one-line error.

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

SPEC_KEYS = ("name", "description", "fixed", "axes", "resources", "search")
RESOURCE_KEYS = ("cpus_per_run", "gpus_per_run", "max_concurrent")
# Keys that name the run directory (runs.run_dir_for); every other axis goes into the output root.
IDENTITY_KEYS = ("task", "method", "seed", "rank")
# `out` is the sweep's --out; the others would make every grid point write somewhere else.
NOT_AXES = ("out",)
# "grid" = every point once, in order. ASHA (early stopping) is left for later: it only suits a search
# over one knob such as lr, never a factorial method comparison (see backends/ray_backend.py).
SEARCHES = ("grid",)


@dataclasses.dataclass
class Resources:
    cpus_per_run: float = 1
    gpus_per_run: float = 0
    max_concurrent: int = 1


@dataclasses.dataclass
class SweepSpec:
    name: str
    fixed: dict[str, Any]
    axes: dict[str, list]
    resources: Resources
    search: str = "grid"
    description: str | None = None
    path: str | None = None  # the YAML file it came from

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "fixed": dict(self.fixed),
                "axes": {k: list(v) for k, v in self.axes.items()},
                "resources": dataclasses.asdict(self.resources), "search": self.search, "path": self.path}


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
    for k, v in res_raw.items():
        if k not in RESOURCE_KEYS:
            raise _bad(where, f"unknown resources key '{k}'; valid keys: {', '.join(RESOURCE_KEYS)}")
        try:
            number = float(v)
        except (TypeError, ValueError):
            raise _bad(where, f"resources.{k} must be a number, got {v!r}") from None
        low = 1 if k == "max_concurrent" else 0
        if not number >= low or (k == "max_concurrent" and not number.is_integer()):
            raise _bad(where, f"resources.{k} must be {'an integer ' if k == 'max_concurrent' else ''}>= {low}, got {v!r}")
        setattr(res, k, int(number) if k == "max_concurrent" else number)
    if res.cpus_per_run <= 0:
        raise _bad(where, f"resources.cpus_per_run must be > 0, got {res.cpus_per_run}")
    search = str(data.get("search") or "grid")
    if search not in SEARCHES:
        raise _bad(where, f"search '{search}' is not available (only {', '.join(SEARCHES)}; ASHA for lr searches "
                          f"is not implemented yet); remove the key")
    return SweepSpec(name=name, fixed=fixed, axes=axes, resources=res, search=search,
                     description=data.get("description"), path=None if where == "<dict>" else where)


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

    parts = []
    for key in point:
        if key in IDENTITY_KEYS:
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


def expand(spec: SweepSpec, out: str | Path) -> list[SweepRun]:
    """Every grid point as a validated config, in axis order (the first axis varies slowest).

    Each point goes through `load_config(None, {**fixed, **point, out})`, the same path as
    `peftlab train key=value ...`, so its run directory and settings are those of a train call.
    """
    from peftlab.runs import run_dir_for

    where = spec.path or spec.name
    runs: dict[Path, SweepRun] = {}
    keys = list(spec.axes)
    for values in itertools.product(*(spec.axes[k] for k in keys)):
        point = dict(zip(keys, values))
        try:
            cfg = load_config(None, {**spec.fixed, **point, "out": str(out)})
        except PeftlabError as err:
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


def grid_size(spec: SweepSpec) -> int:
    n = 1
    for values in spec.axes.values():
        n *= len(values)
    return n


__all__ = ["SweepSpec", "SweepRun", "Resources", "parse_spec", "load_spec", "expand", "grid_size", "IDENTITY_KEYS"]
