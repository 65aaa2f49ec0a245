"""Exact head importance: fast == naive on every family (rows and per-example differences); I_se and its
t-interval; Taylor (signed) == finite differences and never reported as I; task metrics; rows and errors."""

from __future__ import annotations

import warnings

import pytest
import torch

from peftlab.arch import target_module_names
from peftlab.errors import PeftlabError
from peftlab.heads.gate import ablation_gate, head_gate, ones_gate
from peftlab.heads.importance import exact_importance, importance, iter_exact_importance, taylor_importance
import numpy as np
from peftlab.testing import FAMILIES, tiny_config


ROW_KEYS = ["layer", "head", "I", "I_se", "I_ci_low", "I_ci_high", "loss_base", "loss_ablate", "metric_name",
            "metric_base", "metric_ablate", "n_examples", "impl", "dL_dgate", "taylor"]


def assert_same_rows(fast, naive, atol=1e-6):
    assert [(r["layer"], r["head"]) for r in fast] == [(r["layer"], r["head"]) for r in naive]
    for a, b in zip(fast, naive):
        for key in ("loss_base", "loss_ablate", "metric_base", "metric_ablate"):
            assert a[key] == pytest.approx(b[key], rel=2e-6, abs=atol), (a["layer"], a["head"], key)
        # I is a difference of two losses: its rounding error scales with the losses, not with I
        assert a["I"] == pytest.approx(b["I"], abs=atol + 2e-6 * abs(b["loss_base"])), (a["layer"], a["head"])
        assert a["I_se"] == pytest.approx(b["I_se"], abs=atol + 2e-6 * abs(b["loss_base"])), (a["layer"], a["head"])


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_equals_naive(family, loud_tiny_model, tiny_batches):
    model, batches = loud_tiny_model(family), tiny_batches()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to the naive path would warn: fail instead
        fast = exact_importance(model, batches, impl="fast", progress=False)
    naive = exact_importance(model, batches, impl="naive", progress=False)
    assert [r["impl"] for r in fast] == ["fast"] * 8 and [r["impl"] for r in naive] == ["naive"] * 8
    assert max(abs(r["I"]) for r in naive) > 1e-2  # heads matter in these models: the test can fail
    assert_same_rows(fast, naive)
    assert all(list(r) == ROW_KEYS and r["n_examples"] == 5 for r in fast)


@pytest.mark.parametrize("family, expected", [("bert", True), ("roberta", True), ("electra", True),
                                              ("deberta-v2", False), ("llama", False), ("gpt2", False)])
def test_last_layer_at_the_read_rows_only_equals_the_full_last_layer(family, expected, loud_tiny_model,
                                                                     tiny_batches):
    """Issue 12: BERT-like encoders run the last layer's q and attention for the read rows alone; causal
    decoders (mask may be implied), fused q/k/v and DeBERTa's eager attention keep the full last layer."""
    from peftlab.heads.batches import measurement_mode
    from peftlab.heads.layer_replay import LayerReplay, take_rows

    model = loud_tiny_model(family)
    replay = LayerReplay(model)
    assert replay.read_rows is expected
    with measurement_mode(model), torch.no_grad():
        for batch in tiny_batches():
            record = replay.record(batch, keep_layer_inputs=True)
            x_last = record.layer_inputs[-1]
            full = replay.read_ctx(record, x_last, read_rows=False)
            assert torch.equal(full, take_rows(record.last_ctx, record.read))
            if expected:
                rows = replay.read_ctx(record, x_last, read_rows=True)
                assert rows.shape == full.shape and torch.allclose(rows, full, atol=1e-5, rtol=1e-5)
    assert model.config._attn_implementation != "peftlab_read_rows"  # the model's own attention is restored


