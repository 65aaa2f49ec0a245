"""θ0 probe: chance computed from the training labels, held-out report, selection on the select rows."""

from __future__ import annotations

import math

import pytest
import torch

from peftlab.heads.probe import (
    MARGIN_RULE,
    PROBE_CLASSIFIER_FILE,
    PROBE_FILE,
    PROBE_FILES,
    ClassifierFeatures,
    chance_predictor,
    collect_features,
    fit_probe,
    heldout_report,
    train_probe,
)
from peftlab.testing import tiny_batch, tiny_model


def test_probe_files_name_the_classifier_not_a_head():
    assert PROBE_FILES == (PROBE_FILE, PROBE_CLASSIFIER_FILE) == ("probe.json", "probe_classifier.safetensors")


def test_chance_is_fitted_on_skewed_training_labels():
    train = torch.tensor([1] * 18 + [0] * 2)  # 90 % class 1
    logits = chance_predictor(train, n_classes=3, regression=False)
    # add-one smoothed frequencies (0: 2, 1: 18, 2: 0 of 20): (n_c + 1) / (20 + 3)
    torch.testing.assert_close(logits.softmax(-1), torch.tensor([3 / 23, 19 / 23, 1 / 23]))
    heldout = torch.tensor([1, 1, 1, 0, 2, 1, 0, 1])  # 5 of 8 are the training majority class 1
    probe = torch.zeros(8, 3)
    report = heldout_report(probe, logits, heldout, regression=False, metric=None)
    assert report["chance_metric"] == 5 / 8  # accuracy of always predicting class 1
    expected = -(5 * math.log(19 / 23) + 2 * math.log(3 / 23) + math.log(1 / 23)) / 8
    assert report["chance_loss"] == pytest.approx(expected, rel=1e-6)
    assert report["heldout_loss"] == pytest.approx(math.log(3), rel=1e-6)  # uniform logits
    assert report["metric_name"] == "accuracy" and report["margin_rule"] == MARGIN_RULE
    # with labels skewed toward class 0 instead, chance flips: it is computed, not assumed 1/C
    flipped = chance_predictor(torch.tensor([0] * 18 + [1] * 2), 3, False)
    assert heldout_report(probe, flipped, heldout, False, None)["chance_metric"] == 2 / 8


def test_chance_for_regression_is_the_training_mean():
    train = torch.tensor([1.0, 2.0, 6.0])
    mean = chance_predictor(train, n_classes=1, regression=True)
    assert mean.tolist() == [3.0]
    heldout = torch.tensor([3.0, 5.0])
    report = heldout_report(torch.tensor([[3.0], [5.0]]), mean, heldout, regression=True, metric=None)
    assert report["chance_loss"] == pytest.approx((0 + 4) / 2) and report["heldout_loss"] == 0
    assert report["chance_metric"] is None and report["heldout_metric"] is None
    assert not report["better_than_chance"]  # 2 rows: gains (0, 4) give a t-interval that includes 0


def test_margin_rule_bootstraps_the_metric_gain():
    labels = torch.tensor([0, 1] * 20)
    chance = torch.log(torch.tensor([0.6, 0.4]))  # majority class 0: accuracy 0.5 on these rows
    probe = torch.stack([labels == 0, labels == 1], -1).float() * 2.0  # right class gets logit 2
    report = heldout_report(probe, chance, labels, False, None)
    assert report["heldout_metric"] == 1.0 and report["chance_metric"] == 0.5
    assert report["margin"]["metric_gain"] == 0.5 and report["margin"]["metric_gain_ci_low"] > 0.3
    assert report["better_than_chance"]
    noisy = probe.clone()
    noisy[:19] = noisy[:19].flip(-1)  # wrong on 19 of 40 rows: accuracy 0.525, barely above chance
    bad = heldout_report(noisy, chance, labels, False, None)
    assert bad["margin"]["metric_gain"] == pytest.approx(0.025)
    assert bad["margin"]["metric_gain_ci_low"] < 0 < bad["margin"]["metric_gain_ci_high"]
    assert not bad["better_than_chance"]


def test_regression_margin_is_the_paired_t_interval_of_the_loss_gain():
    from scipy.stats import t

    labels = torch.linspace(0, 1, 30)
    mean = torch.tensor([0.5])
    probe = (labels + 0.05 * torch.sin(torch.arange(30.0))).unsqueeze(-1)  # [N, 1], close to the labels
    report = heldout_report(probe, mean, labels, True, None)
    gain = ((labels - 0.5) ** 2 - (probe[:, 0] - labels) ** 2).double()
    half = t.ppf(0.975, 29) * float(gain.std()) / math.sqrt(30)
    assert report["margin"]["gain_mean"] == pytest.approx(float(gain.mean()))
    assert report["margin"]["gain_ci_low"] == pytest.approx(float(gain.mean()) - half)
    assert report["better_than_chance"]


def _parts(model, seed: int = 1, learnable: bool = True):
    """Cached features of 3 parts (train 64, select 32, held-out 32) of random token rows."""
    input_ids, attention_mask = tiny_batch(batch_size=128, seq_len=6, seed=seed)
    if learnable:
        labels = (input_ids[:, 0] % 2).long()
    else:
        labels = torch.randint(0, 2, (128,), generator=torch.Generator().manual_seed(seed + 100))
    features_of, parts = None, {}
    for name, (a, b) in {"train": (0, 64), "select": (64, 96), "heldout": (96, 128)}.items():
        batch = {"input_ids": input_ids[a:b], "attention_mask": attention_mask[a:b], "labels": labels[a:b]}
        features_of, x, y = collect_features(model, [batch], features_of=features_of)
        parts[name] = (x, y)
    return features_of, parts


