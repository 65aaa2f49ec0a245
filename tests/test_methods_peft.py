"""Issue-10 methods through PEFT (dora, rslora, pissa, vera, ia3, prompt-tuning, ln-tuning) and BitFit:
trainable sets, parameter counts, save/load, ΔW = merged − W0, refusals."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from peftlab.arch import classifier_module_names, target_module_names
from peftlab.config import load_config
from peftlab.errors import PeftlabError
from peftlab.methods import METHODS, get_method
from peftlab.methods.base import trainable_counts
from peftlab.testing import tiny_batch, tiny_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

NEW = ("dora", "rslora", "pissa", "vera", "ia3", "prompt-tuning", "ln-tuning", "bitfit")
WEIGHT_DELTA = ("dora", "rslora", "pissa", "vera", "ia3")  # methods with a ΔW of q/k/v/o/ffn weights
TARGETS = ("q", "v", "ffn_out")


def make_cfg(**overrides):
    values = dict(rank=4, alpha=8.0, dropout=0.0, targets=TARGETS, seed=1, prompt_tokens=3)
    return SimpleNamespace(**{**values, **overrides})


def logits_of(model, batch=None):
    input_ids, attention_mask = batch or tiny_batch()
    return model(input_ids=input_ids, attention_mask=attention_mask).logits


def perturb(params, seed=3, scale=0.1, skip_classifier=False):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in params:
            if not (skip_classifier and ("modules_to_save" in name or name.startswith("classifier."))):
                p.add_(torch.randn(p.shape, generator=g) * scale)


def n_classifier(base):
    return sum(p.numel() for c in classifier_module_names(base) for p in base.get_submodule(c).parameters())


def test_registry_has_the_issue_10_methods():
    assert set(NEW) | {"adapter"} <= set(METHODS)
    assert all(get_method(m).low_rank for m in ("dora", "rslora", "pissa", "vera"))
    assert not any(get_method(m).low_rank for m in ("ia3", "prompt-tuning", "ln-tuning", "bitfit"))
    assert get_method("prompt-tuning").mergeable is False


@pytest.mark.parametrize("name", NEW)
def test_only_the_methods_parameters_get_gradients(name):
    method = get_method(name)
    model = method.apply(tiny_model("bert"), make_cfg())
    trainable = dict(method.trainable_parameters(model))
    assert set(trainable) == {n for n, p in model.named_parameters() if p.requires_grad}
    perturb(list(trainable.items()))  # zero-initialised parts (LoRA B) would hide A's gradient
    F.cross_entropy(logits_of(model), torch.tensor([0, 1, 1])).backward()
    for pname, param in model.named_parameters():
        if pname not in trainable:
            assert param.grad is None, pname
    assert sum(int(p.grad is not None and p.grad.abs().sum() > 0) for p in trainable.values()) == len(trainable)


@pytest.mark.parametrize("name", NEW)
def test_save_load_gives_identical_logits(name, tmp_path):
    method = get_method(name)
    base = tiny_model("roberta")
    model = method.apply(copy.deepcopy(base), make_cfg())
    perturb(method.trainable_parameters(model))
    expected = logits_of(model.eval())
    method.save_final(model, tmp_path)
    loaded = method.load_final(copy.deepcopy(base), tmp_path)
    torch.testing.assert_close(logits_of(loaded), expected, atol=0, rtol=0)


@pytest.mark.parametrize("name", NEW)
def test_counts_with_and_without_classifier(name):
    method = get_method(name)
    base = tiny_model("bert")
    counts = trainable_counts(method, method.apply(copy.deepcopy(base), make_cfg()))
    assert counts["classifier"] == n_classifier(base) == 32 * 2 + 2
    assert counts["with_classifier"] - counts["without_classifier"] == counts["classifier"]
    d, r, n_layers = 32, 4, 2
    modules = target_module_names(base, TARGETS)
    shapes = [base.get_submodule(m).weight.shape for m in modules]  # [d_out, d_in]
    expected = {
        "rslora": sum(r * (o + i) for o, i in shapes),
        "pissa": sum(r * (o + i) for o, i in shapes),
        "dora": sum(r * (o + i) + o for o, i in shapes),  # + magnitude vector per output
        "vera": sum(r + o for o, _ in shapes),  # λ_d [r] + λ_b [d_out]; A, B are frozen buffers
        "ia3": sum(i if m.endswith("output.dense") and "attention" not in m else o
                   for m, (o, i) in zip(modules, shapes)),
        "prompt-tuning": 3 * d,
        "ln-tuning": (1 + 2 * n_layers) * 2 * d,  # embeddings + 2 per layer, weight and bias
        "bitfit": sum(p.numel() for n, p in base.named_parameters()
                      if n.endswith(".bias") and not n.startswith("classifier.")),
    }[name]
    assert counts["without_classifier"] == expected


@pytest.mark.parametrize("name", WEIGHT_DELTA)
def test_delta_weights_are_zero_at_init_and_reproduce_the_model(name):
    method = get_method(name)
    base = tiny_model("bert")
    model = method.apply(copy.deepcopy(base), make_cfg())
    at_init = method.delta_weights(model, base)
    assert set(at_init) == set(target_module_names(base, TARGETS))
    # PiSSA moves the base weight to W_res at init: ΔW must still be 0 (merged − W0, not s·B·A).
    assert max(float(d.abs().max()) for d in at_init.values()) < 1e-5
    perturb(method.trainable_parameters(model), skip_classifier=True)
    deltas = method.delta_weights(model, base)
    rebuilt = copy.deepcopy(base)
    with torch.no_grad():
        for module_name, delta in deltas.items():
            assert delta.dtype == torch.float32 and delta.abs().max() > 0
            rebuilt.get_submodule(module_name).weight.add_(delta)
    torch.testing.assert_close(logits_of(rebuilt), logits_of(model.eval()), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ("prompt-tuning", "ln-tuning", "bitfit", "adapter"))
def test_methods_without_weight_delta_return_empty_and_say_why(name):
    method = get_method(name)
    base = tiny_model("bert")
    cfg = make_cfg(adapter_bottleneck=4, adapter_act="gelu", adapter_ln=False)
    assert method.delta_weights(method.apply(copy.deepcopy(base), cfg), base) == {}
    assert method.delta_note and "q/k/v/o" in method.delta_note


def test_rslora_scale_is_alpha_over_sqrt_rank_and_bitfit_trains_biases_only():
    model = get_method("rslora").apply(tiny_model(), make_cfg(rank=4, alpha=8.0))
    layer = model.base_model.model.bert.encoder.layer[0].attention.self.query
    assert layer.scaling["default"] == pytest.approx(8.0 / 4 ** 0.5)
    bitfit = get_method("bitfit")
    names = [n for n, _ in bitfit.trainable_parameters(bitfit.apply(tiny_model(), make_cfg()))]
    assert names and all(n.endswith(".bias") or n.startswith("classifier.") for n in names)


def test_prefix_tuning_is_refused_with_the_reason():
    with pytest.raises(PeftlabError, match=r"prefix-tuning' is not available: PEFT prefix tuning fails on "
                                           r"transformers 5.24.*use prompt-tuning"):
        get_method("prefix-tuning")
    with pytest.raises(PeftlabError, match="past key values"):
        load_config(None, ["method=prefix-tuning"])