def test_a_read_rows_attention_that_disagrees_is_switched_off_not_used(loud_tiny_model, tiny_batches, monkeypatch):
    from transformers.modeling_utils import AttentionInterface

    from peftlab.heads import layer_replay

    def wrong(module, query, key, value, attention_mask, **kwargs):  # a read-rows attention gone wrong
        n_rows, n_heads, seq_len, d_head = query.shape
        return torch.zeros(n_rows, seq_len, n_heads, d_head), None

    monkeypatch.setitem(AttentionInterface._global_mapping, layer_replay.READ_ROWS_ATTENTION, wrong)
    model, batches = loud_tiny_model("bert"), tiny_batches()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to naive: only the optimisation is dropped
        fast = exact_importance(model, batches, impl="fast", progress=False)
    assert [r["impl"] for r in fast] == ["fast"] * 8
    assert_same_rows(fast, exact_importance(model, batches, impl="naive", progress=False))


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_fast_without_the_layer_input_cache_equals_naive(family, loud_tiny_model, tiny_batches):
    model, batches = loud_tiny_model(family), tiny_batches()
    streamed = exact_importance(model, batches, impl="fast", progress=False, memory_mb=0)
    assert_same_rows(streamed, exact_importance(model, batches, impl="naive", progress=False))


def test_naive_row_is_the_loss_with_the_head_gated_off(loud_tiny_model, tiny_batches):
    model, batches = loud_tiny_model("roberta"), tiny_batches()
    rows = exact_importance(model, batches, impl="naive", progress=False)
    with torch.no_grad(), head_gate(model, ablation_gate(model, 1, 3)):
        losses = [model(**b).loss * len(b["labels"]) for b in batches]
    row = rows[1 * 4 + 3]
    assert (row["layer"], row["head"]) == (1, 3)
    assert row["loss_ablate"] == pytest.approx(float(sum(losses) / 5), abs=1e-6)
    assert row["I"] == pytest.approx(row["loss_ablate"] - row["loss_base"], abs=1e-12)


@pytest.mark.parametrize("family", ["bert", "qwen2"])
def test_fast_equals_naive_for_regression_with_pearson(family, loud_tiny_model, tiny_batches):
    model, batches = loud_tiny_model(family, num_labels=1), tiny_batches(regression=True)
    fast = exact_importance(model, batches, impl="fast", progress=False)
    naive = exact_importance(model, batches, impl="naive", progress=False)
    assert fast[0]["metric_name"] == "pearson" and -1 <= fast[0]["metric_base"] <= 1
    assert_same_rows(fast, naive)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_fast_equals_naive_with_peft_lora_on_every_matrix(family, loud_tiny_model, tiny_batches):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    targets = target_module_names(loud_tiny_model(family), ["q", "k", "v", "o", "ffn_in", "ffn_out"])
    model = get_peft_model(loud_tiny_model(family), LoraConfig(r=4, target_modules=targets,
                                                               init_lora_weights=False)).eval()
    fast = exact_importance(model, tiny_batches(), impl="fast", progress=False)
    assert_same_rows(fast, exact_importance(model, tiny_batches(), impl="naive", progress=False))


