"""Evaluating a model over a fixed list of batches: input checks, devices, eval mode, progress.

A *batch* is a dict of tensors as `peftlab.heads.subset.tokenize_batches` builds it:
`input_ids`, `attention_mask` [, `token_type_ids`] and `labels` (int64 class ids, or float32 for
regression). Every head measurement averages over ALL examples of the subset (per-example losses,
their differences and the metrics live in `heads/ablation.py`).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch

from peftlab.errors import PeftlabError

MetricFn = Callable[[torch.Tensor, torch.Tensor], float]


def check_batches(batches: Sequence[dict]) -> int:
    """Number of examples in `batches`; PeftlabError when a batch lacks `input_ids` or `labels`."""
    if not batches:
        raise PeftlabError("no batches to measure on; pass a non-empty subset (e.g. --subset-size 256)")
    n_examples = 0
    for index, batch in enumerate(batches):
        missing = [key for key in ("input_ids", "labels") if key not in batch]
        if missing:
            raise PeftlabError(
                f"batch {index} has no {', '.join(missing)}; build batches with "
                f"peftlab.heads.subset.tokenize_batches (labels are needed for the loss)"
            )
        n_examples += int(batch["input_ids"].shape[0])
    return n_examples


def to_device(batch: dict, device) -> dict:
    """The batch with every tensor moved to `device`."""
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def progress_bar(total: int, description: str, enabled: bool = True,
                 on_progress: Callable[[int, int], None] | None = None) -> Iterator[Callable[[int], None]]:
    """Yields `advance(n)`; draws a rich bar on a terminal (stderr) and calls `on_progress(done, total)`."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    show = enabled and sys.stderr.isatty()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    done = 0
    with Progress(*columns, console=Console(stderr=True), disable=not show, transient=True) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            nonlocal done
            done += n
            bar.advance(task, n)
            if on_progress is not None:
                on_progress(done, total)

        yield advance


@contextmanager
def measurement_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode (dropout off) and no KV cache for the duration; the previous state is restored after.

    Measurements are only defined without dropout, and a decoder's KV cache would make a re-run
    layer attend to keys of an earlier run.
    """
    was_training = model.training
    config = getattr(model, "config", None)
    had_cache = getattr(config, "use_cache", None)
    model.eval()
    if had_cache:
        config.use_cache = False
    try:
        yield model
    finally:
        if had_cache:
            config.use_cache = had_cache
        model.train(was_training)


def trim_padding(batch: dict) -> dict:
    """The batch without its trailing all-padding columns (right padding; `attention_mask` 0 in every row).

    For a right-padded encoder the real tokens' outputs do not depend on extra padded columns (they are
    masked out of every attention), so trimming changes nothing but float summation order.
    Left-padded batches (real tokens last) keep every column.
    """
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return batch
    n_rows, seq_len = mask.shape
    used = mask.any(dim=0).nonzero()
    keep = int(used.max()) + 1 if used.numel() else seq_len
    if keep == seq_len:
        return batch
    return {key: value[:, :keep] if isinstance(value, torch.Tensor) and value.dim() >= 2
            and tuple(value.shape[:2]) == (n_rows, seq_len) else value for key, value in batch.items()}


def split_rows(batch: dict, max_tokens: int) -> list[dict]:
    """`batch` cut into consecutive row chunks of ≤ `max_tokens` padded tokens each, each `trim_padding`-ed.

    Rows keep their order, so per-example results concatenated over the chunks are in the batch's order.
    A chunk holds at most max(1, max_tokens // T) rows (T: the trimmed batch's length); the chunks are as
    equal in rows as possible.
    """
    batch = trim_padding(batch)
    n_rows, seq_len = batch["input_ids"].shape[:2]
    rows_per_chunk = max(1, int(max_tokens) // max(1, seq_len))
    n_chunks = -(-n_rows // rows_per_chunk)
    if n_chunks == 1:
        return [batch]
    bounds = [round(i * n_rows / n_chunks) for i in range(n_chunks + 1)]
    chunks = []
    for start, end in zip(bounds, bounds[1:]):
        chunks.append(trim_padding({key: value[start:end] if isinstance(value, torch.Tensor) and value.dim() >= 1
                                    and value.shape[0] == n_rows else value for key, value in batch.items()}))
    return chunks
