"""`load_split`: one split of one task, from local files (default) or the Hub (optional).

Where the data directory comes from: `--data-dir` (the `data_dir` argument), else `$PEFTLAB_DATA`,
else `./data`. With `source="auto"` local files win; the Hub is tried only when no local copy
exists, Hub access is not switched off (HF_HUB_OFFLINE) and `datasets` is installed.

AG News here ships only `test.csv`. When `train.csv` is absent, both splits come from
`test.csv`: a stratified 80/20 split (sklearn `train_test_split`, seed 42), "train" = the 80 %,
"dev" = the 20 %. The seed, fraction and sizes are in `TaskData.split_info` for the run config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from peftlab.tasks.hub import datasets_available, hub_name, hub_offline, load_hub_split
from peftlab.tasks.local import locate, read_task_file
from peftlab.tasks.registry import TaskSpec, get_task
from peftlab.tasks.examples import TaskData
from peftlab.errors import PeftlabError

ENV_VAR = "PEFTLAB_DATA"
SOURCES = ("auto", "local", "hub")


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """`data_dir` if given, else `$PEFTLAB_DATA`, else `./data` (not checked for existence here)."""
    return Path(data_dir_origin(data_dir)[0]).expanduser()


def data_dir_origin(data_dir: str | os.PathLike | None = None) -> tuple[str, str]:
    """(the data dir as given, where it came from: "--data-dir", "$PEFTLAB_DATA" or "default")."""
    if data_dir not in (None, ""):
        return str(data_dir), "--data-dir"
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return env, f"${ENV_VAR}"
    return "data", "default"


@dataclass
class SplitLocation:
    """Where a split's rows live locally: `path`, and `holdout=True` when cut from another file."""

    split: str
    path: Path | None
    tried: list[Path]
    holdout: bool = False


def locate_split(spec: TaskSpec, split: str, data_dir: Path) -> SplitLocation:
    """Find canonical `split` of `spec` under `data_dir`, falling back to the holdout file (AG News)."""
    path, tried = locate(spec, split, data_dir)
    if spec.holdout is None or locate(spec, "train", data_dir)[0] is not None:
        return SplitLocation(split, path, tried)  # official files: no holdout
    # No official train file: both splits are cut from the holdout source file.
    source_path, source_tried = locate(spec, spec.holdout.source_split, data_dir)
    tried = tried + [p for p in source_tried if p not in tried]
    return SplitLocation(split, source_path, tried, holdout=source_path is not None)


def _holdout_part(spec: TaskSpec, split: str, data: TaskData, seed: int, fraction: float) -> TaskData:
    """The `split` part ("train" or the eval split) of a deterministic split of `data`."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < fraction < 1.0:
        raise PeftlabError(f"holdout fraction must be between 0 and 1, got {fraction}; pick e.g. 0.2")
    indices = list(range(len(data)))
    stratify = data.labels if spec.holdout.stratified else None
    try:
        train_idx, eval_idx = train_test_split(indices, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError as err:  # e.g. too few rows per class for a stratified split of this size
        raise PeftlabError(
            f"cannot split {data.source} into train/dev with fraction {fraction} ({err}); pick another fraction"
        ) from None
    part = "train" if split == "train" else "eval"
    subset = data.subset(sorted(train_idx if part == "train" else eval_idx))  # keep file order
    subset.split = split
    subset.split_info = {
        "split": split,
        "origin": "holdout",
        "from": data.source,
        "part": part,
        "eval_fraction": fraction,
        "seed": seed,
        "stratified": spec.holdout.stratified,
        "n_source": len(data),
        "n_train": len(train_idx),
        "n_eval": len(eval_idx),
    }
    return subset


def _missing_error(spec: TaskSpec, split: str, data_dir_raw: str, origin: str, tried: list[Path], why_not_hub: str):
    root = Path(data_dir_raw).expanduser()
    where = f"data directory {root} (from {origin}) does not exist" if not root.is_dir() else (
        f"no {spec.name} {split} file (tried: {', '.join(str(p) for p in tried)})"
    )
    example = tried[0].relative_to(root) if tried and tried[0].is_relative_to(root) else spec.split_files[split]
    return PeftlabError(
        f"{where} and {why_not_hub}; set --data-dir or {ENV_VAR} to a directory holding {example}, "
        "or install `peftlab[hub]` and go online"
    )


def load_split(
    task: str | TaskSpec,
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    source: str = "auto",
    holdout_seed: int | None = None,
    holdout_fraction: float | None = None,
) -> TaskData:
    """Load one split ("train", "dev"; MNLI "dev_matched"/"dev_mismatched", "dev" = matched).

    source: "local" (files only), "hub" (`datasets` only) or "auto" (local, else Hub when allowed).
    holdout_seed / holdout_fraction override the task's defaults when a split is cut from one
    file (AG News without train.csv); they are recorded in `split_info`.
    """
    spec = get_task(task)
    split = spec.canonical_split(split)
    if source not in SOURCES:
        raise PeftlabError(f"unknown data source {source!r}; use one of: {', '.join(SOURCES)}")
    if source == "hub":
        return load_hub_split(spec, split)

    data_dir_raw, origin = data_dir_origin(data_dir)
    root = Path(data_dir_raw).expanduser()
    loc = locate_split(spec, split, root)
    if loc.path is None:
        if source == "local":
            raise _missing_error(spec, split, data_dir_raw, origin, loc.tried, "source='local' was asked for")
        if hub_offline():
            raise _missing_error(spec, split, data_dir_raw, origin, loc.tried,
                                 f"the Hub is off (HF_HUB_OFFLINE) so {hub_name(spec)} cannot be used")
        if not datasets_available():
            raise _missing_error(spec, split, data_dir_raw, origin, loc.tried,
                                 f"`datasets` is not installed so {hub_name(spec)} cannot be used")
        return load_hub_split(spec, split)

    file_split = spec.holdout.source_split if loc.holdout else split
    text_a, text_b, labels, n_skipped = read_task_file(spec, loc.path)
    info = {"split": split, "origin": "file"}
    if n_skipped:
        info["n_skipped"] = n_skipped
        info["skipped_reason"] = f"label in {sorted(spec.skip_labels)} (no gold label)"
    data = TaskData(spec.name, file_split, text_a, text_b, labels, str(loc.path), info)
    if not loc.holdout:
        return data
    seed = spec.holdout.seed if holdout_seed is None else int(holdout_seed)
    fraction = spec.holdout.eval_fraction if holdout_fraction is None else float(holdout_fraction)
    return _holdout_part(spec, split, data, seed, fraction)