def _o_correction_layers(monkeypatch):
    """Spy on the fast path's per-layer decision: {layer: used the o-proj correction}."""
    import peftlab.heads.importance_fast as fast_module

    decided = {}
    real = fast_module._checked_o_affine

    def spy(replay, record, layer, x, ctx, o_full):
        o_map = real(replay, record, layer, x, ctx, o_full)
        decided[layer] = o_map is not None
        return o_map

    monkeypatch.setattr(fast_module, "_checked_o_affine", spy)
    return decided


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("wrapper", ["plain", "own_lora", "peft_lora"])
def test_o_proj_correction_is_used_on_every_family_and_wrapper(family, wrapper, loud_tiny_model, tiny_batches,
                                                               monkeypatch):
    """The ablated layer's o-proj output is o(ctx) − ctx_h @ W_hᵀ (rank d_head): used for every layer but the
    last on plain, own-LoRA and PEFT-LoRA models (o wrapped, B ≠ 0), with the same rows as the naive path."""
    model = loud_tiny_model(family)
    if wrapper != "plain":
        targets = target_module_names(model, ["q", "o"])
        torch.manual_seed(0)
        if wrapper == "peft_lora":
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=4, target_modules=targets, init_lora_weights=False)).eval()
        else:
            from peftlab.methods.lora import LoraLinear

            for name in targets:
                lora = LoraLinear(model.get_submodule(name), rank=4, alpha=8, dropout=0.0)
                torch.nn.init.normal_(lora.lora_B, std=0.3)  # B ≠ 0: the wrapper changes o
                model.set_submodule(name, lora)
            model.eval()
    decided = _o_correction_layers(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = exact_importance(model, tiny_batches(), impl="fast", progress=False)
    assert decided == {0: True}  # 2 layers: the last one's tail runs at the read rows, without it
    assert_same_rows(fast, exact_importance(model, tiny_batches(), impl="naive", progress=False))


def test_o_proj_that_is_not_affine_is_run_as_a_module(loud_tiny_model, tiny_batches, monkeypatch):
    """An o-proj with an activation inside (not affine) gets no correction; the rows still equal naive."""
    from peftlab.arch import get_arch, find_layers

    model = loud_tiny_model("bert")
    _, layers = find_layers(model)
    o_path = get_arch(model).o_path
    layers[0].set_submodule(o_path, torch.nn.Sequential(layers[0].get_submodule(o_path), torch.nn.Tanh()))
    decided = _o_correction_layers(monkeypatch)
    fast = exact_importance(model, tiny_batches(), impl="fast", progress=False)
    assert decided == {0: False} and {r["impl"] for r in fast} == {"fast"}
    assert_same_rows(fast, exact_importance(model, tiny_batches(), impl="naive", progress=False))


def test_done_heads_are_skipped_and_the_rest_come_in_order(loud_tiny_model, tiny_batches):
    model, batches = loud_tiny_model("llama"), tiny_batches()
    done = {(0, 0), (0, 3), (1, 1)}
    seen = []
    rows = exact_importance(model, batches, impl="fast", done=done, on_head=seen.append, progress=False)
    expected = [(layer, head) for layer in range(2) for head in range(4) if (layer, head) not in done]
    assert [(r["layer"], r["head"]) for r in rows] == expected and [result.row for result in seen] == rows
    full = {(r["layer"], r["head"]): r for r in exact_importance(model, batches, progress=False)}
    assert all(r["I"] == full[(r["layer"], r["head"])]["I"] for r in rows)


def test_layer_rows_are_yielded_before_later_layers_are_computed(loud_tiny_model, tiny_batches):
    progress = []
    rows = iter_exact_importance(loud_tiny_model("bert"), tiny_batches(), progress=False,
                                 on_progress=lambda done, total: progress.append((done, total)))
    first = next(rows).row
    assert (first["layer"], first["head"]) == (0, 0)
    done_so_far, total = progress[-1]
    assert done_so_far < total  # layer 1 has not run yet
    assert len(list(rows)) == 7 and progress[-1][0] == progress[-1][1]
    # One bar over the base pass and the sweep: a single total, counted up one unit at a time.
    assert len({total for _, total in progress}) == 1
    assert [done for done, _ in progress] == list(range(1, total + 1))


def test_deberta_with_a_conv_after_layer_0_falls_back_to_naive(tiny_batches):
    from transformers import AutoModelForSequenceClassification

    config = tiny_config("deberta-v2")
    config.conv_kernel_size = 3  # the encoder adds a conv after layer 0: layers do not simply chain
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    with pytest.warns(UserWarning, match="input of layer 1 is not the output of layer 0"):
        rows = exact_importance(model, tiny_batches(), impl="fast", progress=False)
    assert {r["impl"] for r in rows} == {"naive"}
    assert_same_rows(rows, exact_importance(model, tiny_batches(), impl="naive", progress=False))


def test_classifier_reading_all_positions_falls_back_to_naive(loud_tiny_model, tiny_batches):
    model = loud_tiny_model("bert")
    original = model.bert.pooler.forward
    model.bert.pooler.forward = lambda hidden_states: original(hidden_states.mean(1, keepdim=True))  # mean pool
    with pytest.warns(UserWarning, match="restarting at the last layer"):
        rows = exact_importance(model, tiny_batches(), impl="fast", progress=False)
    assert {r["impl"] for r in rows} == {"naive"}


def _rms_norm_float64(module, hidden):
    return module.weight * (hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + module.variance_epsilon))


