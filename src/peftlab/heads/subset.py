"""The fixed evaluation subset every head measurement of a run uses (`eval_subset.json`).

Which examples (same rule as the seed pipeline):
    split   = the task's dev split, unless it holds fewer rows than `size` → the TRAIN split
              (`split=` overrides; RTE dev has 277 rows, so the default 1024 comes from train)
    indices = sorted(numpy.random.default_rng(seed).choice(n_rows, size, replace=False))
Defaults: size 1024, seed 999. The same (task, split, size, seed, data file) always gives the same
indices, and `eval_subset.json` is written with sorted keys, so it is the same byte for byte.

The subset is tokenized with the run's tokenizer and `max_len` from its `run_config.json`, in fixed
batches padded to the longest row of each batch. The rows are batched in order of token length
(`length_order`; stable, so ties keep the order of `indices`): each batch then holds rows of similar
length and pads little (SST-2 dev, 512 rows, batch 32: 26 instead of 48 tokens per row), which makes
every sweep over the subset cheaper. Means over the subset do not depend on the order; per-example
outputs (`importance_*_per_example.npy`) are put back in the order of `indices` by the caller
(`subset_batches(..., with_order=True)` gives the permutation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftlab.errors import PeftlabError

SUBSET_FILE = "eval_subset.json"
DEFAULT_SUBSET_SIZE = 1024
DEFAULT_SUBSET_SEED = 999


def subset_indices(n_rows: int, size: int, seed: int) -> list[int]:
    """`size` distinct row ids out of `n_rows`, drawn with numpy's PCG64 `default_rng(seed)`, sorted."""
    import numpy as np

    chosen = np.random.default_rng(seed).choice(n_rows, size=size, replace=False)
    return sorted(int(i) for i in chosen)


def choose_split(task: str, size: int, split: str | None = None, data_dir: str | None = None):
    """(canonical split name, TaskData) for the subset: dev unless dev is smaller than `size`, then train."""
    from peftlab.tasks import get_task, load_split

    spec = get_task(task)
    if split is not None:
        split = spec.canonical_split(split)
        return split, load_split(spec, split, data_dir)
    dev = load_split(spec, spec.eval_split, data_dir)
    if len(dev.labels) >= size:
        return spec.eval_split, dev
    return "train", load_split(spec, "train", data_dir)


