"""Tasks: registry, local loaders (real GLUE + tiny fakes), Hub path (faked), metrics, errors, CLI."""

from __future__ import annotations

import importlib.machinery
import math
import sys
import time
import types
from collections import Counter

import numpy as np
import pytest

from conftest import AG_NEWS_ROWS
from peftlab.errors import PeftlabError
from peftlab.tasks import (
    TASK_NAMES,
    compute_metrics,
    f1,
    get_task,
    logits_metric,
    load_split,
    matthews_corr,
    metrics_from_logits,
    pearson,
    per_example_loss,
    read_task_file,
    resolve_data_dir,
    spearman,
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Never reach the Hub from these tests, whatever the machine has installed."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("PEFTLAB_DATA", raising=False)


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- registry

@pytest.mark.parametrize(
    "alias, canonical",
    [("RTE", "RTE"), ("rte", "RTE"), ("SST2", "SST-2"), ("sst-2", "SST-2"), ("sst", "SST-2"),
     ("sts_b", "STS-B"), ("STSB", "STS-B"), ("cola", "CoLA"), ("agnews", "AG-News"), ("ag_news", "AG-News"),
     ("AG-News", "AG-News"), ("mnli", "MNLI"), ("q.q.p", "QQP"), (" snli ", "SNLI")],
)
def test_task_names_are_case_and_punctuation_insensitive(alias, canonical):
    assert get_task(alias).name == canonical


def test_registry_holds_every_task_with_its_metrics():
    assert TASK_NAMES == ("RTE", "SST-2", "MRPC", "STS-B", "CoLA", "QNLI", "QQP", "MNLI", "WNLI", "SNLI", "AG-News")
    main = {name: get_task(name).main_metric for name in TASK_NAMES}
    assert main == {"RTE": "accuracy", "SST-2": "accuracy", "MRPC": "f1", "STS-B": "pearson",
                    "CoLA": "matthews_corr", "QNLI": "accuracy", "QQP": "f1", "MNLI": "accuracy",
                    "WNLI": "accuracy", "SNLI": "accuracy", "AG-News": "accuracy"}
    assert get_task("MRPC").metric_names == ("f1", "accuracy")
    assert get_task("QQP").metric_names == ("f1", "accuracy")
    assert get_task("STS-B").metric_names == ("pearson", "spearman")
    for name in TASK_NAMES:
        spec = get_task(name)
        assert spec.metric_names[0] == spec.main_metric
        assert len(spec.label_names) == spec.num_labels


def test_stsb_is_regression_and_classification_label_maps_are_dense():
    stsb = get_task("STS-B")
    assert (stsb.num_labels, stsb.is_regression, stsb.problem_type) == (1, True, "regression")
    rte = get_task("RTE")
    assert rte.problem_type == "single_label_classification" and not rte.is_regression
    assert dict(rte.label_map) == {"entailment": 0, "not_entailment": 1}
    for name in TASK_NAMES:
        spec = get_task(name)
        if not spec.is_regression:
            assert sorted(spec.label_map.values()) == list(range(spec.num_labels))


def test_mnli_splits_and_dev_alias():
    mnli = get_task("MNLI")
    assert mnli.splits == ("train", "dev_matched", "dev_mismatched")
    assert mnli.eval_split == "dev_matched" and mnli.canonical_split("dev") == "dev_matched"
    assert get_task("RTE").eval_split == "dev"


def test_unknown_task_lists_known_ones():
    with pytest.raises(PeftlabError) as excinfo:
        get_task("rtee")
    message = _one_line_error(excinfo)
    assert "'rtee'" in message and "RTE, SST-2, MRPC, STS-B, CoLA, QNLI, QQP, MNLI, WNLI, SNLI, AG-News" in message


def test_unknown_split_and_source():
    with pytest.raises(PeftlabError, match=r"task RTE has no split 'test'; use one of: train, dev"):
        load_split("RTE", "test")
    with pytest.raises(PeftlabError, match=r"unknown data source 'web'"):
        load_split("RTE", "train", source="web")


# ---------------------------------------------------------------- data dir resolution

def test_resolve_data_dir_order(monkeypatch, tmp_path):
    monkeypatch.setenv("PEFTLAB_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("PEFTLAB_DATA")
    monkeypatch.chdir(tmp_path)
    assert resolve_data_dir().resolve() == tmp_path / "data"


def test_env_var_and_default_dir_are_used_for_loading(monkeypatch, tiny_glue):
    monkeypatch.setenv("PEFTLAB_DATA", str(tiny_glue))
    assert load_split("rte", "train").source == str(tiny_glue / "glue/RTE/train.tsv")
    monkeypatch.delenv("PEFTLAB_DATA")
    monkeypatch.chdir(tiny_glue.parent)  # tiny_glue is <tmp>/data, i.e. ./data
    assert len(load_split("rte", "train")) == 3


# ---------------------------------------------------------------- real data (/work/shared/data)

REAL_COUNTS = {
    ("RTE", "train"): 2490, ("RTE", "dev"): 277, ("SST-2", "train"): 67349, ("SST-2", "dev"): 872,
    ("MRPC", "train"): 3668, ("MRPC", "dev"): 408, ("STS-B", "train"): 5749, ("STS-B", "dev"): 1500,
    ("CoLA", "train"): 8551, ("CoLA", "dev"): 1043,
}
# README label balance, as {id: rows}. RTE: entailment=0; SST-2/MRPC/CoLA: the file's 0/1.
REAL_BALANCE = {
    ("RTE", "train"): {0: 1249, 1: 1241}, ("RTE", "dev"): {0: 146, 1: 131},
    ("SST-2", "train"): {0: 29780, 1: 37569}, ("SST-2", "dev"): {0: 428, 1: 444},
    ("MRPC", "train"): {0: 1194, 1: 2474}, ("MRPC", "dev"): {0: 129, 1: 279},
    ("CoLA", "train"): {0: 2528, 1: 6023}, ("CoLA", "dev"): {0: 322, 1: 721},
}


@pytest.mark.parametrize("task, split", list(REAL_COUNTS))
def test_real_glue_row_counts_and_balance(data_dir, task, split):
    data = load_split(task, split, data_dir)
    assert len(data) == len(data.text_a) == REAL_COUNTS[(task, split)]
    assert data.source == str(data_dir / "glue" / task / f"{split}.tsv")
    assert data.split_info == {"split": split, "origin": "file"}
    spec = get_task(task)
    assert (data.text_b is not None) == spec.is_pair
    if data.text_b is not None:
        assert len(data.text_b) == len(data)
    if (task, split) in REAL_BALANCE:
        assert data.label_counts() == REAL_BALANCE[(task, split)]
    else:  # STS-B: float scores in [0, 5]
        assert all(isinstance(y, float) and 0.0 <= y <= 5.0 for y in data.labels)


def test_real_first_rows_are_exact(data_dir):
    rte = load_split("RTE", "train", data_dir)
    assert (rte.text_a[0], rte.text_b[0], rte.labels[0]) == (
        "No Weapons of Mass Destruction Found in Iraq Yet.", "Weapons of Mass Destruction Found in Iraq.", 1)
    sst = load_split("SST-2", "train", data_dir)
    assert (sst.text_a[0], sst.labels[0]) == ("hide new secretions from the parental units ", 0)
    mrpc = load_split("MRPC", "train", data_dir)
    assert mrpc.text_a[0] == ('Amrozi accused his brother , whom he called " the witness " , '
                              "of deliberately distorting his evidence .")
    assert mrpc.text_b[0].startswith('Referring to him as only " the witness " , Amrozi accused')
    assert mrpc.labels[0] == 1
    stsb = load_split("STS-B", "dev", data_dir)
    assert (stsb.text_a[0], stsb.text_b[0], stsb.labels[0]) == (
        "A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", 5.0)
    cola = load_split("CoLA", "dev", data_dir)  # last line has no trailing newline
    assert (cola.text_a[0], cola.labels[0]) == ("The sailors rode the breeze clear of the rocks.", 1)
    assert (cola.text_a[-1], cola.labels[-1]) == ("John talked to Bill about himself.", 1)
    assert (cola.text_a[-2], cola.labels[-2]) == ("John arranged for himself to get the prize.", 1)


def test_real_sst2_train_loads_fast(data_dir):
    load_split("SST-2", "dev", data_dir)  # warm imports / page cache
    start = time.perf_counter()
    data = load_split("SST-2", "train", data_dir)
    assert len(data) == 67349
    assert time.perf_counter() - start < 1.0


def test_real_ag_news_holdout_is_stratified_deterministic_and_disjoint(data_dir):
    full_a, _, full_labels, _ = read_task_file(get_task("ag_news"), data_dir / "ag_news" / "test.csv")
    assert len(full_a) == 7600 and Counter(full_labels) == {0: 1900, 1: 1900, 2: 1900, 3: 1900}
    assert full_a[0] == ("Fears for T N pension after talks Unions representing workers at Turner   Newall "
                         "say they are 'disappointed' after talks with stricken parent firm Federal Mogul.")
    assert full_labels[0] == 2  # file label 3 (Business) -> id 2

    train = load_split("AG-News", "train", data_dir)
    dev = load_split("agnews", "dev", data_dir)
    assert (len(train), len(dev)) == (6080, 1520)
    assert train.label_counts() == {0: 1520, 1: 1520, 2: 1520, 3: 1520}
    assert dev.label_counts() == {0: 380, 1: 380, 2: 380, 3: 380}
    # together they are exactly the file's rows, each once
    assert Counter(zip(train.text_a, train.labels)) + Counter(zip(dev.text_a, dev.labels)) == Counter(
        zip(full_a, full_labels))
    for part, data in (("train", train), ("eval", dev)):
        info = data.split_info
        assert info["origin"] == "holdout" and info["part"] == part
        assert (info["seed"], info["eval_fraction"], info["stratified"]) == (42, 0.2, True)
        assert (info["n_source"], info["n_train"], info["n_eval"]) == (7600, 6080, 1520)
        assert info["from"] == str(data_dir / "ag_news" / "test.csv")
    assert "stratified 80/20 split" in dev.note and "seed 42" in dev.note
    assert load_split("AG-News", "dev", data_dir).text_a == dev.text_a  # deterministic
    other = load_split("AG-News", "dev", data_dir, holdout_seed=7)
    assert len(other) == 1520 and other.text_a != dev.text_a and other.split_info["seed"] == 7


# ---------------------------------------------------------------- tiny fake files: every layout

def test_tiny_every_task_loads_with_the_right_columns(tiny_glue):
    rte = load_split("RTE", "train", tiny_glue)
    assert rte.text_a == ['He said "hi" to me.', "A cat sat.", "It rains."]  # bare quote kept (QUOTE_NONE)
    assert rte.text_b == ["He spoke.", "A dog sat.", "It is wet."] and rte.labels == [0, 1, 0]
    mrpc = load_split("MRPC", "train", tiny_glue)  # BOM header
    assert (mrpc.text_a, mrpc.text_b, mrpc.labels) == (["He left .", "Red ."], ["He went away .", "Blue ."], [1, 0])
    stsb = load_split("STS-B", "train", tiny_glue)
    assert (stsb.text_a, stsb.text_b, stsb.labels) == (["A plane.", "Up."], ["An air plane.", "Down."], [5.0, 0.25])
    cola = load_split("CoLA", "dev", tiny_glue)  # no header, no final newline
    assert (cola.text_a, cola.text_b, cola.labels) == (["Fine.", "Not fine."], None, [1, 0])
    qnli = load_split("QNLI", "train", tiny_glue)
    assert (qnli.text_a, qnli.text_b, qnli.labels) == (["Who?", "Why?"], ["Him.", "No."], [0, 1])
    qqp = load_split("QQP", "train", tiny_glue)
    assert (qqp.text_a, qqp.text_b, qqp.labels) == (["How old?", "Where?"], ["What age?", "When?"], [1, 0])
    wnli = load_split("WNLI", "train", tiny_glue)
    assert (wnli.text_a, wnli.labels) == (["S1.", "S3."], [1, 0])
    sst = load_split("SST-2", "dev", tiny_glue)
    assert (sst.text_a, sst.text_b, sst.labels) == (['the " quote'], None, [1])


def test_tiny_mnli_train_has_12_columns_and_dev_16(tiny_glue):
    train = load_split("MNLI", "train", tiny_glue)
    assert train.text_a == ["premise 0", "premise 1", "premise 2"] and train.labels == [0, 1, 2]
    matched = load_split("MNLI", "dev", tiny_glue)
    assert (matched.split, matched.text_a, matched.text_b, matched.labels) == (
        "dev_matched", ["matched p"], ["matched h"], [1])
    mismatched = load_split("MNLI", "dev_mismatched", tiny_glue)
    assert (mismatched.text_a, mismatched.labels) == (["mism p"], [2])


def test_tiny_snli_drops_rows_without_gold_label(tiny_glue):
    snli = load_split("SNLI", "train", tiny_glue)
    assert (snli.text_a, snli.text_b, snli.labels) == (["A man.", "Dog."], ["A person.", "Cat."], [0, 2])
    assert snli.split_info["n_skipped"] == 1


def test_tiny_ag_news_headerless_quoted_csv(tiny_glue):
    train = load_split("AG-News", "train", tiny_glue)
    dev = load_split("AG-News", "dev", tiny_glue)
    assert (len(train), len(dev)) == (16, 4)
    assert dev.label_counts() == {0: 1, 1: 1, 2: 1, 3: 1}
    expected = {(f"Title {i} Body, with comma {i}", y - 1) for i, (y, _, _) in enumerate(AG_NEWS_ROWS)}
    assert set(zip(train.text_a, train.labels)) | set(zip(dev.text_a, dev.labels)) == expected


def test_tiny_ag_news_with_header_and_with_official_train(tiny_glue):
    test_csv = tiny_glue / "ag_news" / "test.csv"
    test_csv.write_text("label,title,description\n" + "".join(f"{y},{t},\"{d}\"\n" for y, t, d in AG_NEWS_ROWS))
    assert len(load_split("AG-News", "dev", tiny_glue)) == 4  # header detected, not a data row
    (tiny_glue / "ag_news" / "train.csv").write_text('"4","T","D"\n"1","U","E"\n')
    train, dev = load_split("AG-News", "train", tiny_glue), load_split("AG-News", "dev", tiny_glue)
    assert (train.text_a, train.labels, train.split_info["origin"]) == (["T D", "U E"], [3, 0], "file")
    assert len(dev) == 20 and dev.source == str(test_csv)


def test_bad_holdout_fraction(tiny_glue):
    with pytest.raises(PeftlabError, match=r"holdout fraction must be between 0 and 1, got 1.5"):
        load_split("AG-News", "dev", tiny_glue, holdout_fraction=1.5)
    with pytest.raises(PeftlabError, match=r"^cannot split .*test.csv into train/dev with fraction 0.05"):
        load_split("AG-News", "dev", tiny_glue, holdout_fraction=0.05)  # 1 eval row for 4 classes


def test_blank_lines_carry_no_rows(tiny_glue):
    path = tiny_glue / "glue/RTE/train.tsv"
    path.write_text(path.read_text() + "\n\n")
    assert len(load_split("RTE", "train", tiny_glue)) == 3


def test_data_dir_may_be_the_glue_folder_itself(tiny_glue):
    assert load_split("RTE", "train", tiny_glue / "glue").source == str(tiny_glue / "glue/RTE/train.tsv")


# ---------------------------------------------------------------- bad input

def test_missing_data_dir_names_it_and_its_origin(tmp_path):
    with pytest.raises(PeftlabError) as excinfo:
        load_split("RTE", "train", tmp_path / "nowhere")
    message = _one_line_error(excinfo)
    assert f"data directory {tmp_path / 'nowhere'} (from --data-dir) does not exist" in message
    assert "PEFTLAB_DATA" in message and "peftlab[hub]" in message and "HF_HUB_OFFLINE" in message


def test_missing_task_file_names_every_path_tried(tiny_glue):
    (tiny_glue / "glue/RTE/dev.tsv").unlink()
    with pytest.raises(PeftlabError) as excinfo:
        load_split("RTE", "dev", tiny_glue)
    message = _one_line_error(excinfo)
    assert f"tried: {tiny_glue / 'glue/RTE/dev.tsv'}, {tiny_glue / 'RTE/dev.tsv'}" in message
    assert "glue/RTE/dev.tsv" in message.split("holding")[1]


def test_missing_file_with_local_source_and_no_datasets(tiny_glue, monkeypatch):
    (tiny_glue / "glue/QQP/train.tsv").unlink()
    with pytest.raises(PeftlabError, match=r"source='local' was asked for"):
        load_split("QQP", "train", tiny_glue, source="local")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `datasets` unimportable
    monkeypatch.setattr("peftlab.tasks.loading.datasets_available", lambda: False)
    with pytest.raises(PeftlabError, match=r"`datasets` is not installed.*peftlab\[hub\]"):
        load_split("QQP", "train", tiny_glue)


def test_malformed_row_reports_file_line_and_column_counts(tiny_glue):
    path = tiny_glue / "glue/RTE/train.tsv"
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = "1\tA cat sat.\tnot_entailment\n"  # text_b missing: 3 columns instead of 4
    path.write_text("".join(lines))
    with pytest.raises(PeftlabError) as excinfo:
        load_split("RTE", "train", tiny_glue)
    assert _one_line_error(excinfo).startswith(f"{path}:3: expected 4 tab-separated columns for task RTE, got 3")


def test_malformed_row_in_headerless_cola(tiny_glue):
    path = tiny_glue / "glue/CoLA/train.tsv"
    path.write_text(path.read_text() + "gj04\t1\tExtra\tcolumn\there\n")
    with pytest.raises(PeftlabError, match=rf"^{path}:3: expected 4 tab-separated columns for task CoLA, got 5"):
        load_split("CoLA", "train", tiny_glue)


def test_label_outside_label_set_reports_label_and_allowed(tiny_glue):
    path = tiny_glue / "glue/RTE/dev.tsv"
    path.write_text(path.read_text() + "1\tX.\tY.\tmaybe\n")
    with pytest.raises(PeftlabError) as excinfo:
        load_split("RTE", "dev", tiny_glue)
    message = _one_line_error(excinfo)
    assert message.startswith(f"{path}:3: label 'maybe' is not one of 'entailment', 'not_entailment' for task RTE")


def test_ag_news_label_outside_1_to_4(tiny_glue):
    path = tiny_glue / "ag_news" / "test.csv"
    path.write_text(path.read_text() + '"5","T","D"\n')
    with pytest.raises(PeftlabError, match=rf"^{path}:21: label '5' is not one of '1', '2', '3', '4'"):
        load_split("AG-News", "train", tiny_glue)


@pytest.mark.parametrize("bad", ["high", "5.5", "nan"])
def test_stsb_score_must_be_a_number_in_range(tiny_glue, bad):
    path = tiny_glue / "glue/STS-B/dev.tsv"
    path.write_text(path.read_text() + f"1\tg\tf\ty\to\ts\ts\tA.\tB.\t{bad}\n")
    with pytest.raises(PeftlabError, match=rf"^{path}:3: label '{bad}' is not a number in \[0, 5\]"):
        load_split("STS-B", "dev", tiny_glue)


def test_wrong_header_and_empty_file(tiny_glue):
    path = tiny_glue / "glue/SST-2/train.tsv"
    path.write_text("sentence\tpolarity\nfine\t1\n")
    with pytest.raises(PeftlabError, match=rf"^{path}:1: header column 1 is 'polarity', expected 'label'"):
        load_split("SST-2", "train", tiny_glue)
    path.write_text("")
    with pytest.raises(PeftlabError, match=rf"^{path}: file is empty"):
        load_split("SST-2", "train", tiny_glue)


@pytest.mark.parametrize(
    "task, split, rel, text, what",
    [("RTE", "dev", "glue/RTE/dev.tsv", "index\tsentence1\tsentence2\tlabel\n", "holds only a header and no data rows"),
     ("SST-2", "train", "glue/SST-2/train.tsv", "sentence\tlabel\n\n\n", "holds only a header and no data rows"),
     ("CoLA", "dev", "glue/CoLA/dev.tsv", "\n\n", "holds no data rows"),
     ("AG-News", "dev", "ag_news/test.csv", "label,title,description\n", "holds only a header and no data rows")],
)
def test_header_only_or_blank_file_is_one_error_naming_it(tiny_glue, task, split, rel, text, what):
    path = tiny_glue / rel
    path.write_text(text)
    with pytest.raises(PeftlabError) as excinfo:
        load_split(task, split, tiny_glue)
    assert _one_line_error(excinfo) == f"{path}: {what}; re-download task {task} or point --data-dir elsewhere"


def test_file_whose_rows_all_lack_a_gold_label(tiny_glue):
    path = tiny_glue / "glue/SNLI/train.tsv"
    header, *rows = path.read_text().splitlines()
    no_gold = [row for row in rows if row.split("\t")[-1] == "-"]
    assert len(no_gold) == 1  # the tiny SNLI file holds one such row
    path.write_text("\n".join([header, *no_gold]) + "\n")
    with pytest.raises(PeftlabError, match=rf"^{path}: all 1 rows have no gold label; re-download task SNLI"):
        load_split("SNLI", "train", tiny_glue)


# ---------------------------------------------------------------- Hub path (a fake `datasets`)

class _FakeDataset:
    def __init__(self, columns: dict, label_names=None):
        self._columns = columns
        self.features = {"label": types.SimpleNamespace(names=label_names)} if label_names else {}

    def __getitem__(self, column):
        return self._columns[column]


def _install_fake_datasets(monkeypatch, tables: dict):
    calls = []
    module = types.ModuleType("datasets")
    module.__spec__ = importlib.machinery.ModuleSpec("datasets", None)

    def load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return tables[(path, name, split)]

    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    return calls


def test_hub_loader_maps_columns_and_checks_label_names(monkeypatch, tmp_path):
    calls = _install_fake_datasets(monkeypatch, {
        ("nyu-mll/glue", "rte", "validation"): _FakeDataset(
            {"sentence1": ["p1", "p2"], "sentence2": ["h1", "h2"], "label": [1, 0]}, ["entailment", "not_entailment"]),
        ("stanfordnlp/snli", None, "train"): _FakeDataset(
            {"premise": ["a", "b", "c"], "hypothesis": ["x", "y", "z"], "label": [2, -1, 0]},
            ["entailment", "neutral", "contradiction"]),
        ("nyu-mll/glue", "cola", "train"): _FakeDataset(
            {"sentence": ["s"], "label": [1]}, ["acceptable", "unacceptable"]),
    })
    rte = load_split("rte", "dev", tmp_path / "empty")  # auto: no local copy -> Hub
    assert (rte.text_a, rte.text_b, rte.labels) == (["p1", "p2"], ["h1", "h2"], [1, 0])
    assert rte.source == "hub:nyu-mll/glue/rte:validation" and rte.split_info["origin"] == "hub"
    snli = load_split("snli", "train", source="hub")
    assert (snli.text_a, snli.labels, snli.split_info["n_skipped"]) == (["a", "c"], [2, 0], 1)
    with pytest.raises(PeftlabError, match=r"labels are \['acceptable', 'unacceptable'\], peftlab expects"):
        load_split("cola", "train", source="hub")
    assert calls == [("nyu-mll/glue", "rte", "validation"), ("stanfordnlp/snli", None, "train"),
                     ("nyu-mll/glue", "cola", "train")]


def test_hub_failure_and_offline_are_one_line_errors(monkeypatch, tiny_glue):
    _install_fake_datasets(monkeypatch, {})  # every load raises KeyError, like a network failure would
    with pytest.raises(PeftlabError) as excinfo:
        load_split("QNLI", "dev", source="hub")
    assert _one_line_error(excinfo).startswith("could not load nyu-mll/glue/qnli:validation from the Hub (KeyError")
    assert load_split("QNLI", "dev", tiny_glue).source.endswith("QNLI/dev.tsv")  # local wins in auto mode
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PeftlabError, match=r"HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set"):
        load_split("QNLI", "dev", source="hub")


# ---------------------------------------------------------------- metrics (hand-computed)

def test_accuracy_and_f1_hand_computed():
    # TP=2 (0,3), FP=1 (1), FN=1 (4), TN=1 (2): F1 = 2·2/(2·2+1+1) = 2/3, acc = 3/5
    result = compute_metrics("MRPC", [1, 1, 0, 1, 0], [1, 0, 0, 1, 1])
    assert list(result) == ["f1", "accuracy"]
    assert result["f1"] == pytest.approx(2 / 3) and result["accuracy"] == pytest.approx(0.6)
    assert compute_metrics("RTE", [1, 0, 1, 1], [1, 0, 0, 1]) == {"accuracy": 0.75}
    assert f1([0, 0], [0, 0]) == 0.0  # no positives anywhere: 0, not NaN


def test_matthews_hand_computed_and_against_formula():
    # TP=2, TN=2, FP=1, FN=1: (2·2 − 1·1)/sqrt(3·3·3·3) = 1/3
    result = compute_metrics("CoLA", [1, 1, 0, 1, 0, 0], [1, 0, 0, 1, 1, 0])
    assert list(result) == ["matthews_corr", "accuracy"]
    assert result["matthews_corr"] == pytest.approx(1 / 3)
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    tp, tn = np.sum((p == 1) & (y == 1)), np.sum((p == 0) & (y == 0))
    fp, fn = np.sum((p == 1) & (y == 0)), np.sum((p == 0) & (y == 1))
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert matthews_corr(p, y) == pytest.approx(expected)
    assert matthews_corr([1, 1, 1], [0, 1, 0]) == 0.0  # constant prediction


def test_pearson_spearman_hand_computed():
    # x=[1,2,3], y=[1,2,4]: r = 3 / sqrt(2 · 42/9) = 9/sqrt(84)
    assert pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(9 / math.sqrt(84))
    # ranks [1,2,3,4] vs [1,2,4,3]: rho = 1 − 6·2/(4·15) = 0.8
    assert spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)
    result = compute_metrics("STS-B", [1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    assert list(result) == ["pearson", "spearman"]
    assert result == pytest.approx({"pearson": 9 / math.sqrt(84), "spearman": 1.0})
    assert math.isnan(pearson([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]))  # undefined -> NaN


def test_metrics_from_logits():
    import torch

    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])  # argmax -> [0, 1, 0]
    assert metrics_from_logits("RTE", logits, torch.tensor([0, 1, 1])) == pytest.approx({"accuracy": 2 / 3})
    scores = np.array([[1.0], [2.0], [3.0]])  # [N, 1] -> [N]
    assert metrics_from_logits("STS-B", scores, [1.0, 2.0, 4.0])["pearson"] == pytest.approx(9 / math.sqrt(84))
    mnli = metrics_from_logits("MNLI", np.eye(3)[[2, 0, 1, 1]], [2, 0, 1, 0])
    assert mnli == {"accuracy": 0.75}


