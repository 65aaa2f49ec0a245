"""Optional Hub loader: the same tasks through the `datasets` library, for online users.

`datasets` is an optional dependency (`pip install peftlab[hub]`) and is imported only here, only
when a Hub load is asked for. Nothing in peftlab's tests or offline runs needs it.
"""

from __future__ import annotations

import importlib.util
import os

from peftlab.tasks.registry import TaskSpec
from peftlab.tasks.examples import TaskData
from peftlab.errors import PeftlabError

_TRUE = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """True when the user has switched Hub access off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)."""
    return any(os.environ.get(var, "").strip().lower() in _TRUE for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def datasets_available() -> bool:
    """True when the optional `datasets` package can be imported (checked without importing it)."""
    return importlib.util.find_spec("datasets") is not None


def hub_name(spec: TaskSpec, split: str | None = None) -> str:
    """`nyu-mll/glue/rte` (+ `:validation`) — how a Hub source is written in TaskData.source."""
    name = spec.hub_id + (f"/{spec.hub_config}" if spec.hub_config else "")
    return name if split is None else f"{name}:{spec.hub_splits[split]}"


def load_hub_split(spec: TaskSpec, split: str) -> TaskData:
    """Load canonical `split` of `spec` from the Hub; label ids are checked against `spec.label_names`."""
    if hub_offline():
        raise PeftlabError(
            f"cannot load {hub_name(spec)} from the Hub: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set; "
            "unset it, or use local files via --data-dir / PEFTLAB_DATA"
        )
    if not datasets_available():
        raise PeftlabError(
            f"loading {hub_name(spec)} from the Hub needs the `datasets` package; "
            "install it with `pip install peftlab[hub]`, or use local files via --data-dir / PEFTLAB_DATA"
        )
    import datasets

    hub_split = spec.hub_splits[split]
    try:
        ds = datasets.load_dataset(spec.hub_id, spec.hub_config, split=hub_split)
    except Exception as err:  # network, auth, missing split...: all reported as one line
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise PeftlabError(
            f"could not load {hub_name(spec, split)} from the Hub ({type(err).__name__}: {first_line}); "
            "check the network, or use local files via --data-dir / PEFTLAB_DATA"
        ) from None

    col_a, col_b, col_label = spec.hub_columns
    names = getattr(ds.features.get(col_label), "names", None)
    if not spec.is_regression and names is not None and list(names) != list(spec.label_names):
        # The ids would silently mean different classes than the local files' ids: refuse.
        raise PeftlabError(
            f"{hub_name(spec)} labels are {list(names)}, peftlab expects {list(spec.label_names)}; "
            "report this to peftlab, and use local files via --data-dir meanwhile"
        )
    text_a, labels = list(ds[col_a]), list(ds[col_label])
    text_b = list(ds[col_b]) if col_b is not None else None
    # Hub marks "no gold label" (SNLI) and unlabeled test rows with -1: drop them.
    keep = [i for i, y in enumerate(labels) if spec.is_regression or y >= 0]
    n_skipped = len(labels) - len(keep)
    if n_skipped:
        text_a = [text_a[i] for i in keep]
        text_b = None if text_b is None else [text_b[i] for i in keep]
        labels = [labels[i] for i in keep]
    if not labels:
        raise PeftlabError(
            f"{hub_name(spec, split)} has no labelled rows; use local files via --data-dir / PEFTLAB_DATA"
        )
    labels = [float(y) for y in labels] if spec.is_regression else [int(y) for y in labels]
    info = {"split": split, "origin": "hub", "hub_split": hub_split}
    if n_skipped:
        info["n_skipped"] = n_skipped
        info["skipped_reason"] = "label -1 (no gold label)"
    return TaskData(spec.name, split, text_a, text_b, labels, f"hub:{hub_name(spec, split)}", info)