@pytest.mark.parametrize("family", FAMILIES)
def test_taylor_equals_finite_differences_of_the_subset_loss(family, loud_tiny_model, tiny_batches):
    import types

    model, batches = loud_tiny_model(family, dtype=torch.float64), tiny_batches()
    for module in model.modules():  # LLaMA/Qwen2 RMSNorm upcasts to float32: too noisy for a 1e-6 step
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = types.MethodType(_rms_norm_float64, module)
    rows = taylor_importance(model, batches, progress=False)

    def subset_loss(gate):
        logits = []
        with torch.no_grad(), head_gate(model, gate):
            logits = torch.cat([model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                                for b in batches])
        return torch.nn.functional.cross_entropy(logits, torch.cat([b["labels"] for b in batches]))

    step = 1e-6
    for row in rows:
        plus, minus = ones_gate(model, dtype=torch.float64), ones_gate(model, dtype=torch.float64)
        plus[row["layer"], row["head"]] += step
        minus[row["layer"], row["head"]] -= step
        finite = float(subset_loss(plus) - subset_loss(minus)) / (2 * step)
        assert row["dL_dgate"] == pytest.approx(finite, rel=1e-4, abs=1e-8)  # signed: ∂L/∂g, not |∂L/∂g|
        assert row["taylor"] == abs(row["dL_dgate"])
        # A Taylor score is never importance: I and its spread stay null without an ablation.
        assert row["I"] is None and row["I_se"] is None and row["loss_ablate"] is None and row["impl"] is None
    assert max(r["taylor"] for r in rows) > 1e-3
    assert min(r["dL_dgate"] for r in rows) < 0 < max(r["dL_dgate"] for r in rows)  # both signs occur


def test_bad_impl_and_bad_batches_are_peftlab_errors(loud_tiny_model, tiny_batches):
    model = loud_tiny_model("bert")
    with pytest.raises(PeftlabError, match="unknown importance impl 'exact'.*fast, naive, taylor"):
        importance(model, tiny_batches(), impl="exact")
    with pytest.raises(PeftlabError, match="choose 'fast' or 'naive'"):
        exact_importance(model, tiny_batches(), impl="taylor")
    unlabeled = [{k: v for k, v in b.items() if k != "labels"} for b in tiny_batches()]
    with pytest.raises(PeftlabError, match="batch 0 has no labels"):
        exact_importance(model, unlabeled)
    with pytest.raises(PeftlabError, match="no batches"):
        exact_importance(model, [])


def test_measuring_restores_training_mode_and_cache_setting(loud_tiny_model, tiny_batches):
    model = loud_tiny_model("llama").train()
    assert model.config.use_cache
    exact_importance(model, tiny_batches(), progress=False)
    assert model.training and model.config.use_cache


def test_custom_metric_is_used(loud_tiny_model, tiny_batches):
    def mean_logit(logits, labels):
        return float(logits.mean())

    rows = exact_importance(loud_tiny_model("gpt2"), tiny_batches(), metric_fn=mean_logit, progress=False)
    assert rows[0]["metric_name"] == "mean_logit"
    assert rows[0]["metric_base"] != rows[0]["metric_ablate"]


@pytest.mark.slow
def test_minilm_rte_smoke_fast_equals_naive(data_dir):
    """Packaged MiniLM, 16 real RTE dev examples: fast vs naive on heads of the first, middle and last layer."""
    from peftlab.heads.subset import tokenize_batches
    from peftlab.models import load_model, load_tokenizer
    from peftlab.tasks import load_split

    data = load_split("rte", "dev", data_dir)
    tokenizer = load_tokenizer(None)
    batches = tokenize_batches(tokenizer, data.text_a[:16], data.text_b[:16], data.labels[:16], max_len=64,
                               batch_size=16)
    torch.manual_seed(0)
    model = load_model(None, num_labels=2).eval()
    with torch.no_grad():  # a non-trivial classifier, so that heads matter (the init one gives I ≈ 0)
        model.classifier.weight.normal_(0, 2.0)
    probe = [(0, 0), (2, 7), (5, 11)]
    measured = set(probe) | {(layer, head) for layer in (4, 5) for head in range(12)}  # keeps the test < 20 s
    skip = {(layer, head) for layer in range(6) for head in range(12)} - measured
    fast_d, naive_d = {}, {}
    fast = exact_importance(model, batches, impl="fast", progress=False, done=skip,
                            on_head=lambda r: fast_d.update({(r.row["layer"], r.row["head"]): r.d}))
    naive = exact_importance(model, batches, impl="naive", progress=False, done=skip | (measured - set(probe)),
                             on_head=lambda r: naive_d.update({(r.row["layer"], r.row["head"]): r.d}))
    assert len(fast) == 26 and fast[0]["n_examples"] == 16 and {r["impl"] for r in fast} == {"fast"}
    by_head = {(r["layer"], r["head"]): r for r in fast}
    assert_same_rows([by_head[h] for h in probe], naive, atol=1e-5)  # I and I_se
    assert all(np.max(np.abs(fast_d[h] - naive_d[h])) <= 1e-5 for h in probe)
    assert max(abs(r["I"]) for r in fast) > 1e-4