def test_metric_input_errors():
    with pytest.raises(PeftlabError, match=r"3 predictions but 2 labels for RTE"):
        compute_metrics("RTE", [0, 1, 1], [0, 1])
    with pytest.raises(PeftlabError, match=r"no examples to score for RTE"):
        compute_metrics("RTE", [], [])
    with pytest.raises(PeftlabError, match=r"class id 2 outside 0..1"):
        compute_metrics("SST-2", [0, 2], [0, 1])
    with pytest.raises(PeftlabError, match=r"must be integer class ids; use metrics_from_logits"):
        compute_metrics("SST-2", [0.3, 0.9], [0, 1])
    with pytest.raises(PeftlabError, match=r"must have shape \[N, 3\], got \(2, 2\)"):
        metrics_from_logits("MNLI", np.zeros((2, 2)), [0, 1])


def test_per_example_loss_formulas_by_hand():
    import torch

    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, -1.0]])
    losses = per_example_loss("MNLI", logits, torch.tensor([0, 2]))
    # L_i = logsumexp_c z_ic - z_i,y_i
    expected = [math.log(math.exp(2) + math.exp(1) + 1) - 2, math.log(1 + math.exp(3) + math.exp(-1)) + 1]
    assert losses.dtype == torch.float64 and losses.shape == (2,)
    assert losses.tolist() == pytest.approx(expected, rel=1e-12)
    squared = per_example_loss("STS-B", np.array([[1.0], [2.5]]), [1.5, 4.5])  # [N, 1] -> [N]
    assert squared.tolist() == pytest.approx([0.25, 4.0], rel=1e-12)
    assert per_example_loss(1, [1.0, 2.5], [1.5, 4.5]).tolist() == squared.tolist()  # by num_labels


