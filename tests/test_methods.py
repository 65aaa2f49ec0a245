"""Methods registry: own LoRA == PEFT LoRA, merge/unmerge, save/load, trainable sets, ΔW, errors."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from peftlab.arch import CANONICAL_TARGETS, classifier_module_names, get_arch, layer_module, target_module_names
from peftlab.errors import PeftlabError
from peftlab.fast_dropout import effective_p
from peftlab.methods import METHODS, get_method
from peftlab.methods.base import base_fingerprint
from peftlab.methods.lora import (
    FastDropout,
    LoraLinear,
    SharedInputGroup,
    lora_modules,
    merge_lora,
    unmerge_lora,
)
from peftlab.methods.peft_lora import peft_lora_layers
from peftlab.testing import FAMILIES, tiny_batch, tiny_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

LORA, PEFT, FFT = get_method("lora"), get_method("peft-lora"), get_method("fft")
ALL_TARGETS = ",".join(CANONICAL_TARGETS)


def make_cfg(**overrides):
    """The attributes methods may read from a TrainConfig."""
    values = dict(rank=4, alpha=8.0, dropout=0.0, targets=ALL_TARGETS, seed=1, model=None)
    return SimpleNamespace(**{**values, **overrides})


def logits_of(model, batch):
    input_ids, attention_mask = batch
    return model(input_ids=input_ids, attention_mask=attention_mask).logits


def randomize_lora_B(model, seed=7):
    """B = 0 at init makes every LoRA comparison trivial; give it values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, module in lora_modules(model):
            module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=g) * 0.2)


def copy_ours_into_peft(ours, peft):
    """Give PEFT's LoRA layers exactly our A and B."""
    peft_layers = dict(peft_lora_layers(peft))
    ours_layers = dict(lora_modules(ours))
    assert set(peft_layers) == set(ours_layers)
    with torch.no_grad():
        for name, module in ours_layers.items():
            peft_layers[name].lora_A["default"].weight.copy_(module.lora_A)
            peft_layers[name].lora_B["default"].weight.copy_(module.lora_B)


def own_and_peft(family, **cfg_overrides):
    """(θ0, own-LoRA model, PEFT-LoRA model) holding identical non-zero A and B."""
    base = tiny_model(family)
    cfg = make_cfg(**cfg_overrides)
    ours = LORA.apply(copy.deepcopy(base), cfg)
    peft = PEFT.apply(copy.deepcopy(base), cfg)
    randomize_lora_B(ours)
    copy_ours_into_peft(ours, peft)
    return base, ours.eval(), peft.eval()


# --- registry ---------------------------------------------------------------------------------------

def test_registry_names_and_dirs():
    assert {"fft", "lora", "peft-lora"} <= set(METHODS)
    assert (FFT.dir_name, LORA.dir_name, PEFT.dir_name) == ("FFT", "LoRA", "PEFT-LoRA")
    assert (FFT.low_rank, LORA.low_rank, PEFT.low_rank) == (False, True, True)
    assert get_method("LoRA") is LORA
    assert all(m.callbacks(make_cfg(), 10) == [] for m in (FFT, LORA, PEFT))


def test_register_method_plugs_in_a_new_file():
    from peftlab.methods import Method, register_method

    @register_method
    class Dummy(Method):
        name, dir_name = "dummy-test", "Dummy"

    try:
        assert isinstance(get_method("dummy-test"), Dummy)
        with pytest.raises(TypeError, match="already registered"):
            register_method(type("Other", (Method,), {"name": "dummy-test", "dir_name": "X"}))
    finally:
        METHODS.pop("dummy-test")


def test_unknown_method_lists_names():
    with pytest.raises(PeftlabError, match=r"unknown method 'nope'.*fft.*lora.*peft-lora"):
        get_method("nope")