# ---------------------------------------------------------------------- per-example differences, I_se, CI


def _results(model, batches, impl, **kwargs):
    return list(iter_exact_importance(model, batches, impl=impl, progress=False, **kwargs))


@pytest.mark.parametrize("family,regression", [("bert", False), ("llama", False), ("gpt2", True)])
def test_per_example_differences_agree_and_define_I_se_and_the_t_interval(family, regression, loud_tiny_model,
                                                                          tiny_batches):
    from scipy.stats import t

    model = loud_tiny_model(family, num_labels=1 if regression else 2)
    batches = tiny_batches(regression=regression)
    fast, naive = _results(model, batches, "fast"), _results(model, batches, "naive")
    assert {r.row["impl"] for r in fast} == {"fast"}
    for a, b in zip(fast, naive):
        assert a.d.dtype == np.float64 and a.d.shape == (5,)
        # The same d_i, example by example, up to fp32 rounding relative to their size (the loud regression
        # model's squared errors reach ~8; the fast path sums o-proj terms in another order).
        assert np.all(np.abs(a.d - b.d) <= 1e-5 * np.maximum(1.0, np.abs(b.d)))
        d, row = a.d, a.row
        assert row["I"] == pytest.approx(float(np.mean(d)), abs=1e-15)
        assert row["I"] == pytest.approx(row["loss_ablate"] - row["loss_base"], abs=1e-12)
        se = float(np.std(d, ddof=1) / np.sqrt(5))
        assert row["I_se"] == pytest.approx(se, rel=1e-12)
        half = t.ppf(0.975, 4) * se
        assert (row["I_ci_low"], row["I_ci_high"]) == (pytest.approx(row["I"] - half), pytest.approx(row["I"] + half))
    assert max(r.row["I_se"] for r in fast) > 1e-3  # examples disagree: the spread is real


def test_per_example_losses_are_the_models_own_loss(loud_tiny_model, tiny_batches):
    """d_i are differences of L_i that average to the model's reported loss, with and without the head."""
    model, batches = loud_tiny_model("roberta"), tiny_batches()
    (result,) = _results(model, batches, "naive", done={(l, h) for l in range(2) for h in range(4)} - {(1, 3)})
    with torch.no_grad():
        base = [model(**b) for b in batches]
        with head_gate(model, ablation_gate(model, 1, 3)):
            ablated = [model(**b) for b in batches]
    def per_example(outputs):
        return torch.cat([torch.nn.functional.cross_entropy(o.logits.double(), b["labels"], reduction="none")
                          for o, b in zip(outputs, batches)]).numpy()
    np.testing.assert_allclose(result.d, per_example(ablated) - per_example(base), atol=1e-6)
    model_mean = float(sum(o.loss * len(b["labels"]) for o, b in zip(base, batches)) / 5)
    assert result.row["loss_base"] == pytest.approx(model_mean, abs=1e-6)


def test_a_model_with_another_loss_is_refused(loud_tiny_model, tiny_batches):
    model = loud_tiny_model("bert")
    original = model.forward

    def smoothed(**kwargs):  # a model whose own loss is not the mean per-example cross-entropy
        outputs = original(**kwargs)
        outputs.loss = torch.nn.functional.cross_entropy(outputs.logits, kwargs["labels"], label_smoothing=0.3)
        return outputs

    model.forward = smoothed
    with pytest.raises(PeftlabError, match="not the mean per-example cross-entropy"):
        exact_importance(model, tiny_batches(), impl="naive", progress=False)


