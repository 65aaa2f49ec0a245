"""training/head_init.py: a regression head's output bias starts at the training-label mean."""

from __future__ import annotations

import pytest
import torch

from peftlab.errors import PeftlabError
from peftlab.testing import FAMILIES, tiny_model
from peftlab.training.head_init import init_regression_bias, output_layer


@pytest.mark.parametrize("family", FAMILIES)
def test_mean_rule_makes_the_initial_prediction_the_label_mean(family):
    """For every family with an output bias, logits at θ0 shift by exactly mean(y) (the bias starts at 0)."""
    model = tiny_model(family, num_labels=1).eval()
    name, layer = output_layer(model, 1)
    assert layer.out_features == 1
    ids = torch.randint(3, 50, (3, 7))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    labels = [0.0, 5.0, 2.5, 3.1]
    record = init_regression_bias(model, labels, "mean")
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert record["module"] == name and record["rule"] == "mean"
    if layer.bias is None:
        assert record["value"] is None and "no bias" in record["note"]
        torch.testing.assert_close(after, before, atol=0, rtol=0)
    else:
        assert record["value"] == pytest.approx(sum(labels) / 4)
        torch.testing.assert_close(after - before, torch.full_like(before, sum(labels) / 4), atol=1e-5, rtol=0)


def test_zero_rule_leaves_the_head_alone_and_bad_input_is_one_line():
    model = tiny_model("bert", num_labels=1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert init_regression_bias(model, [1.0, 2.0], "zero")["value"] is None
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with pytest.raises(PeftlabError, match="unknown regression_bias 'median'; choose from mean, zero"):
        init_regression_bias(model, [1.0], "median")
    with pytest.raises(PeftlabError, match="must be finite numbers"):
        init_regression_bias(model, [1.0, float("nan")], "mean")
    with pytest.raises(PeftlabError, match="no 1-output nn.Linear"):
        init_regression_bias(tiny_model("bert", num_labels=2), [1.0], "mean")
