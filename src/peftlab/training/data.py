"""Turn a `TaskData` split into tokenized examples, and a seeded, resumable training sampler."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler


class TokenizedSplit(Dataset):
    """A list of per-example dicts (`input_ids`, `attention_mask`, [`token_type_ids`], `labels`), unpadded.

    Padding happens per batch in `DataCollatorWithPadding` (dynamic padding), so a batch is only as
    long as its longest example.
    """

    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]

    @property
    def lengths(self) -> list[int]:
        return [len(row["input_ids"]) for row in self.rows]


def model_input_keys(model) -> set[str] | None:
    """Keyword inputs `model.forward` accepts (None = it takes **kwargs, keep everything)."""
    params = inspect.signature(model.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) and "input_ids" not in params:
        return None
    return set(params)


def tokenize_split(data, tokenizer, max_len: int, is_regression: bool, keep_keys: set[str] | None) -> TokenizedSplit:
    """Tokenize `(text_a, text_b)` pairs, truncated to `max_len` tokens (longest-first for pairs).

    `keep_keys`: tokenizer outputs the model accepts (e.g. LLaMA has no `token_type_ids`).
    """
    encoded = tokenizer(data.text_a, data.text_b, truncation=True, max_length=max_len)
    keys = [k for k in encoded.keys() if keep_keys is None or k in keep_keys]
    label_cast = float if is_regression else int
    rows = []
    for i, label in enumerate(data.labels):
        row = {key: encoded[key][i] for key in keys}
        row["labels"] = label_cast(label)
        rows.append(row)
    return TokenizedSplit(rows)


class EpochSeededSampler(Sampler[int]):
    """Training order that is a pure function of `(seed, epoch)`, optionally grouped by length.

    Why not the Trainer's own samplers: `LengthGroupedSampler` draws from the global RNG when it
    is iterated, so a run resumed in a later epoch would see a different order than an
    uninterrupted one. Re-seeding a private generator at `set_epoch` (which the Trainer calls at
    every epoch start, also after resuming) makes resumed and uninterrupted runs identical.
    Grouping itself is the library's `get_length_grouped_indices` (random mega-batches, each
    sorted by length), so batches are short and padding is small.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group_by_length: bool):
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        if self.group_by_length:
            return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))
        return iter(torch.randperm(len(self.lengths), generator=generator).tolist())