# --- own LoRA == PEFT LoRA, per family ----------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_own_lora_equals_peft_logits_and_gradients(family):
    _, ours, peft = own_and_peft(family)
    batch = tiny_batch()
    labels = torch.tensor([0, 1, 1])
    logits_ours, logits_peft = logits_of(ours, batch), logits_of(peft, batch)
    torch.testing.assert_close(logits_ours, logits_peft, atol=1e-6, rtol=0)
    F.cross_entropy(logits_ours, labels).backward()
    F.cross_entropy(logits_peft, labels).backward()
    peft_layers = dict(peft_lora_layers(peft))
    for name, module in lora_modules(ours):
        assert module.lora_A.grad.abs().sum() > 0, name  # B ≠ 0, so A gets a gradient
        torch.testing.assert_close(module.lora_A.grad, peft_layers[name].lora_A["default"].weight.grad,
                                   atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(module.lora_B.grad, peft_layers[name].lora_B["default"].weight.grad,
                                   atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_merge_equals_unmerged_and_unmerge_restores(family):
    _, ours, _ = own_and_peft(family)
    batch = tiny_batch()
    before = {name: m.base_layer.weight.detach().clone() for name, m in lora_modules(ours)}
    unmerged = logits_of(ours, batch)
    merged = logits_of(merge_lora(ours), batch)
    assert all(m.merged for _, m in lora_modules(ours))
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    assert any(not torch.equal(before[n], m.base_layer.weight) for n, m in lora_modules(ours))
    unmerge_lora(ours)
    for name, module in lora_modules(ours):
        torch.testing.assert_close(module.base_layer.weight, before[name], atol=1e-6, rtol=0)
    torch.testing.assert_close(logits_of(ours, batch), unmerged, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_delta_weights_equal_merged_minus_base_for_both_lora_kinds(family):
    base, ours, peft = own_and_peft(family)
    names = target_module_names(base, CANONICAL_TARGETS)
    deltas_ours, deltas_peft = LORA.delta_weights(ours, base), PEFT.delta_weights(peft, base)
    assert list(deltas_ours) == names and set(deltas_peft) == set(names)
    merge_lora(ours)
    peft.base_model.merge_adapter()
    peft_layers = dict(peft_lora_layers(peft))
    for name in names:
        w0 = base.get_submodule(name).weight
        assert deltas_ours[name].dtype == torch.float32 and deltas_ours[name].shape == w0.shape
        torch.testing.assert_close(deltas_ours[name], ours.get_submodule(name).base_layer.weight - w0,
                                   atol=1e-6, rtol=0)
        torch.testing.assert_close(deltas_peft[name], peft_layers[name].base_layer.weight - w0, atol=1e-6, rtol=0)
        torch.testing.assert_close(deltas_ours[name], deltas_peft[name], atol=1e-7, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_trainable_parameters_are_lora_and_classifier_only(family):
    rank = 3
    base = tiny_model(family)
    classifier = classifier_module_names(base)
    n_classifier = sum(p.numel() for c in classifier for p in base.get_submodule(c).parameters())
    # Expected LoRA size from θ0's weight shapes: r·(d_in + d_out) per target module.
    n_lora = sum(rank * sum(base.get_submodule(n).weight.shape) for n in target_module_names(base, ALL_TARGETS))
    for method in (LORA, PEFT):
        model = method.apply(copy.deepcopy(base), make_cfg(rank=rank))
        trainable = method.trainable_parameters(model)
        assert {n for n, _ in trainable} == {n for n, p in model.named_parameters() if p.requires_grad}
        assert all("lora_" in n or any(c in n.split(".") for c in classifier) for n, _ in trainable)
        n_trainable_lora = sum(p.numel() for n, p in trainable if "lora_" in n)
        assert n_trainable_lora == n_lora, method.name
        assert sum(p.numel() for _, p in trainable) == n_lora + n_classifier, method.name


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_wrapper_shapes_for_non_square_and_conv1d(family):
    model = LORA.apply(tiny_model(family), make_cfg(rank=2))
    ffn_in = layer_module(model, 0, "ffn_in")
    assert isinstance(ffn_in, LoraLinear) and ffn_in.d_in != ffn_in.d_out  # 32 -> 64 (gpt2 128)
    assert ffn_in.lora_A.shape == (2, ffn_in.d_in) and ffn_in.lora_B.shape == (ffn_in.d_out, 2)
    assert ffn_in.fan_in_fan_out == get_arch(model).conv1d
    if family == "gpt2":
        qkv = layer_module(model, 0, "q")
        assert qkv.base_layer.weight.shape == (32, 96) and qkv.d_out == 96  # Conv1D [d_in, d_out]


def test_lora_init_is_seeded_kaiming_uniform_and_B_zero():
    base = tiny_model("bert")
    a = LORA.apply(copy.deepcopy(base), make_cfg(seed=3))
    b = LORA.apply(copy.deepcopy(base), make_cfg(seed=3))
    c = LORA.apply(copy.deepcopy(base), make_cfg(seed=4))
    for (name, ma), (_, mb), (_, mc) in zip(lora_modules(a), lora_modules(b), lora_modules(c)):
        assert torch.equal(ma.lora_A, mb.lora_A) and not torch.equal(ma.lora_A, mc.lora_A), name
        assert torch.count_nonzero(ma.lora_B) == 0
        # kaiming_uniform(a=√5) bound = sqrt(6 / ((1 + a²) · fan_in)) = 1 / sqrt(d_in)
        bound = 1 / ma.d_in ** 0.5
        assert ma.lora_A.abs().max() <= bound and ma.lora_A.abs().max() > 0.8 * bound
    batch = tiny_batch()
    torch.testing.assert_close(logits_of(a, batch), logits_of(base, batch), atol=0, rtol=0)  # B = 0: θ0 unchanged


def test_dropout_only_on_lora_branch_and_skipped_at_zero():
    assert isinstance(layer_module(LORA.apply(tiny_model(), make_cfg(dropout=0.0)), 0, "q").lora_dropout,
                      torch.nn.Identity)
    model = LORA.apply(tiny_model(), make_cfg(dropout=0.5))
    randomize_lora_B(model)
    q = layer_module(model, 0, "q").train()
    x = torch.randn(2, 5, 32)
    out1, out2 = q(x), q(x)
    assert not torch.allclose(out1, out2)  # dropout is active in training
    q.lora_B.data.zero_()
    torch.testing.assert_close(q(x), q.base_layer(x), atol=0, rtol=0)  # ...and only on the LoRA branch


def test_fast_dropout_scales_kept_values_and_their_gradient_exactly():
    """The drop rate itself is tested in test_fast_dropout.py; here: the module's forward and backward."""
    p = 0.05
    drop = FastDropout(p).train()
    x = (torch.rand(64, 1000) + 0.5).requires_grad_(True)  # no zeros: a zero output means dropped
    out = drop(x)
    scale = 1 / (1 - effective_p(p))
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] * scale, atol=0, rtol=0)  # kept values scaled by 1/(1-p)
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(x.grad, kept.float() * scale, atol=0, rtol=0)  # grad = mask · scale
    assert 0.9 < kept.float().mean().item() < 0.99
    assert torch.equal(drop.eval()(x), x)  # identity in eval mode


def test_fast_dropout_follows_the_global_seed():
    drop = FastDropout(0.3).train()
    x = torch.ones(4, 50)
    torch.manual_seed(3)
    first = drop(x)
    torch.manual_seed(3)
    assert torch.equal(drop(x), first)
    assert not torch.equal(drop(x), first)


def test_own_lora_configured_as_peft_draws_the_same_dropout_masks():
    """fast_dropout and share_qkv off: nn.Dropout per module, in PEFT's order — equal with dropout ON."""
    base, ours, peft = own_and_peft("bert", dropout=0.3, lora_fast_dropout=False, lora_share_qkv=False)
    assert all(type(m.lora_dropout) is torch.nn.Dropout and m.input_group is None for _, m in lora_modules(ours))
    batch = tiny_batch()
    ours.train(), peft.train()
    torch.manual_seed(11)
    out_ours = logits_of(ours, batch)
    torch.manual_seed(11)
    out_peft = logits_of(peft, batch)
    torch.testing.assert_close(out_ours, out_peft, atol=1e-6, rtol=0)
    torch.manual_seed(12)
    assert not torch.allclose(logits_of(ours, batch), out_ours)  # dropout really is on


def test_default_own_lora_shares_qkv_input_and_uses_fast_dropout():
    model = LORA.apply(tiny_model("bert"), make_cfg(dropout=0.1))
    groups = {id(m.input_group): m.input_group for _, m in lora_modules(model) if m.input_group is not None}
    n_layers = model.config.num_hidden_layers
    assert len(groups) == n_layers and all(len(g.members) == 3 for g in groups.values())
    assert layer_module(model, 0, "o").input_group is None  # o reads a different tensor
    assert all(isinstance(m.lora_dropout, FastDropout) for _, m in lora_modules(model))
    assert model.peftlab_lora_config["fast_dropout"] and model.peftlab_lora_config["share_qkv"]
    # GPT-2's q, k, v are one fused c_attn module: nothing to share
    gpt2 = LORA.apply(tiny_model("gpt2"), make_cfg(dropout=0.1))
    assert all(m.input_group is None for _, m in lora_modules(gpt2))


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_shared_qkv_equals_per_module_branch_without_dropout(family):
    """share_qkv only fuses the A-matmuls when dropout is off: logits and A/B gradients as per module."""
    base = tiny_model(family)
    shared = LORA.apply(copy.deepcopy(base), make_cfg(lora_share_qkv=True)).train()
    single = LORA.apply(copy.deepcopy(base), make_cfg(lora_share_qkv=False)).train()
    assert any(m.input_group is not None for _, m in lora_modules(shared))
    randomize_lora_B(shared)
    randomize_lora_B(single)
    batch = tiny_batch()
    torch.manual_seed(5)  # the model's own dropouts draw the same masks in both
    out_shared = logits_of(shared, batch)
    torch.manual_seed(5)
    out_single = logits_of(single, batch)
    torch.testing.assert_close(out_shared, out_single, atol=1e-6, rtol=0)
    out_shared.pow(2).sum().backward()
    out_single.pow(2).sum().backward()
    for (name, a), (_, b) in zip(lora_modules(shared), lora_modules(single)):
        assert a.lora_A.grad.abs().sum() > 0, name
        torch.testing.assert_close(a.lora_A.grad, b.lora_A.grad, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(a.lora_B.grad, b.lora_B.grad, atol=1e-6, rtol=1e-5)


def lora_delta(module, x):
    return module(x) - module.base_layer(x)


def test_shared_qkv_draws_one_mask_for_q_k_v():
    """With identical A and B, q, k and v branches are equal iff they saw the same dropped x."""
    for share in (True, False):
        model = LORA.apply(tiny_model("bert"), make_cfg(dropout=0.5, lora_share_qkv=share)).train()
        q, k, v = (layer_module(model, 0, t) for t in "qkv")
        with torch.no_grad():
            for m in (q, k, v):
                m.lora_A.copy_(q.lora_A)
                m.lora_B.copy_(torch.ones_like(m.lora_B))
        x = torch.randn(2, 5, 32)
        deltas = [lora_delta(m, x) for m in (q, k, v)]
        same = all(torch.allclose(deltas[0], d, atol=1e-6) for d in deltas[1:])
        assert same == share, share


def test_shared_group_releases_input_and_redraws_for_a_repeat_call():
    model = LORA.apply(tiny_model("bert"), make_cfg(dropout=0.5)).train()
    q, k, v = (layer_module(model, 0, t) for t in "qkv")
    randomize_lora_B(model)
    x = torch.randn(2, 5, 32)
    group = q.input_group
    assert isinstance(group, SharedInputGroup) and group.members == [q, k, v]
    first = lora_delta(q, x)  # lora_delta calls q once; base_layer is not a member
    assert group._key is not None  # k and v have not read it yet
    assert not torch.allclose(lora_delta(q, x), first)  # q again on the same x: a fresh mask
    copy.deepcopy(model)  # a half-read cache must not break deepcopy
    k(x), v(x)
    assert group._key is None and group._hidden == ()  # all read: no reference to x kept
    merge_lora(model.eval())  # merged members fall back to the plain path (no group)
    torch.testing.assert_close(q(x), q.base_layer(x), atol=0, rtol=0)


def test_speed_options_round_trip_through_adapter_config(tmp_path):
    from peftlab.io import read_json

    base = tiny_model("bert")
    for share in (True, False):
        ours = LORA.apply(copy.deepcopy(base), make_cfg(dropout=0.1, lora_share_qkv=share, lora_fast_dropout=share))
        LORA.save_final(ours, tmp_path / str(share))
        config = read_json(tmp_path / str(share) / "adapter_config.json")
        assert (config["share_qkv"], config["fast_dropout"]) == (share, share)
        loaded = LORA.load_final(copy.deepcopy(base), tmp_path / str(share))
        q = layer_module(loaded, 0, "q")
        assert (q.input_group is not None) == share and isinstance(q.lora_dropout, FastDropout) == share


def test_head_gate_on_outer_module_also_gates_lora_branch():
    model = LORA.apply(tiny_model("bert"), make_cfg(targets="o"))
    randomize_lora_B(model)
    o_proj = layer_module(model, 0, "o")
    handle = o_proj.register_forward_pre_hook(lambda module, args: (args[0] * 0,))  # gate every head to 0
    try:
        out = o_proj(torch.randn(2, 5, 32))
    finally:
        handle.remove()
    torch.testing.assert_close(out, o_proj.base_layer.bias.expand_as(out), atol=0, rtol=0)


# --- save / load ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_round_trip_own_and_peft(family, tmp_path):
    base, ours, peft = own_and_peft(family)
    with torch.no_grad():  # a trained classifier must round-trip too
        for c in classifier_module_names(base):
            for p in ours.get_submodule(c).parameters():
                p.add_(0.3)
    batch = tiny_batch()
    for method, model in ((LORA, ours), (PEFT, peft)):
        out = tmp_path / method.name
        method.save_final(model, out)
        loaded = method.load_final(copy.deepcopy(base), out)
        torch.testing.assert_close(logits_of(loaded, batch), logits_of(model, batch), atol=0, rtol=0)
        assert not loaded.training
    assert sorted(p.name for p in (tmp_path / "lora").iterdir()) == ["adapter.safetensors", "adapter_config.json"]


def test_own_adapter_file_holds_only_lora_and_classifier(tmp_path):
    from safetensors.torch import load_file

    from peftlab.io import read_json

    base, ours, _ = own_and_peft("bert", targets="q,v")
    LORA.save_final(ours, tmp_path)
    keys = set(load_file(str(tmp_path / "adapter.safetensors")))
    assert keys == {n for n, _ in LORA.trainable_parameters(ours)}
    assert all("lora_" in k or k.startswith("classifier.") for k in keys)
    config = read_json(tmp_path / "adapter_config.json")
    assert (config["method"], config["rank"], config["alpha"], config["dropout"]) == ("lora", 4, 8.0, 0.0)
    assert config["targets"] == ["q", "v"]
    assert config["target_modules"] == target_module_names(base, "q,v")
    assert config["base_model"]["model_type"] == "bert" and len(config["base_model"]["sha256"]) == 64


@pytest.mark.parametrize("method_name", ["lora", "peft-lora", "fft"])
def test_load_onto_different_base_names_both(method_name, tmp_path):
    method = get_method(method_name)
    base = tiny_model("bert", seed=0)
    model = method.apply(copy.deepcopy(base), make_cfg())
    method.save_final(model, tmp_path)
    saved_sha = model.peftlab_base_fingerprint["sha256"][:12]
    other = tiny_model("bert", seed=1)
    other_sha = base_fingerprint(other)["sha256"][:12]
    with pytest.raises(PeftlabError, match=rf"trained on base model .*{saved_sha}.* given base model is .*{other_sha}"):
        method.load_final(other, tmp_path)
    with pytest.raises(PeftlabError, match=r"trained on base model .*bert.* given base model is .*roberta"):
        method.load_final(tiny_model("roberta"), tmp_path)


def test_load_from_missing_dir_is_one_line_error(tmp_path):
    for method in (LORA, PEFT, FFT):
        with pytest.raises(PeftlabError, match="not found") as info:
            method.load_final(tiny_model(), tmp_path / "nothing")
        assert "\n" not in str(info.value)


# --- validation -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", [LORA, PEFT], ids=["lora", "peft-lora"])
@pytest.mark.parametrize("bad, pattern", [
    (dict(rank=0), "rank must be a positive integer"),
    (dict(rank=-2), "rank must be a positive integer"),
    (dict(rank=2.5), "rank must be a positive integer"),
    (dict(alpha=0), "alpha must be > 0"),
    (dict(alpha=-1.0), "alpha must be > 0"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(dropout=-0.1), r"dropout must be in \[0, 1\)"),
    (dict(targets="q,foo"), r"unknown target 'foo'; valid targets: q, k, v, o, ffn_in, ffn_out"),
])
def test_bad_low_rank_settings_are_one_line_errors(method, bad, pattern):
    model = tiny_model("bert")
    with pytest.raises(PeftlabError, match=pattern) as info:
        method.apply(model, make_cfg(**bad))
    assert "\n" not in str(info.value)


def test_lora_twice_is_an_error():
    model = LORA.apply(tiny_model(), make_cfg(targets="q"))
    with pytest.raises(PeftlabError, match="already has LoRA"):
        LORA.apply(model, make_cfg(targets="q"))


# --- FFT -------------------------------------------------------------------------------------------------

def test_fft_trains_everything_and_delta_weights_on_hand_modified_model(tmp_path):
    base = tiny_model("bert")
    final = FFT.apply(copy.deepcopy(base), make_cfg())
    assert [n for n, _ in FFT.trainable_parameters(final)] == [n for n, _ in base.named_parameters()]
    assert all(p.requires_grad for p in final.parameters())
    q0 = "bert.encoder.layer.0.attention.self.query"
    ffn1 = "bert.encoder.layer.1.intermediate.dense"
    change_q, change_ffn = torch.randn(32, 32), torch.randn(64, 32)
    with torch.no_grad():
        final.get_submodule(q0).weight.add_(change_q)
        final.get_submodule(ffn1).weight.add_(change_ffn)
    deltas = FFT.delta_weights(final, base)
    assert list(deltas) == target_module_names(base, CANONICAL_TARGETS)
    torch.testing.assert_close(deltas[q0], change_q, atol=1e-6, rtol=0)
    torch.testing.assert_close(deltas[ffn1], change_ffn, atol=1e-6, rtol=0)
    assert all(torch.count_nonzero(d) == 0 for n, d in deltas.items() if n not in (q0, ffn1))
    FFT.save_final(final, tmp_path)
    loaded = FFT.load_final(copy.deepcopy(base), tmp_path)
    torch.testing.assert_close(logits_of(loaded, tiny_batch()), logits_of(final, tiny_batch()), atol=0, rtol=0)


def test_fft_delta_on_gpt2_keeps_conv1d_layout():
    base = tiny_model("gpt2")
    final = copy.deepcopy(base)
    with torch.no_grad():
        final.transformer.h[0].attn.c_attn.weight[:, :32] += 1.0  # q columns of the fused [d_in, 3·d] weight
    deltas = FFT.delta_weights(final, base)
    delta = deltas["transformer.h.0.attn.c_attn"]
    assert delta.shape == (32, 96)
    torch.testing.assert_close(delta[:, :32], torch.ones(32, 32), atol=1e-6, rtol=0)
    assert torch.count_nonzero(delta[:, 32:]) == 0


# --- the packaged real model -----------------------------------------------------------------------------

@pytest.mark.slow
def test_minilm_own_lora_equals_peft_and_delta_matches_merge():
    from peftlab.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(None)
    base = load_model(None, num_labels=2).eval()
    enc = tokenizer(["A man is playing a guitar.", "The cat sat on the mat, purring."],
                    ["Someone plays music.", "A dog barks."], padding=True, return_tensors="pt")
    batch = (enc["input_ids"], enc["attention_mask"])
    cfg = make_cfg(rank=8, alpha=16.0, targets="q,k,v,o")
    ours = LORA.apply(copy.deepcopy(base), cfg).eval()
    peft = PEFT.apply(copy.deepcopy(base), cfg).eval()
    randomize_lora_B(ours)
    copy_ours_into_peft(ours, peft)
    with torch.no_grad():
        torch.testing.assert_close(logits_of(ours, batch), logits_of(peft, batch), atol=1e-6, rtol=0)
        assert len(lora_modules(ours)) == 6 * 4
        deltas = LORA.delta_weights(ours, base)
        unmerged = logits_of(ours, batch)
        merge_lora(ours)
        torch.testing.assert_close(logits_of(ours, batch), unmerged, atol=1e-5, rtol=0)
    for name, delta in deltas.items():
        torch.testing.assert_close(delta, ours.get_submodule(name).base_layer.weight - base.get_submodule(name).weight,
                                   atol=1e-6, rtol=0)


def test_shared_qkv_lora_runs_under_inference_mode():
    """The q/k/v group caches on the input's version counter, which inference tensors lack: it must step aside."""
    import torch

    from peftlab.config import load_config
    from peftlab.methods import get_method
    from peftlab.testing import tiny_batch, tiny_model

    cfg = load_config(None, ["method=lora", "rank=2", "targets=q,k,v,o", "dropout=0.0"])
    model = get_method("lora").apply(tiny_model("bert"), cfg).eval()
    input_ids, attention_mask = tiny_batch(2, 6, seed=0)
    with torch.no_grad():
        reference = model(input_ids=input_ids, attention_mask=attention_mask).logits
    with torch.inference_mode():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    assert torch.allclose(logits, reference, atol=1e-6)
