"""`TaskData`: the examples of one split of one task, plus where they came from."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TaskData:
    """Parallel lists of one split: `text_a[i]`, `text_b[i]` (None for single-sentence tasks), `labels[i]`.

    `labels` are class ids (int) or regression targets (float, STS-B). `source` is the file path
    or `hub:<id>[/<config>]:<split>`. `split_info` says how the split was made, for the run config:
    always `{"split", "origin"}` (origin "file", "holdout" or "hub"); a holdout adds
    `from, eval_fraction, seed, stratified, part, n_source`; dropped rows add `n_skipped` with the reason.
    """

    task: str
    split: str
    text_a: list[str]
    text_b: list[str] | None
    labels: list[Any]
    source: str
    split_info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def note(self) -> str:
        """One human line describing how this split was obtained (goes into logs and reports)."""
        info = self.split_info
        if info.get("origin") == "holdout":
            pct = round(100 * info["eval_fraction"])
            kind = "stratified" if info["stratified"] else "random"
            return (
                f"{self.task} {self.split}: {len(self)} rows = {info['part']} part of a {kind} "
                f"{100 - pct}/{pct} split of {self.source} (seed {info['seed']})"
            )
        return f"{self.task} {self.split}: {len(self)} rows from {self.source}"

    def label_counts(self) -> dict[Any, int]:
        """Rows per label id, sorted by id (classification only)."""
        return dict(sorted(Counter(self.labels).items()))

    def subset(self, indices) -> "TaskData":
        """A new TaskData holding the rows at `indices`, in that order (split_info is copied)."""
        indices = [int(i) for i in indices]
        return TaskData(
            task=self.task,
            split=self.split,
            text_a=[self.text_a[i] for i in indices],
            text_b=None if self.text_b is None else [self.text_b[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            source=self.source,
            split_info=dict(self.split_info),
        )
