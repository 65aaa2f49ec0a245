"""Plasticity (G, F): per-example gate gradients in one backward equal a loop over single examples."""

from __future__ import annotations

import pytest
import torch

from peftlab.errors import PeftlabError
from peftlab.heads.gate import head_gate, ones_gate
from peftlab.heads.plasticity import gradfisher
from peftlab.testing import FAMILIES



def per_example_loop(model, batches):
    """G, F from one forward + backward per single example (the obvious, slow reference)."""
    grads = []
    for batch in batches:
        for row in range(batch["labels"].shape[0]):
            single = {key: value[row:row + 1] for key, value in batch.items()}
            if "attention_mask" in single:  # drop the row's padding: a lone example is not padded
                length = int(single["attention_mask"].sum())
                single = {key: value[:, :length] if key != "labels" else value for key, value in single.items()}
            gate = ones_gate(model, requires_grad=True)
            with head_gate(model, gate):
                (grad,) = torch.autograd.grad(model(**single).loss, gate)
            grads.append(grad)
    grads = torch.stack(grads)  # [N, n_layers, n_heads]
    return grads.abs().mean(0), grads.square().mean(0), grads


@pytest.mark.parametrize("family", FAMILIES)
def test_gradfisher_equals_a_loop_over_single_examples(family, loud_tiny_model, tiny_batches):
    model, batches = loud_tiny_model(family), tiny_batches()
    rows = gradfisher(model, batches, progress=False)
    grad_mean, fisher, grads = per_example_loop(model, batches)
    n = grads.shape[0]
    grad_se = grads.abs().double().std(0) / n ** 0.5  # torch std: ddof = 1
    fisher_se = grads.square().double().std(0) / n ** 0.5
    assert [(r["layer"], r["head"]) for r in rows] == [(layer, head) for layer in range(2) for head in range(4)]
    for row in rows:
        assert row["G"] == pytest.approx(float(grad_mean[row["layer"], row["head"]]), abs=1e-6, rel=1e-5)
        assert row["F"] == pytest.approx(float(fisher[row["layer"], row["head"]]), abs=1e-6, rel=1e-5)
        assert row["G_se"] == pytest.approx(float(grad_se[row["layer"], row["head"]]), abs=1e-6, rel=1e-4)
        assert row["F_se"] == pytest.approx(float(fisher_se[row["layer"], row["head"]]), abs=1e-6, rel=1e-4)
        assert (row["n_examples"], row["batch_size"], row["per"]) == (5, 3, "example")
    assert max(r["G"] for r in rows) > 1e-2 and max(r["G_se"] for r in rows) > 1e-3
    assert list(rows[0]) == ["layer", "head", "G", "G_se", "F", "F_se", "n_examples", "batch_size", "per"]


def test_gradfisher_regression(loud_tiny_model, tiny_batches):
    model, batches = loud_tiny_model("gpt2", num_labels=1), tiny_batches(regression=True)
    rows = gradfisher(model, batches, progress=False)
    grad_mean, _, _ = per_example_loop(model, batches)
    assert rows[5]["G"] == pytest.approx(float(grad_mean[1, 1]), abs=1e-6, rel=1e-5)


def test_gradfisher_leaves_parameter_grads_and_mode_alone(loud_tiny_model, tiny_batches):
    model = loud_tiny_model("bert").train()
    gradfisher(model, tiny_batches(), progress=False)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_unknown_per_is_a_peftlab_error(loud_tiny_model, tiny_batches):
    with pytest.raises(PeftlabError, match="per='batch' is not supported; use per='example'"):
        gradfisher(loud_tiny_model("bert"), tiny_batches(), per="batch")


def test_single_example_has_no_standard_error(loud_tiny_model, tiny_batches):
    batch = {k: v[:1] for k, v in tiny_batches()[0].items()}
    rows = gradfisher(loud_tiny_model("bert"), [batch], progress=False)
    assert all(r["G_se"] is None and r["F_se"] is None and r["G"] >= 0 for r in rows)
