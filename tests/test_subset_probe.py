"""Eval subset (deterministic, split rule, errors) and the θ0 probe (replay + training) on tiny models."""

from __future__ import annotations

import json

import pytest
import torch

from peftlab.errors import PeftlabError
from peftlab.heads.probe import ClassifierFeatures, classifier_state, probe_splits, train_probe
from peftlab.heads.subset import make_subset, subset_indices, tokenize_batches, write_subset
from peftlab.testing import FAMILIES, tiny_batch, tiny_model


def _add_rte_rows(data_dir, n_train: int, n_dev: int):
    """Replace the tiny RTE files by `n_train` / `n_dev` generated rows."""
    header = "index\tsentence1\tsentence2\tlabel\n"
    label = ("entailment", "not_entailment")
    for name, n in (("train", n_train), ("dev", n_dev)):
        rows = "".join(f"{i}\tsentence {i} is here.\tclaim {i % 7}.\t{label[i % 2]}\n" for i in range(n))
        (data_dir / "glue" / "RTE" / f"{name}.tsv").write_text(header + rows)


def test_subset_indices_match_numpy_rule_and_are_stable():
    import numpy as np

    got = subset_indices(100, 10, 999)
    assert got == sorted(np.random.default_rng(999).choice(100, 10, replace=False).tolist())
    assert got == subset_indices(100, 10, 999)
    assert got != subset_indices(100, 10, 998)
    assert len(set(got)) == 10


def test_subset_split_rule_and_bytes(tiny_glue, tmp_path):
    _add_rte_rows(tiny_glue, n_train=50, n_dev=12)
    small = make_subset("rte", size=8, seed=3, data_dir=tiny_glue)
    assert small["split"] == "dev" and small["task"] == "RTE" and small["size"] == 8
    big = make_subset("RTE", size=20, seed=3, data_dir=tiny_glue)  # dev (12 rows) too small -> train
    assert big["split"] == "train" and big["source"].endswith("train.tsv")
    forced = make_subset("RTE", size=8, seed=3, split="train", data_dir=tiny_glue)
    assert forced["split"] == "train"
    a = write_subset(tmp_path / "a", big).read_bytes()
    b = write_subset(tmp_path / "b", make_subset("RTE", size=20, seed=3, data_dir=tiny_glue)).read_bytes()
    assert a == b
    assert set(json.loads(a)) == {"task", "split", "indices", "size", "seed", "source"}


def test_subset_larger_than_split_is_one_line_error(tiny_glue):
    with pytest.raises(PeftlabError) as err:
        make_subset("RTE", size=10, split="dev", data_dir=tiny_glue)
    assert "larger than the RTE dev split (1 rows)" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(PeftlabError, match="larger than the RTE train split"):
        make_subset("RTE", size=10, data_dir=tiny_glue)


def test_probe_rows_exclude_subset_and_are_disjoint():
    subset = {"task": "RTE", "split": "train", "indices": list(range(0, 40, 2)), "size": 20, "seed": 5}
    parts = probe_splits(40, subset, n_train=100, n_select=25, n_heldout=25)
    rows = parts["train"] + parts["select"] + parts["heldout"]
    assert sorted(rows) == list(range(1, 40, 2))  # every row not in the subset, none of it, each once
    assert [len(parts[k]) for k in ("train", "select", "heldout")] == [14, 3, 3]  # 4:1:1 of the 20 free rows
    assert probe_splits(40, subset, 8, 2, 2) == probe_splits(40, subset, 8, 2, 2)
    assert [len(v) for v in probe_splits(40, subset, 8, 2, 2).values()] == [8, 2, 2]
    dev_subset = {**subset, "split": "dev"}  # a dev subset excludes no train rows
    assert len(sum(probe_splits(40, dev_subset, 100, 25, 25).values(), [])) == 40
    with pytest.raises(PeftlabError, match="smaller --subset-size"):
        probe_splits(20, {**subset, "indices": list(range(19))}, 5, 1, 1)


def test_tokenize_batches_shapes_and_labels():
    from peftlab.models import load_tokenizer

    tok = load_tokenizer(None)
    batches = tokenize_batches(tok, ["a b c", "d", "e f"], ["x", "y z", "w"], [0, 1, 0], max_len=16, batch_size=2)
    assert [b["input_ids"].shape[0] for b in batches] == [2, 1]
    assert batches[0]["labels"].tolist() == [0, 1] and batches[0]["labels"].dtype == torch.long
    assert batches[0]["attention_mask"][1].sum() < batches[0]["attention_mask"].shape[1]  # right padded
    reg = tokenize_batches(tok, ["a"], None, [2.5], max_len=16, batch_size=4, regression=True)
    assert reg[0]["labels"].dtype == torch.float32


@pytest.mark.parametrize("family", FAMILIES)
def test_probe_replays_classifier_exactly(family):
    """Cached features + the classifier modules reproduce the model's logits (padding in row 0)."""
    model = tiny_model(family, num_labels=3)
    input_ids, attention_mask = tiny_batch(batch_size=4, seq_len=9)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    features_of = ClassifierFeatures(model)
    features, logits = features_of.capture(batch)
    assert features.shape[0] == 4
    with torch.no_grad():
        replay = features_of.classifier(features)
    torch.testing.assert_close(replay, logits, atol=1e-5, rtol=1e-5)
    if family == "deberta-v2":
        assert features_of.order == ["pooler", "classifier"]


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_train_probe_changes_only_the_classifier_and_fits(family):
    model = tiny_model(family, num_labels=2)
    input_ids, attention_mask = tiny_batch(batch_size=48, seq_len=6, seed=1)
    labels = (input_ids[:, 0] % 2).long()  # a rule the classifier can learn from the first token

    def part(a, b):
        return [{"input_ids": input_ids[a:b], "attention_mask": attention_mask[a:b], "labels": labels[a:b]}]

    body_before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_probe(model, part(0, 32), part(32, 40), part(40, 48),
                         grid={"modules": ("classifier", "pooler+classifier"), "lr": (1e-2,), "l2": (0.0,)},
                         max_steps=150)
    trained_keys = set(classifier_state(model, result["modules"]))
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], body_before[k])}
    assert changed and changed <= trained_keys  # only the chosen classifier modules moved
    assert result["train_loss"] < result["train_loss_before"]
    assert not any(p.grad is not None for n, p in model.named_parameters() if n not in trained_keys)
    if family == "llama":  # no pooler: the pooler grid point does not exist
        assert {row["modules"] for row in result["selection"]["table"]} == {"classifier"}
