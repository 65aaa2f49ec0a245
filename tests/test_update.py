"""Per-head update magnitude U: hand-built ΔW on tiny models vs. hand-computed norms."""

from __future__ import annotations

import math

import pytest
import torch

from peftlab.errors import PeftlabError
from peftlab.heads.update import update_meta, update_rows
from peftlab.testing import tiny_model

D_HEAD = 8  # tiny models: hidden 32, 4 heads


def _rows_by_head(rows):
    return {(r["layer"], r["head"]): r for r in rows if r["kind"] == "head"}


def _norm(t) -> float:
    return float(torch.linalg.norm(t.detach().double()))


def test_bert_single_component_and_row_layout():
    model = tiny_model("bert")
    name = "bert.encoder.layer.1.attention.self.query"
    delta = torch.zeros(32, 32)
    delta[2 * D_HEAD:3 * D_HEAD, :] = 3.0  # head 2's rows only: ‖ΔW‖ = 3·sqrt(8·32) = 48
    rows = _rows_by_head(update_rows(model, {name: delta}))
    assert len(rows) == 8
    assert rows[(1, 2)]["U_q"] == pytest.approx(48.0)
    assert rows[(1, 2)]["U"] == pytest.approx(48.0)
    assert rows[(1, 2)]["U_k"] == rows[(1, 2)]["U_v"] == rows[(1, 2)]["U_o"] == 0.0
    # every other head, and layer 0, did not move
    assert all(r["U"] == 0.0 for key, r in rows.items() if key != (1, 2))
    w0 = model.bert.encoder.layer[1].attention.self.query.weight[2 * D_HEAD:3 * D_HEAD]
    assert rows[(1, 2)]["Urel_q"] == pytest.approx(48.0 / _norm(w0))