@pytest.mark.parametrize("num_labels", [2, 1])
def test_per_example_loss_mean_is_the_models_own_loss(num_labels):
    import torch

    from peftlab.testing import tiny_batch, tiny_model

    model = tiny_model("bert", num_labels=num_labels).eval()
    input_ids, attention_mask = tiny_batch(batch_size=6, seed=3)
    labels = torch.linspace(0.0, 5.0, 6) if num_labels == 1 else torch.tensor([0, 1, 1, 0, 1, 0])
    with torch.no_grad():
        outputs = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    losses = per_example_loss(num_labels, outputs.logits, labels)
    assert losses.shape == (6,) and bool((losses >= 0).all())
    assert float(losses.mean()) == pytest.approx(float(outputs.loss), rel=1e-5)


def test_logits_metric_hand_computed_and_against_numpy():
    import torch

    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.5, 0.4]])  # argmax -> [0, 1, 0, 0]
    name, fn = logits_metric(2)
    assert (name, fn(logits, torch.tensor([0, 1, 1, 1]))) == ("accuracy", 0.5)
    name, fn = logits_metric(1)
    assert name == "pearson"
    assert fn(torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([1.0, 2.0, 4.0])) == pytest.approx(9 / math.sqrt(84))
    generator = torch.Generator().manual_seed(0)
    outputs, gold = torch.randn(50, 3, generator=generator), torch.randint(0, 3, (50,), generator=generator)
    assert logits_metric(3)[1](outputs, gold) == float((outputs.argmax(-1) == gold).double().mean())
    scores, targets = torch.randn(50, 1, generator=generator), torch.randn(50, generator=generator)
    reference = np.corrcoef(scores[:, 0].double().numpy(), targets.double().numpy())[0, 1]
    assert logits_metric(1)[1](scores, targets) == pytest.approx(reference, rel=1e-10)


