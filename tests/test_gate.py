"""Head gate invariants on tiny models of every family (fixtures in conftest.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from peftlab.arch import get_arch, get_submodule, head_shape, layer_module, target_module_names
from peftlab.errors import PeftlabError
from peftlab.heads.gate import ablation_gate, head_gate, ones_gate
from peftlab.testing import FAMILIES


LAYER, HEAD = 1, 2  # a head in the last layer of the 2-layer tiny models


def logits_of(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def zero_head_columns(model, layer: int, head: int, weight: torch.Tensor) -> None:
    """Zero head `head`'s d_head input columns of W_o (Linear [d_out, d_in]; Conv1D rows of [d_in, d_out])."""
    d_head = head_shape(model).d_head
    cols = slice(head * d_head, (head + 1) * d_head)
    with torch.no_grad():
        if get_arch(model).conv1d:
            weight[cols, :] = 0
        else:
            weight[:, cols] = 0


@pytest.mark.parametrize("family", FAMILIES)
def test_all_ones_gate_changes_nothing(family, loud_tiny_model, tiny_batches):
    model, batch = loud_tiny_model(family), tiny_batches()[0]
    plain = logits_of(model, batch)
    with head_gate(model, ones_gate(model)):
        gated = logits_of(model, batch)
    assert torch.equal(plain, gated)


@pytest.mark.parametrize("family", FAMILIES)
def test_gate_zero_equals_zeroing_the_heads_wo_columns(family, loud_tiny_model, tiny_batches):
    model, batch = loud_tiny_model(family), tiny_batches()[0]
    with head_gate(model, ablation_gate(model, LAYER, HEAD)):
        gated = logits_of(model, batch)
    zeroed = copy.deepcopy(model)
    zero_head_columns(zeroed, LAYER, HEAD, layer_module(zeroed, LAYER, "o").weight)
    expected = logits_of(zeroed, batch)
    assert not torch.allclose(expected, logits_of(model, batch), atol=1e-4)  # the head matters here
    torch.testing.assert_close(gated, expected, atol=1e-6, rtol=0)


def _peft_lora_on_o(model):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=target_module_names(model, ["o"]),
                        init_lora_weights=False)  # random B: the LoRA branch is non-zero
    return get_peft_model(model, config).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_gate_zero_removes_the_heads_peft_lora_branch(family, loud_tiny_model, tiny_batches):
    torch.manual_seed(0)
    # float64 throughout: merged and unmerged LoRA then agree far below the tolerance
    peft_model, batch = _peft_lora_on_o(loud_tiny_model(family)).double(), tiny_batches()[0]
    with head_gate(peft_model, ablation_gate(peft_model, LAYER, HEAD)):
        gated = logits_of(peft_model, batch)
    merged = copy.deepcopy(peft_model).merge_and_unload()
    zero_head_columns(merged, LAYER, HEAD, layer_module(merged, LAYER, "o").weight)
    torch.testing.assert_close(gated, logits_of(merged, batch), atol=1e-10, rtol=0)
    # Removing the head from the base weight only leaves its LoRA share in: a different result.
    base_only = copy.deepcopy(peft_model)
    zero_head_columns(base_only, LAYER, HEAD, layer_module(base_only, LAYER, "o").base_layer.weight)
    assert not torch.allclose(logits_of(base_only, batch), gated, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_gate_zero_removes_the_heads_own_lora_branch(family, loud_tiny_model, tiny_batches):
    from peftlab.methods.lora import add_lora, lora_modules

    model, batch = loud_tiny_model(family), tiny_batches()[0]
    add_lora(model, target_module_names(model, ["o"]), rank=4, alpha=8, dropout=0.0, seed=0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, module in lora_modules(model):
            module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=g))
    model.double()  # float64: merged and unmerged LoRA agree far below the tolerance
    with head_gate(model, ablation_gate(model, LAYER, HEAD)):
        gated = logits_of(model, batch)
    # Reference: W_o merged in float64 (W + scale·B·A, written out here: merge_lora merges in fp32),
    # the branch switched off, the head's columns zeroed.
    merged = copy.deepcopy(model)
    with torch.no_grad():
        for _, module in lora_modules(merged):
            delta = module.scaling * module.lora_B @ module.lora_A  # [d_out, d_in]
            module.base_layer.weight += delta.T if module.fan_in_fan_out else delta
            module.lora_B.zero_()
    zero_head_columns(merged, LAYER, HEAD, layer_module(merged, LAYER, "o").base_layer.weight)
    torch.testing.assert_close(gated, logits_of(merged, batch), atol=1e-10, rtol=0)


def _rms_norm_float64(module, hidden: torch.Tensor) -> torch.Tensor:
    variance = hidden.pow(2).mean(-1, keepdim=True)
    return module.weight * (hidden * torch.rsqrt(variance + module.variance_epsilon))