def test_single_example_subset_has_no_spread(loud_tiny_model, tiny_batches):
    batch = {k: v[:1] for k, v in tiny_batches()[0].items()}
    rows = exact_importance(loud_tiny_model("bert"), [batch], impl="fast", progress=False)
    assert all(r["I_se"] is None and r["I_ci_low"] is None and r["I"] is not None for r in rows)


@pytest.mark.parametrize("task,name", [("MRPC", "f1"), ("CoLA", "matthews_corr")])
def test_the_tasks_main_metric_is_used(task, name, loud_tiny_model, tiny_batches):
    from peftlab.tasks import metrics_from_logits

    model, batches = loud_tiny_model("bert"), tiny_batches()
    rows = exact_importance(model, batches, impl="fast", progress=False, task=task)
    with torch.no_grad():
        logits = torch.cat([model(**b).logits for b in batches])
    labels = torch.cat([b["labels"] for b in batches]).numpy()
    assert rows[0]["metric_name"] == name
    assert rows[0]["metric_base"] == metrics_from_logits(task, logits, labels)[name]
    assert taylor_importance(model, batches, progress=False, task=task)[0]["metric_name"] == name


def test_ablation_module_owns_the_arithmetic():
    """importance_fast builds rows with ablation.py and does not import importance.py (no cycle)."""
    import inspect

    import peftlab.heads.importance_fast as fast

    source = inspect.getsource(fast)
    assert "from peftlab.heads.ablation import" in source
    assert "heads.importance import" not in source and "def importance_row" not in source


# ---------------------------------------------------------------------- row chunks of the fast path


def test_split_rows_keeps_row_order_trims_trailing_padding_and_bounds_the_chunk_size():
    from peftlab.heads.batches import split_rows, trim_padding

    ids = torch.arange(40).view(5, 8)  # [B=5, T=8]
    mask = torch.ones(5, 8, dtype=torch.long)
    mask[:, 6:] = 0  # two trailing pad columns in every row
    mask[0, 3:] = 0
    mask[1, 4:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.arange(5)}
    trimmed = trim_padding(batch)
    assert trimmed["input_ids"].shape == (5, 6) and torch.equal(trimmed["input_ids"], ids[:, :6])
    chunks = split_rows(batch, max_tokens=12)  # ≤ 12 // 6 = 2 rows per chunk -> 3 chunks of 2, 1, 2 rows
    assert [c["labels"].tolist() for c in chunks] == [[0, 1], [2], [3, 4]]
    assert [c["input_ids"].shape[1] for c in chunks] == [4, 6, 6]  # the first chunk trimmed to its longest row
    assert all(c["input_ids"].numel() <= 12 for c in chunks)
    assert torch.equal(torch.cat([c["input_ids"][:, :4] for c in chunks]), ids[:, :4])
    assert len(split_rows(batch, max_tokens=11)) == 5  # 11 // 6 = 1 row per chunk
    # left padding (real tokens last) keeps every column; a huge budget keeps the batch whole
    left = {"input_ids": ids, "attention_mask": mask.flip(1), "labels": torch.arange(5)}
    assert trim_padding(left) is left
    assert split_rows(left, max_tokens=10**6) == [left]


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_in_row_chunks_equals_naive_example_by_example(family, loud_tiny_model, tiny_batches):
    """Chunks of one row (max_tokens 1) and trimmed padding change nothing but float rounding, d_i in subset order."""
    from peftlab.heads.importance_fast import iter_fast_importance

    model, batches = loud_tiny_model(family), tiny_batches()
    batches[0]["attention_mask"][:, -1] = 0  # a trailing column of padding in every row: trimmed away
    batches[0]["input_ids"][:, -1] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chunked = list(iter_fast_importance(model, batches, progress=False, chunk_tokens=1))
    naive = _results(model, batches, "naive")
    assert_same_rows([r.row for r in chunked], [r.row for r in naive])
    for a, b in zip(chunked, naive):
        assert np.max(np.abs(a.d - b.d)) <= 1e-5