def test_bert_all_components_combine_and_o_uses_columns():
    torch.manual_seed(0)
    model = tiny_model("bert")
    layer = model.bert.encoder.layer[0]
    prefix = "bert.encoder.layer.0."
    deltas = {prefix + p: torch.randn(32, 32) for p in
              ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense")}
    rows = _rows_by_head(update_rows(model, deltas))
    h, s = 3, slice(3 * D_HEAD, 4 * D_HEAD)
    u = {
        "q": _norm(deltas[prefix + "attention.self.query"][s]),
        "k": _norm(deltas[prefix + "attention.self.key"][s]),
        "v": _norm(deltas[prefix + "attention.self.value"][s]),
        "o": _norm(deltas[prefix + "attention.output.dense"][:, s]),  # columns of W_o
    }
    w = {
        "q": _norm(layer.attention.self.query.weight[s]),
        "k": _norm(layer.attention.self.key.weight[s]),
        "v": _norm(layer.attention.self.value.weight[s]),
        "o": _norm(layer.attention.output.dense.weight[:, s]),
    }
    row = rows[(0, h)]
    for c in "qkvo":
        assert row[f"U_{c}"] == pytest.approx(u[c], rel=1e-6)
        assert row[f"Urel_{c}"] == pytest.approx(u[c] / w[c], rel=1e-6)
    assert row["U"] == pytest.approx(math.sqrt(sum(x * x for x in u.values())), rel=1e-6)
    assert row["Urel"] == pytest.approx(row["U"] / math.sqrt(sum(x * x for x in w.values())), rel=1e-6)
    assert row["kv_head"] == h


def test_llama_gqa_maps_query_head_to_kv_head():
    model = tiny_model("llama")  # 4 query heads, 2 kv heads: k_proj/v_proj weight [16, 32]
    prefix = "model.layers.0.self_attn."
    k_delta = torch.zeros(16, 32)
    k_delta[D_HEAD:2 * D_HEAD] = 1.0  # kv head 1 only: ‖ΔW‖ = sqrt(8·32) = 16
    rows = _rows_by_head(update_rows(model, {prefix + "k_proj": k_delta}))
    assert [rows[(0, h)]["kv_head"] for h in range(4)] == [0, 0, 1, 1]
    assert [rows[(0, h)]["U_k"] for h in range(4)] == [0.0, 0.0, pytest.approx(16.0), pytest.approx(16.0)]
    meta = update_meta(model, "fft", [prefix + "k_proj"])
    assert meta["n_kv_heads"] == 2 and any("h // 2" in n for n in meta["notes"])


def test_gpt2_conv1d_fused_qkv_and_o():
    torch.manual_seed(1)
    model = tiny_model("gpt2")  # c_attn Conv1D weight [32, 96] = [d_in, q|k|v]; c_proj [32 in, 32 out]
    prefix = "transformer.h.1.attn."
    attn_delta = torch.randn(32, 96)
    proj_delta = torch.randn(32, 32)
    rows = _rows_by_head(update_rows(model, {prefix + "c_attn": attn_delta, prefix + "c_proj": proj_delta}))
    h = 2
    cols = slice(h * D_HEAD, (h + 1) * D_HEAD)
    expected = {
        "q": _norm(attn_delta[:, cols]),
        "k": _norm(attn_delta[:, 32 + h * D_HEAD:32 + (h + 1) * D_HEAD]),
        "v": _norm(attn_delta[:, 64 + h * D_HEAD:64 + (h + 1) * D_HEAD]),
        "o": _norm(proj_delta[cols, :]),  # Conv1D [d_in, d_out]: head h's input rows
    }
    for c, value in expected.items():
        assert rows[(1, h)][f"U_{c}"] == pytest.approx(value, rel=1e-6)


def test_ffn_rows_llama_combines_gate_and_up():
    model = tiny_model("llama")
    prefix = "model.layers.1.mlp."
    deltas = {prefix + "gate_proj": torch.full((64, 32), 1.0), prefix + "up_proj": torch.full((64, 32), 2.0),
              prefix + "down_proj": torch.full((32, 64), 0.5)}
    rows = update_rows(model, deltas)
    ffn = [r for r in rows if r["kind"] == "ffn"]
    assert [r["layer"] for r in ffn] == [0, 1]
    assert list(ffn[0]) == ["kind", "layer", "head", "U_ffn_in", "U_ffn_out", "Urel_ffn_in", "Urel_ffn_out"]
    assert ffn[1]["U_ffn_in"] == pytest.approx(math.sqrt(64 * 32 * (1 + 4)))
    assert ffn[1]["U_ffn_out"] == pytest.approx(math.sqrt(32 * 64 * 0.25))
    assert ffn[0]["U_ffn_in"] == 0.0
    assert [r["kind"] for r in rows] == ["head"] * 8 + ["ffn"] * 2  # heads first, in (layer, head) order


def test_wrong_delta_shape_is_rejected():
    model = tiny_model("bert")
    with pytest.raises(PeftlabError, match="shape"):
        update_rows(model, {"bert.encoder.layer.0.attention.self.query": torch.zeros(32, 16)})


def test_deberta_meta_carries_arch_notes():
    model = tiny_model("deberta-v2")
    meta = update_meta(model, "lora", [])
    assert any("share_att_key" in n for n in meta["notes"])


@pytest.mark.parametrize("method_name", ["lora", "peft-lora"])
@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_lora_delta_equals_merged_minus_base(method_name, family):
    """`delta_weights` (what update.jsonl is computed from) equals merged θ1 − θ0, and so do the U rows."""
    from types import SimpleNamespace

    from peftlab.arch import target_module_names
    from peftlab.methods import get_method

    method = get_method(method_name)
    model_init = tiny_model(family)
    model = method.apply(tiny_model(family), SimpleNamespace(rank=2, alpha=4.0, dropout=0.0,
                                                             targets=("q", "k", "v", "o"), seed=0))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "lora_b" in name.lower():  # B starts at 0: give it a value
                param.copy_(torch.randn(param.shape, generator=generator))
    deltas = method.delta_weights(model, model_init)
    names = target_module_names(model_init, ("q", "k", "v", "o"))
    assert sorted(deltas) == sorted(names)
    if method_name == "lora":
        from peftlab.methods.lora import merge_lora

        merged = merge_lora(model)
    else:
        merged = model.merge_and_unload()
    merged_state = dict(merged.named_modules())
    init_state = dict(model_init.named_modules())
    diffs = {}
    for name in names:
        merged_module = merged_state[name]
        weight = getattr(merged_module, "base_layer", merged_module).weight
        diffs[name] = (weight - init_state[name].weight).detach()
        torch.testing.assert_close(deltas[name], diffs[name], atol=1e-5, rtol=1e-4)
    from_delta, from_merge = update_rows(model_init, deltas), update_rows(model_init, diffs)
    for a, b in zip(from_delta, from_merge):
        if a["kind"] == "head":
            assert a["U"] == pytest.approx(b["U"], rel=1e-4) and a["U"] > 0


@pytest.mark.parametrize("name", ["bert.encoder.layer.0.attention.self.bogus", "bert.pooler.dense",
                                  "bert.embeddings.word_embeddings"])
def test_a_delta_that_matches_no_head_or_ffn_module_fails_naming_it(name):
    model = tiny_model("bert")
    deltas = {"bert.encoder.layer.0.attention.self.query": torch.ones(32, 32), name: torch.ones(32, 32)}
    with pytest.raises(PeftlabError, match=f"ΔW of {name} matches no head slice or FFN module"):
        update_rows(model, deltas)


def test_peft_lora_on_a_non_head_module_is_not_silently_dropped():
    """PEFT LoRA on q and the pooler: the pooler's ΔW reaches update_rows, which refuses it by name."""
    from peft import LoraConfig, get_peft_model

    from peftlab.methods import get_method

    model_init = tiny_model("bert")
    torch.manual_seed(0)
    model = get_peft_model(tiny_model("bert"), LoraConfig(
        r=2, target_modules=["bert.encoder.layer.0.attention.self.query", "bert.pooler.dense"],
        init_lora_weights=False))
    deltas = get_method("peft-lora").delta_weights(model, model_init)
    assert sorted(deltas) == ["bert.encoder.layer.0.attention.self.query", "bert.pooler.dense"]
    with pytest.raises(PeftlabError, match="ΔW of bert.pooler.dense matches no head slice"):
        update_rows(model_init, deltas)


def test_peft_lora_delta_uses_peft_scaling_variants():
    """rsLoRA scales by alpha/sqrt(r): ΔW from PEFT's get_delta_weight equals merged − base in fp32."""
    from peft import LoraConfig, get_peft_model

    from peftlab.methods import get_method

    model_init = tiny_model("gpt2")
    torch.manual_seed(0)
    model = get_peft_model(tiny_model("gpt2"), LoraConfig(
        r=4, lora_alpha=8, use_rslora=True, target_modules=["transformer.h.1.attn.c_attn"], fan_in_fan_out=True,
        init_lora_weights=False))
    deltas = get_method("peft-lora").delta_weights(model, model_init)
    merged = model.merge_and_unload()
    name = "transformer.h.1.attn.c_attn"
    expected = (merged.get_submodule(name).weight - model_init.get_submodule(name).weight).detach()
    assert deltas[name].dtype == torch.float32 and float(expected.abs().max()) > 1e-3
    torch.testing.assert_close(deltas[name], expected, atol=1e-6, rtol=1e-5)