def without_float32_upcasts(model):
    """LLaMA/Qwen2 RMSNorm computes in float32 even in a float64 model; finite differences with a step of
    1e-6 then see rounding noise. Same formula, in the input's dtype (the gate itself is not touched)."""
    import types

    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = types.MethodType(_rms_norm_float64, module)
    return model


def float64_loss(model, batch) -> torch.Tensor:
    """Mean cross-entropy computed in float64 from the logits (DeBERTa-v2's own loss casts to float32)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return torch.nn.functional.cross_entropy(logits, batch["labels"])


@pytest.mark.parametrize("family", FAMILIES)
def test_gate_gradient_equals_central_finite_differences(family, loud_tiny_model, tiny_batches):
    model, batch = without_float32_upcasts(loud_tiny_model(family, dtype=torch.float64)), tiny_batches()[0]
    gate = ones_gate(model, requires_grad=True, dtype=torch.float64)
    with head_gate(model, gate):
        (grad,) = torch.autograd.grad(float64_loss(model, batch), gate)
    step = 1e-6
    finite = torch.zeros_like(grad)
    with torch.no_grad():
        for index in torch.cartesian_prod(*(torch.arange(n) for n in gate.shape)).tolist():
            losses = []
            for sign in (1.0, -1.0):
                shifted = torch.ones_like(grad)
                shifted[tuple(index)] += sign * step
                with head_gate(model, shifted):
                    losses.append(float64_loss(model, batch))
            finite[tuple(index)] = (losses[0] - losses[1]) / (2 * step)
    assert grad.abs().max() > 1e-3
    torch.testing.assert_close(grad, finite, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("family", ["bert", "gpt2", "qwen2"])
def test_variant_gates_act_on_their_rows(family, loud_tiny_model, tiny_batches):
    model, batch = loud_tiny_model(family), tiny_batches()[0]
    variants = [ones_gate(model), ablation_gate(model, 0, 1), ablation_gate(model, LAYER, HEAD)]
    separate = []
    for gate in variants:
        with head_gate(model, gate):
            separate.append(logits_of(model, batch))
    repeated = {key: value.repeat(len(variants), *[1] * (value.dim() - 1)) for key, value in batch.items()}
    with head_gate(model, torch.stack(variants)):  # [V, n_layers, n_heads], rows variant-major
        together = logits_of(model, repeated)
    torch.testing.assert_close(together, torch.cat(separate), atol=1e-6, rtol=0)


def test_hooks_are_removed_after_an_exception(loud_tiny_model, tiny_batches):
    model = loud_tiny_model("bert")
    o_modules = [layer_module(model, layer, "o") for layer in range(head_shape(model).n_layers)]
    with pytest.raises(RuntimeError, match="boom"):
        with head_gate(model, ones_gate(model)):
            assert all(len(m._forward_pre_hooks) == 1 for m in o_modules)
            raise RuntimeError("boom")
    assert all(len(m._forward_pre_hooks) == 0 for m in o_modules)
    # an error raised by the hook itself (wrong number of variant rows) also leaves no hook behind
    with pytest.raises(PeftlabError, match="multiple of 2 rows"):
        with head_gate(model, ones_gate(model, variants=2)):
            logits_of(model, tiny_batches()[0])  # 3 rows
    assert all(len(m._forward_pre_hooks) == 0 for m in o_modules)


def test_wrong_gate_shape_is_a_peftlab_error(loud_tiny_model):
    model = loud_tiny_model("llama")
    with pytest.raises(PeftlabError, match=r"shape \(2, 3\).*\[2, 4\]"):
        with head_gate(model, torch.ones(2, 3)):
            pass
    with pytest.raises(PeftlabError, match="needs"):
        with head_gate(model, torch.ones(4)):
            pass


def test_unresolvable_o_path_is_a_peftlab_error(loud_tiny_model):
    model = loud_tiny_model("bert")
    del get_submodule(model, "bert.encoder.layer.1.attention.output").dense
    with pytest.raises(PeftlabError, match="attention.output.dense"):
        with head_gate(model, ones_gate(model)):
            pass
    assert len(layer_module(model, 0, "o")._forward_pre_hooks) == 0  # layer 0's hook was removed again


def test_o_input_of_the_wrong_width_is_a_peftlab_error(loud_tiny_model, tiny_batches):
    model = loud_tiny_model("bert")
    model.config.num_attention_heads = 8  # the gate now expects 8 heads of width 4: 32 columns still
    model.config.hidden_size = 64  # ... of width 8: 64 columns, but the o-proj gets 32
    with pytest.raises(PeftlabError, match="has 32 columns, expected"):
        with head_gate(model, ones_gate(model)):
            logits_of(model, tiny_batches()[0])