def test_per_example_loss_input_errors():
    with pytest.raises(PeftlabError, match=r"logits for MNLI must have shape \[N, 3\] with N labels, got logits \(2, 2\)"):
        per_example_loss("MNLI", np.zeros((2, 2)), [0, 1])
    with pytest.raises(PeftlabError, match=r"labels for RTE hold a class id outside 0..1"):
        per_example_loss("RTE", np.zeros((2, 2)), [0, 2])
    with pytest.raises(PeftlabError, match=r"labels for RTE must be integer class ids"):
        per_example_loss("RTE", np.zeros((2, 2)), [0.0, 1.0])
    with pytest.raises(PeftlabError, match=r"regression logits for STS-B must have shape \[N\] or \[N, 1\]"):
        per_example_loss("STS-B", np.zeros((3, 2)), [0.0, 1.0, 2.0])


# ---------------------------------------------------------------- `peftlab tasks`

def _run_cli(args, capsys, monkeypatch) -> tuple[int, str]:
    from peftlab.cli import main

    monkeypatch.setenv("COLUMNS", "250")  # one table row per line
    with pytest.raises(SystemExit) as excinfo:
        main(args)
    return excinfo.value.code, capsys.readouterr().out


def test_cli_tasks_on_real_data(data_dir, capsys, monkeypatch):
    code, out = _run_cli(["tasks", "--data-dir", str(data_dir)], capsys, monkeypatch)
    assert code == 0
    assert f"data dir {data_dir} (from --data-dir)" in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.startswith("│")}
    assert list(rows) == list(TASK_NAMES)
    assert "glue/RTE (train.tsv, dev.tsv)" in rows["RTE"] and "accuracy" in rows["RTE"]
    assert "pearson, spearman" in rows["STS-B"] and "1 (regr.)" in rows["STS-B"]
    assert "matthews_corr, accuracy" in rows["CoLA"]
    assert "missing (tried: glue/QNLI/train.tsv, QNLI/train.tsv, glue/QNLI/dev.tsv, QNLI/dev.tsv)" in rows["QNLI"]
    assert "ag_news/test.csv → train/dev = stratified 80/20 split, seed 42" in rows["AG-News"]
    assert "Hub fallback for missing tasks: off (HF_HUB_OFFLINE)" in out


def test_cli_tasks_partial_and_missing_dir(tiny_glue, tmp_path, capsys, monkeypatch):
    (tiny_glue / "glue/MNLI/dev_mismatched.tsv").unlink()
    monkeypatch.setenv("PEFTLAB_DATA", str(tiny_glue))
    code, out = _run_cli(["tasks"], capsys, monkeypatch)
    assert code == 0 and "(from $PEFTLAB_DATA)" in out
    assert ("glue/MNLI (train.tsv, dev_matched.tsv); dev_mismatched missing "
            "(tried: glue/MNLI/dev_mismatched.tsv, MNLI/dev_mismatched.tsv)") in out
    code, out = _run_cli(["tasks", "--data-dir", str(tmp_path / "none")], capsys, monkeypatch)
    assert code == 0 and f"data directory {tmp_path / 'none'} does not exist" in out
