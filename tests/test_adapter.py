"""Houlsby adapters (methods/adapter.py): placement, size, init, trainable set, save/load, errors."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from peftlab.arch import get_arch
from peftlab.config import load_config
from peftlab.errors import PeftlabError
from peftlab.methods import get_method
from peftlab.methods.adapter import INIT_STD, BottleneckAdapter, adapter_modules, adapter_param_count
from peftlab.methods.base import trainable_counts
from peftlab.testing import tiny_batch, tiny_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

ADAPTER = get_method("adapter")
ADAPTER_FAMILIES = ("bert", "roberta", "electra", "deberta-v2")


def make_cfg(**overrides):
    values = dict(adapter_bottleneck=5, adapter_act="gelu", adapter_ln=False, seed=1)
    return SimpleNamespace(**{**values, **overrides})


def logits_of(model, batch=None):
    input_ids, attention_mask = batch or tiny_batch()
    return model(input_ids=input_ids, attention_mask=attention_mask).logits


def perturb(params, seed=3, scale=0.1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in params:
            p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.mark.parametrize("family", ADAPTER_FAMILIES)
def test_two_adapters_per_layer_with_2db_plus_b_plus_d_parameters(family):
    base = tiny_model(family)
    model = ADAPTER.apply(copy.deepcopy(base), make_cfg())
    adapters = adapter_modules(model)
    d, b, n_layers = 32, 5, 2
    assert len(adapters) == 2 * n_layers
    assert all(sum(p.numel() for p in a.parameters()) == 2 * d * b + b + d == adapter_param_count(d, b)
               for _, a in adapters)
    counts = trainable_counts(ADAPTER, model)
    n_classifier = sum(p.numel() for c in get_arch(base).classifier if hasattr(base, c)
                       for p in getattr(base, c).parameters())
    assert counts["without_classifier"] == 2 * n_layers * (2 * d * b + b + d)
    assert counts["with_classifier"] == counts["without_classifier"] + n_classifier


@pytest.mark.parametrize("family", ADAPTER_FAMILIES)
def test_adapter_at_init_changes_logits_by_less_than_1e_5(family):
    # Not exactly 0: up(act(down(h))) with σ = 1e-2 weights is ~1e-4·|h| per entry; the measured change on
    # these tiny models is ~1e-7, far below the asserted bound.
    base = tiny_model(family)
    model = ADAPTER.apply(copy.deepcopy(base), make_cfg(adapter_bottleneck=16))
    diff = (logits_of(model) - logits_of(base)).abs().max()
    assert 0 < diff < 1e-5


def test_init_is_truncated_normal_zero_bias_and_seeded():
    a = ADAPTER.apply(tiny_model(), make_cfg(adapter_bottleneck=64, seed=2))
    b = ADAPTER.apply(tiny_model(), make_cfg(adapter_bottleneck=64, seed=2))
    c = ADAPTER.apply(tiny_model(), make_cfg(adapter_bottleneck=64, seed=3))
    weights = torch.cat([m.weight.flatten() for _, ad in adapter_modules(a) for m in (ad.down, ad.up)])
    assert weights.abs().max() <= 2 * INIT_STD
    assert 0.6 * INIT_STD < weights.std() < INIT_STD  # a ±2σ cut normal has std 0.88σ
    assert all(torch.count_nonzero(m.bias) == 0 for _, ad in adapter_modules(a) for m in (ad.down, ad.up))
    pairs = list(zip(adapter_modules(a), adapter_modules(b), adapter_modules(c)))
    assert all(torch.equal(x.down.weight, y.down.weight) and not torch.equal(x.down.weight, z.down.weight)
               for (_, x), (_, y), (_, z) in pairs)


def test_adapter_sits_after_dropout_before_residual_and_layernorm():
    model = ADAPTER.apply(tiny_model("bert"), make_cfg()).eval()
    for _, adapter in adapter_modules(model):
        perturb(list(adapter.named_parameters()))
    for path in ("attention.output", "output"):
        block = model.bert.encoder.layer[0].get_submodule(path)
        d_in = block.dense.in_features
        h, residual = torch.randn(2, 3, d_in), torch.randn(2, 3, 32)
        adapter = block.dropout.adapter
        dense = block.dense(h)
        expected = block.LayerNorm(dense + adapter.up(F.gelu(adapter.down(dense))) + residual)
        torch.testing.assert_close(block(h, residual), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("train_ln", [False, True])
def test_only_adapters_classifier_and_optional_layernorms_get_gradients(train_ln):
    model = ADAPTER.apply(tiny_model("bert"), make_cfg(adapter_ln=train_ln))
    trainable = dict(ADAPTER.trainable_parameters(model))
    assert set(trainable) == {n for n, p in model.named_parameters() if p.requires_grad}
    ln_names = {n for n in trainable if "LayerNorm" in n}
    assert len(ln_names) == (8 if train_ln else 0)  # 2 layers × 2 LayerNorms × (weight, bias)
    F.cross_entropy(logits_of(model), torch.tensor([0, 1, 1])).backward()
    for name, param in model.named_parameters():
        if name in trainable:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name
    assert all(".adapter." in n or n.startswith("classifier.") or n in ln_names for n in trainable)


def test_save_load_gives_identical_logits(tmp_path):
    base = tiny_model("roberta")
    model = ADAPTER.apply(copy.deepcopy(base), make_cfg(adapter_ln=True, adapter_act="relu"))
    perturb(ADAPTER.trainable_parameters(model))
    ADAPTER.save_final(model, tmp_path)
    loaded = ADAPTER.load_final(copy.deepcopy(base), tmp_path)
    torch.testing.assert_close(logits_of(loaded), logits_of(model.eval()), atol=0, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.safetensors", "adapter_config.json"]
    assert adapter_modules(loaded)[0][1].act_name == "relu"
    with pytest.raises(PeftlabError, match="was trained on base model"):
        ADAPTER.load_final(tiny_model("roberta", seed=5), tmp_path)


def test_no_delta_weights_not_mergeable_and_says_why():
    base = tiny_model()
    assert ADAPTER.delta_weights(ADAPTER.apply(copy.deepcopy(base), make_cfg()), base) == {}
    assert "no per-head ΔW" in ADAPTER.delta_note and ADAPTER.mergeable is False


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_refuses_families_without_adapter_placement(family):
    with pytest.raises(PeftlabError, match=f"adapters are not placed for {family}"):
        ADAPTER.apply(tiny_model(family), make_cfg())


@pytest.mark.parametrize("override, message", [
    ("adapter_bottleneck=0", "adapter_bottleneck must be a positive integer, got 0"),
    ("adapter_bottleneck=-4", "adapter_bottleneck must be a positive integer, got -4"),
    ("adapter_act=swish", "unknown adapter_act 'swish'; choose from gelu, relu, tanh, silu"),
    ("prompt_tokens=0", "prompt_tokens must be a positive integer"),
])
def test_bad_settings_are_one_line_errors(override, message):
    with pytest.raises(PeftlabError, match=message):
        load_config(None, ["method=adapter", override])
    with pytest.raises(PeftlabError, match="adapter_bottleneck must be a positive integer"):
        ADAPTER.apply(tiny_model(), make_cfg(adapter_bottleneck=0))


def test_bottleneck_adapter_is_identity_with_zero_up():
    adapter = BottleneckAdapter(8, 3, "tanh", torch.Generator().manual_seed(0))
    adapter.up.weight.data.zero_()
    h = torch.randn(4, 8)
    torch.testing.assert_close(adapter(h), h, atol=0, rtol=0)
