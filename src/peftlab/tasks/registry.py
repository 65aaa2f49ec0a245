"""Task registry: what each benchmark task's files look like, its labels and its metrics.

Canonical names (used in run directories, configs and reports):
    RTE, SST-2, MRPC, STS-B, CoLA, QNLI, QQP, MNLI, WNLI, SNLI, AG-News
Lookup is case- and punctuation-insensitive: `rte`, `SST2`, `sst-2`, `sts_b`, `agnews`, `ag_news`
all resolve. `sst` and `sts` are accepted as short forms.

Local layout (classic `download_glue_data.py` output, tab-separated, read with quoting off):

| task  | dir         | header | text_a col        | text_b col        | label col             |
| ----- | ----------- | ------ | ----------------- | ----------------- | --------------------- |
| RTE   | glue/RTE    | yes    | 1 `sentence1`     | 2 `sentence2`     | 3 `label` (string)    |
| SST-2 | glue/SST-2  | yes    | 0 `sentence`      | -                 | 1 `label` (0/1)       |
| MRPC  | glue/MRPC   | yes*   | 3 `#1 String`     | 4 `#2 String`     | 0 `Quality` (0/1)     |
| STS-B | glue/STS-B  | yes    | 7 `sentence1`     | 8 `sentence2`     | 9 `score` (float 0-5) |
| CoLA  | glue/CoLA   | no     | 3 (sentence)      | -                 | 1 (0/1)               |
| QNLI  | glue/QNLI   | yes    | 1 `question`      | 2 `sentence`      | 3 `label` (string)    |
| QQP   | glue/QQP    | yes    | 3 `question1`     | 4 `question2`     | 5 `is_duplicate`      |
| MNLI  | glue/MNLI   | yes    | 8 `sentence1`     | 9 `sentence2`     | last `gold_label`     |
| WNLI  | glue/WNLI   | yes    | 1 `sentence1`     | 2 `sentence2`     | 3 `label` (0/1)       |
| SNLI  | glue/SNLI   | yes    | 7 `sentence1`     | 8 `sentence2`     | last `gold_label`     |
| AG-News | ag_news   | opt.   | 1 title + " " + 2 description | -     | 0 `label` (1-4)       |

*MRPC's header starts with a UTF-8 BOM; every file is read as `utf-8-sig`, which drops it.
Files with a header must have exactly as many columns in every row as the header has (MNLI's
train.tsv has 12 columns and its dev files 16; the label is the last one in both). The column
indices for QNLI/QQP/MNLI/WNLI/SNLI are those of the classic GLUE processors (BERT's
`run_classifier.py`, transformers' `glue.py`); the header's label-column name is checked so a
file of the wrong task fails loudly instead of training on the wrong column.

Label ids follow the Hugging Face `glue`/`snli`/`ag_news` datasets, so local and Hub data agree:
e.g. MNLI/SNLI entailment=0, neutral=1, contradiction=2; RTE/QNLI entailment=0, not_entailment=1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from peftlab.errors import PeftlabError

REGRESSION = "regression"
CLASSIFICATION = "single_label_classification"


@dataclass(frozen=True)
class FileLayout:
    """How to read one task's local files.

    `text_a` may be a tuple of columns that are joined with one space (AG News: title + description).
    `header`: True = first line is a header, False = none, None = detect it (first row equals
    `header_names`, case-insensitive). `n_columns`: None = as many as the header has.
    `label_header`: the header name expected at the label column (checked when a header is present).
    """

    fmt: str  # "tsv" (tab, quoting off) or "csv" (comma, standard quoting)
    header: bool | None
    text_a: int | tuple[int, ...]
    text_b: int | None
    label: int
    n_columns: int | None = None
    label_header: str | None = None
    header_names: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Holdout:
    """Derive train/dev from one file when the official train file is absent (AG News here).

    The `eval_fraction` of `source_split`'s rows becomes "dev", the rest "train"; stratified by
    label, shuffled with `seed` (sklearn `train_test_split`), so every run sees the same split.
    """

    source_split: str
    eval_fraction: float = 0.2
    seed: int = 42
    stratified: bool = True


@dataclass(frozen=True)
class TaskSpec:
    """Everything peftlab knows about one task. `num_labels == 1` means regression (STS-B)."""

    name: str
    num_labels: int
    label_names: tuple[str, ...]  # id -> name, in id order (Hub datasets order)
    main_metric: str
    metric_names: tuple[str, ...]  # main metric first
    local_dirs: tuple[str, ...]  # candidate task dirs relative to the data dir, tried in order
    split_files: Mapping[str, str]  # split -> file name inside the task dir
    layout: FileLayout
    label_map: Mapping[str, int] | None  # raw label string in the file -> id; None for regression
    hub_id: str
    hub_config: str | None
    hub_splits: Mapping[str, str]  # our split -> Hub split
    hub_columns: tuple[str, str | None, str]  # Hub text_a, text_b, label columns
    split_aliases: Mapping[str, str] = field(default_factory=dict)  # e.g. MNLI "dev" -> "dev_matched"
    skip_labels: frozenset[str] = frozenset()  # "no gold label" marks whose rows are dropped (SNLI "-")
    label_range: tuple[float, float] | None = None  # regression targets must lie in this range
    holdout: Holdout | None = None

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def problem_type(self) -> str:
        """The value for HF `config.problem_type`."""
        return REGRESSION if self.is_regression else CLASSIFICATION

    @property
    def is_pair(self) -> bool:
        """True when examples are sentence pairs (text_b is set)."""
        return self.layout.text_b is not None

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.split_files)

    @property
    def eval_split(self) -> str:
        """The split used for dev evaluation ("dev"; MNLI "dev_matched")."""
        return self.split_aliases.get("dev", "dev")

    def canonical_split(self, split: str) -> str:
        """Map an alias ("dev" for MNLI) to a split name; unknown splits raise PeftlabError."""
        split = self.split_aliases.get(split, split)
        if split not in self.split_files:
            raise PeftlabError(
                f"task {self.name} has no split {split!r}; use one of: {', '.join(self.split_files)}"
            )
        return split


def _freeze(mapping: dict) -> Mapping:
    return MappingProxyType(dict(mapping))


def _glue_tsv(task_dir: str, splits=("train", "dev")) -> dict:
    return {
        "local_dirs": (f"glue/{task_dir}", task_dir),  # also accept a data dir that *is* glue_data/
        "split_files": _freeze({s: f"{s}.tsv" for s in splits}),
    }


_BINARY_01 = _freeze({"0": 0, "1": 1})
_GLUE_SPLITS = _freeze({"train": "train", "dev": "validation"})
_ACC = ("accuracy",)

_SPECS = [
    TaskSpec(
        name="RTE", num_labels=2, label_names=("entailment", "not_entailment"),
        main_metric="accuracy", metric_names=_ACC, **_glue_tsv("RTE"),
        layout=FileLayout("tsv", True, text_a=1, text_b=2, label=3, label_header="label"),
        label_map=_freeze({"entailment": 0, "not_entailment": 1}),
        hub_id="nyu-mll/glue", hub_config="rte", hub_splits=_GLUE_SPLITS,
        hub_columns=("sentence1", "sentence2", "label"),
    ),
    TaskSpec(
        name="SST-2", num_labels=2, label_names=("negative", "positive"),
        main_metric="accuracy", metric_names=_ACC, **_glue_tsv("SST-2"),
        layout=FileLayout("tsv", True, text_a=0, text_b=None, label=1, label_header="label"),
        label_map=_BINARY_01,
        hub_id="nyu-mll/glue", hub_config="sst2", hub_splits=_GLUE_SPLITS,
        hub_columns=("sentence", None, "label"),
    ),
    TaskSpec(
        name="MRPC", num_labels=2, label_names=("not_equivalent", "equivalent"),
        main_metric="f1", metric_names=("f1", "accuracy"), **_glue_tsv("MRPC"),
        layout=FileLayout("tsv", True, text_a=3, text_b=4, label=0, label_header="Quality"),
        label_map=_BINARY_01,
        hub_id="nyu-mll/glue", hub_config="mrpc", hub_splits=_GLUE_SPLITS,
        hub_columns=("sentence1", "sentence2", "label"),
    ),
    TaskSpec(
        name="STS-B", num_labels=1, label_names=("score",),
        main_metric="pearson", metric_names=("pearson", "spearman"), **_glue_tsv("STS-B"),
        layout=FileLayout("tsv", True, text_a=7, text_b=8, label=9, label_header="score"),
        label_map=None, label_range=(0.0, 5.0),
        hub_id="nyu-mll/glue", hub_config="stsb", hub_splits=_GLUE_SPLITS,
        hub_columns=("sentence1", "sentence2", "label"),
    ),
    TaskSpec(
        name="CoLA", num_labels=2, label_names=("unacceptable", "acceptable"),
        main_metric="matthews_corr", metric_names=("matthews_corr", "accuracy"), **_glue_tsv("CoLA"),
        # columns: source code, label, author's judgment mark, sentence
        layout=FileLayout("tsv", False, text_a=3, text_b=None, label=1, n_columns=4),
        label_map=_BINARY_01,
        hub_id="nyu-mll/glue", hub_config="cola", hub_splits=_GLUE_SPLITS,
        hub_columns=("sentence", None, "label"),
    ),
    TaskSpec(
        name="QNLI", num_labels=2, label_names=("entailment", "not_entailment"),
        main_metric="accuracy", metric_names=_ACC, **_glue_tsv("QNLI"),
        layout=FileLayout("tsv", True, text_a=1, text_b=2, label=3, label_header="label"),
        label_map=_freeze({"entailment": 0, "not_entailment": 1}),
        hub_id="nyu-mll/glue", hub_config="qnli", hub_splits=_GLUE_SPLITS,
        hub_columns=("question", "sentence", "label"),
    ),
    TaskSpec(
        name="QQP", num_labels=2, label_names=("not_duplicate", "duplicate"),
        main_metric="f1", metric_names=("f1", "accuracy"), **_glue_tsv("QQP"),
        layout=FileLayout("tsv", True, text_a=3, text_b=4, label=5, label_header="is_duplicate"),
        label_map=_BINARY_01,
        hub_id="nyu-mll/glue", hub_config="qqp", hub_splits=_GLUE_SPLITS,
        hub_columns=("question1", "question2", "label"),
    ),
    TaskSpec(
        name="MNLI", num_labels=3, label_names=("entailment", "neutral", "contradiction"),
        main_metric="accuracy", metric_names=_ACC,
        **_glue_tsv("MNLI", splits=("train", "dev_matched", "dev_mismatched")),
        layout=FileLayout("tsv", True, text_a=8, text_b=9, label=-1, label_header="gold_label"),
        label_map=_freeze({"entailment": 0, "neutral": 1, "contradiction": 2}),
        split_aliases=_freeze({"dev": "dev_matched"}),
        hub_id="nyu-mll/glue", hub_config="mnli",
        hub_splits=_freeze({"train": "train", "dev_matched": "validation_matched",
                            "dev_mismatched": "validation_mismatched"}),
        hub_columns=("premise", "hypothesis", "label"),
    ),
    TaskSpec(
        name="WNLI", num_labels=2, label_names=("not_entailment", "entailment"),
        main_metric="accuracy", metric_names=_ACC, **_glue_tsv("WNLI"),
        layout=FileLayout("tsv", True, text_a=1, text_b=2, label=3, label_header="label"),
        label_map=_BINARY_01,
        hub_id="nyu-mll/glue", hub_config="wnli", hub_splits=_GLUE_SPLITS,
        hub_columns=("sentence1", "sentence2", "label"),
    ),
    TaskSpec(
        name="SNLI", num_labels=3, label_names=("entailment", "neutral", "contradiction"),
        main_metric="accuracy", metric_names=_ACC, **_glue_tsv("SNLI"),
        layout=FileLayout("tsv", True, text_a=7, text_b=8, label=-1, label_header="gold_label"),
        label_map=_freeze({"entailment": 0, "neutral": 1, "contradiction": 2}),
        skip_labels=frozenset({"-", ""}),  # annotators did not agree: no gold label (as GLUE/HF drop them)
        hub_id="stanfordnlp/snli", hub_config=None, hub_splits=_GLUE_SPLITS,
        hub_columns=("premise", "hypothesis", "label"),
    ),
    TaskSpec(
        name="AG-News", num_labels=4, label_names=("World", "Sports", "Business", "Sci/Tech"),
        main_metric="accuracy", metric_names=_ACC,
        local_dirs=("ag_news", "ag_news_csv"),  # ag_news_csv/ is the original release's folder
        split_files=_freeze({"train": "train.csv", "dev": "test.csv"}),
        layout=FileLayout("csv", None, text_a=(1, 2), text_b=None, label=0, n_columns=3,
                          header_names=("label", "title", "description")),
        label_map=_freeze({"1": 0, "2": 1, "3": 2, "4": 3}),
        holdout=Holdout(source_split="dev", eval_fraction=0.2, seed=42, stratified=True),
        hub_id="fancyzhx/ag_news", hub_config=None,
        hub_splits=_freeze({"train": "train", "dev": "test"}),
        hub_columns=("text", None, "label"),
    ),
]

TASKS: Mapping[str, TaskSpec] = _freeze({spec.name: spec for spec in _SPECS})
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def normalize_task_name(name: str) -> str:
    """Lower-case and drop everything but letters and digits: 'SST-2' -> 'sst2', 'ag_news' -> 'agnews'."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


_LOOKUP = {normalize_task_name(n): n for n in TASK_NAMES} | {"sst": "SST-2", "sts": "STS-B"}


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The TaskSpec for `name` (case/punctuation-insensitive); unknown names raise PeftlabError."""
    if isinstance(name, TaskSpec):
        return name
    canonical = _LOOKUP.get(normalize_task_name(name))
    if canonical is None:
        raise PeftlabError(
            f"unknown task {name!r}; choose one of: {', '.join(TASK_NAMES)} (case and punctuation do not matter)"
        )
    return TASKS[canonical]


def list_tasks() -> list[TaskSpec]:
    """All registered tasks, in registry order."""
    return list(TASKS.values())