def make_subset(
    task: str,
    size: int = DEFAULT_SUBSET_SIZE,
    seed: int = DEFAULT_SUBSET_SEED,
    split: str | None = None,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """The subset record `{"task","split","indices","size","seed","source"}` (see module docstring)."""
    if size < 1:
        raise PeftlabError(f"subset size must be >= 1, got {size}; pass e.g. --subset-size 256")
    split, data = choose_split(task, size, split, data_dir)
    n_rows = len(data.labels)
    if size > n_rows:
        raise PeftlabError(
            f"subset size {size} is larger than the {data.task} {split} split ({n_rows} rows); "
            f"pass --subset-size {n_rows} or smaller"
        )
    return {
        "task": data.task,
        "split": split,
        "indices": subset_indices(n_rows, size, seed),
        "size": size,
        "seed": seed,
        "source": str(data.source),
    }


def write_subset(run_dir: str | Path, subset: dict[str, Any]) -> Path:
    """Write `eval_subset.json` atomically, keys sorted and indices on one line (stable bytes)."""
    import json

    from peftlab.io import atomic_write_text

    return atomic_write_text(Path(run_dir) / SUBSET_FILE, json.dumps(subset, sort_keys=True) + "\n")


def read_subset(run_dir: str | Path) -> dict[str, Any]:
    """The run's `eval_subset.json`, or a PeftlabError saying to run the `subset` step first."""
    from peftlab.io import read_json

    path = Path(run_dir) / SUBSET_FILE
    if not path.is_file():
        raise PeftlabError(f"{path} does not exist; run `peftlab measure {run_dir} --steps subset` first")
    return read_json(path)


def subset_rows(data, indices) -> tuple[list[str], list[str] | None, list]:
    """(text_a, text_b, labels) of the rows at `indices`, in that order."""
    text_a = [data.text_a[i] for i in indices]
    text_b = [data.text_b[i] for i in indices] if data.text_b is not None else None
    labels = [data.labels[i] for i in indices]
    return text_a, text_b, labels


def load_subset_rows(subset: dict[str, Any], data_dir: str | None = None):
    """(text_a, text_b, labels) of the subset's examples, re-read from the task files."""
    from peftlab.tasks import load_split

    data = load_split(subset["task"], subset["split"], data_dir)
    if len(data.labels) <= max(subset["indices"]):
        raise PeftlabError(
            f"the {subset['task']} {subset['split']} split now has {len(data.labels)} rows but eval_subset.json "
            f"indexes row {max(subset['indices'])}; the data changed — re-run with --force"
        )
    return subset_rows(data, subset["indices"])


def tokenize_batches(
    tokenizer,
    text_a: list[str],
    text_b: list[str] | None,
    labels: list,
    max_len: int,
    batch_size: int,
    regression: bool = False,
) -> list[dict[str, Any]]:
    """Fixed batches of model inputs: `input_ids, attention_mask` (+ `token_type_ids`) and `labels`.

    Each batch is padded to its longest row (right padding; HF sequence classifiers of decoder
    families find the last non-pad token themselves). Labels are int64 class ids, or float32 for
    regression (num_labels = 1).
    """
    import torch

    if batch_size < 1:
        raise PeftlabError(f"batch size must be >= 1, got {batch_size}; pass e.g. --batch-size 32")
    padding_side = getattr(tokenizer, "padding_side", "right")
    tokenizer.padding_side = "right"
    batches = []
    try:
        for start in range(0, len(text_a), batch_size):
            stop = start + batch_size
            args = (text_a[start:stop],) if text_b is None else (text_a[start:stop], text_b[start:stop])
            enc = tokenizer(*args, truncation=True, max_length=max_len, padding="longest", return_tensors="pt")
            batch = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            dtype = torch.float32 if regression else torch.long
            batch["labels"] = torch.tensor(labels[start:stop], dtype=dtype)
            batches.append(batch)
    finally:
        tokenizer.padding_side = padding_side
    return batches


def length_order(tokenizer, text_a: list[str], text_b: list[str] | None, max_len: int) -> list[int]:
    """Row positions sorted by token length after truncation to `max_len` (stable: ties keep their order).

    Batching rows in this order pads each batch to a length close to its rows' own, instead of to the
    longest of a random batch.
    """
    import numpy as np

    if not text_a:
        return []
    args = (text_a,) if text_b is None else (text_a, text_b)
    lengths = [len(ids) for ids in tokenizer(*args, truncation=True, max_length=max_len)["input_ids"]]
    return [int(i) for i in np.argsort(lengths, kind="stable")]


def reorder(values: list | None, order: list[int]) -> list | None:
    """values[order[0]], values[order[1]], ... (None stays None)."""
    return None if values is None else [values[i] for i in order]


def subset_batches(run_dir: str | Path, tokenizer, batch_size: int, subset: dict[str, Any] | None = None,
                   with_order: bool = False):
    """The run's eval subset tokenized for the measurement engines (tokenizer + max_len of the run),
    batched in `length_order`.

    With `with_order`, returns (batches, order): example j of the concatenated batches is subset row
    order[j] (a position in `indices`), so a per-example vector v in batch order goes back to the order
    of `indices` as `out[order] = v`.
    """
    from peftlab.tasks import get_task

    config = run_config(run_dir)
    subset = subset if subset is not None else read_subset(run_dir)
    text_a, text_b, labels = load_subset_rows(subset, config.get("data_dir"))
    max_len = int(config.get("max_len") or 128)
    order = length_order(tokenizer, text_a, text_b, max_len)
    batches = tokenize_batches(tokenizer, reorder(text_a, order), reorder(text_b, order), reorder(labels, order),
                               max_len, batch_size, regression=get_task(subset["task"]).is_regression)
    return (batches, order) if with_order else batches


def run_config(run_dir: str | Path) -> dict[str, Any]:
    """The `config` dict of the run's `run_config.json` (TrainConfig fields)."""
    from peftlab.runs import read_run_config

    return dict(read_run_config(run_dir).get("config", {}))