GRID = {"modules": ("classifier", "pooler+classifier"), "lr": (1e-2, 1e-1), "l2": (0.0, 1e-2)}


def test_chosen_config_minimises_select_loss_over_the_grid():
    """Each grid point refitted on its own never beats the chosen (point, step) on the select rows."""
    model = tiny_model("bert", num_labels=2)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    features_of, parts = _parts(model)
    result = fit_probe(model, features_of, parts, grid=GRID, max_steps=40, eval_every=5, patience=100)
    chosen = result["selection"]["chosen"]
    table = result["selection"]["table"]
    assert len(table) == 8 and min(row["select_loss"] for row in table) == result["select_loss"]
    x_select, y_select = parts["select"]
    with torch.no_grad():  # the model now holds exactly the chosen weights
        held = torch.nn.functional.cross_entropy(features_of.classifier(x_select), y_select)
    assert float(held) == pytest.approx(result["select_loss"], rel=1e-6)
    for point in ({"modules": m, "lr": lr, "l2": l2} for m in GRID["modules"] for lr in GRID["lr"] for l2 in GRID["l2"]):
        model.load_state_dict(start)
        alone = fit_probe(model, features_of, parts, grid={k: (point[k],) for k in point}, max_steps=40,
                          eval_every=5, patience=100)
        assert alone["select_loss"] >= result["select_loss"] - 1e-7
        if point == {k: chosen[k] for k in point}:
            assert alone["selection"]["chosen"]["steps"] == chosen["steps"]
            assert alone["select_loss"] == pytest.approx(result["select_loss"], rel=1e-6)


def test_pooler_is_trained_only_when_selection_picks_it():
    model = tiny_model("bert", num_labels=2)
    features_of, parts = _parts(model)
    assert features_of.order == ["bert.pooler", "classifier"] and features_of.pooler == "bert.pooler"
    pooler_before = {k: v.clone() for k, v in model.bert.pooler.state_dict().items()}
    keep = fit_probe(model, features_of, parts, grid={"modules": ("classifier",), "lr": (1e-2,), "l2": (0.0,)},
                     max_steps=30)
    assert keep["modules"] == ["classifier"]
    assert all(torch.equal(v, pooler_before[k]) for k, v in model.bert.pooler.state_dict().items())
    both = fit_probe(model, features_of, parts, grid={"modules": ("pooler+classifier",), "lr": (1e-2,), "l2": (0.0,)},
                     max_steps=30)
    assert both["modules"] == ["bert.pooler", "classifier"]
    assert not all(torch.equal(v, pooler_before[k]) for k, v in model.bert.pooler.state_dict().items())


def test_train_probe_records_heldout_and_chance():
    model = tiny_model("bert", num_labels=2)
    input_ids, attention_mask = tiny_batch(batch_size=128, seq_len=6, seed=1)
    with torch.no_grad():  # a rule a linear classifier on the pooled output can learn exactly
        pooled = model.bert(input_ids=input_ids, attention_mask=attention_mask).pooler_output[:, 0]  # [B]
    labels = (pooled > pooled.median()).long()

    def part(a, b):
        return [{"input_ids": input_ids[a:b], "attention_mask": attention_mask[a:b], "labels": labels[a:b]}]

    result = train_probe(model, part(0, 64), part(64, 96), part(96, 128),
                         grid={"modules": ("classifier",), "lr": (1e-1,), "l2": (0.0,)}, max_steps=300)
    assert (result["n_train"], result["n_select"], result["n_heldout"]) == (64, 32, 32)
    majority = max(float(labels[:64].float().mean()), 1 - float(labels[:64].float().mean()))
    train_majority = int(labels[:64].float().mean() > 0.5)
    assert result["chance_metric"] == pytest.approx(float((labels[96:] == train_majority).float().mean()))
    assert 0 < majority < 1
    assert result["heldout_metric"] > result["chance_metric"] and result["better_than_chance"]
    assert result["heldout_loss"] < result["chance_loss"]


def test_probe_on_random_labels_is_not_better_than_chance():
    model = tiny_model("bert", num_labels=2)
    features_of, parts = _parts(model, learnable=False)
    fit_probe(model, features_of, parts, grid={"modules": ("classifier",), "lr": (1e-1,), "l2": (0.0,)},
              max_steps=200)
    x, y = parts["heldout"]
    with torch.no_grad():
        report = heldout_report(features_of.classifier(x), chance_predictor(parts["train"][1], 2, False), y,
                                False, None)
    assert not report["better_than_chance"]


def test_replay_check_fails_loudly_for_a_wrong_wiring():
    from peftlab.errors import PeftlabError

    model = tiny_model("bert", num_labels=2)
    features_of = ClassifierFeatures(model)
    input_ids, attention_mask = tiny_batch(batch_size=4, seq_len=5)
    features, logits = features_of.capture({"input_ids": input_ids, "attention_mask": attention_mask})
    with pytest.raises(PeftlabError, match="cannot replay"):
        features_of.check(features, logits + 1.0)
