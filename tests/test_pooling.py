"""pooling=mean (peftlab.pooling): what the classifier reads, kept through save/load, probe and fast sweep."""

from __future__ import annotations

import warnings

import pytest
import torch

from peftlab.errors import PeftlabError
from peftlab.heads.importance import exact_importance
from peftlab.pooling import apply_pooling, masked_mean, pooling_of


def _by_hand(model, batch):
    """classifier(tanh(dense(masked mean of the last hidden states))) — BertForSequenceClassification's head on the mean."""
    with torch.no_grad():
        hidden = model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        m = batch["attention_mask"].float().unsqueeze(-1)  # [B, T] -> [B, T, 1]
        mean = (hidden * m).sum(1) / m.sum(1)  # [B, H]
        return model.classifier(model.bert.pooler.activation(model.bert.pooler.dense(mean)))


def test_mean_pooling_is_the_masked_mean_into_the_models_pooler(loud_tiny_model, tiny_batches):
    model = loud_tiny_model("bert")
    batch = tiny_batches()[0]  # row 0 is padded
    with torch.no_grad():
        cls_logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    apply_pooling(model, "mean")
    assert pooling_of(model) == "mean" and model.config.peftlab_pooling == "mean"
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(logits, _by_hand(model, batch), rtol=1e-5, atol=1e-6)
    assert (logits - cls_logits).abs().max() > 1e-3  # it reads something else than [CLS]: the test can fail
    apply_pooling(model, "mean")  # idempotent: hooks are not stacked
    with torch.no_grad():
        again = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(again, logits, rtol=0, atol=0)


def test_padding_does_not_change_the_mean(loud_tiny_model, tiny_batches):
    model = apply_pooling(loud_tiny_model("bert"), "mean")
    batch = tiny_batches()[1]
    ids, mask = batch["input_ids"], batch["attention_mask"]
    padded_ids = torch.cat([ids, torch.zeros(ids.shape[0], 3, dtype=ids.dtype)], dim=1)  # 3 pad tokens more
    padded_mask = torch.cat([mask, torch.zeros(mask.shape[0], 3, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        short = model(input_ids=ids, attention_mask=mask).logits
        long = model(input_ids=padded_ids, attention_mask=padded_mask).logits
    torch.testing.assert_close(long, short, rtol=1e-5, atol=1e-6)
    assert model.bert.pooler is not None and model._peftlab_mean_pooling.mask is None  # cleared after the body ran


def test_masked_mean_formula():
    hidden = torch.arange(12, dtype=torch.float32).view(1, 3, 4)  # [B=1, T=3, H=4]
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(masked_mean(hidden, mask), ((hidden[0, 0] + hidden[0, 1]) / 2).view(1, 1, 4))
    torch.testing.assert_close(masked_mean(hidden, None), hidden.mean(1, keepdim=True))


@pytest.mark.parametrize("family", ["roberta", "llama", "gpt2"])
def test_other_families_are_refused_with_one_line(family, loud_tiny_model):
    with pytest.raises(PeftlabError, match="pooling=mean is supported for bert"):
        apply_pooling(loud_tiny_model(family), "mean")


def test_unknown_pooling_is_a_config_error():
    from peftlab.config import TrainConfig, validate

    with pytest.raises(PeftlabError, match="unknown pooling 'max'; choose from cls, mean"):
        validate(TrainConfig(task="sst2", pooling="max"))
    assert validate(TrainConfig(task="sst2", pooling="mean")).pooling == "mean"


def test_the_choice_is_saved_and_reapplied_on_load(tmp_path, loud_tiny_model, tiny_batches):
    from peftlab.models import load_model

    model = apply_pooling(loud_tiny_model("bert"), "mean")
    model.save_pretrained(tmp_path)
    batch = tiny_batches()[0]
    loaded = load_model(str(tmp_path), 2)
    assert pooling_of(loaded) == "mean"
    with torch.no_grad():
        a = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    plain = load_model(str(tmp_path), 2, pooling="cls")  # an explicit choice wins over the checkpoint's
    assert pooling_of(plain) == "cls" and not hasattr(plain, "_peftlab_mean_pooling")


def test_fast_sweep_equals_naive_with_mean_pooling(loud_tiny_model, tiny_batches):
    model = apply_pooling(loud_tiny_model("bert"), "mean")
    batches = tiny_batches()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to the naive path would warn: fail instead
        fast = exact_importance(model, batches, impl="fast", progress=False)
    naive = exact_importance(model, batches, impl="naive", progress=False)
    assert [r["impl"] for r in fast] == ["fast"] * 8
    assert max(abs(r["I"]) for r in naive) > 1e-2
    for a, b in zip(fast, naive):
        assert a["I"] == pytest.approx(b["I"], abs=1e-6 + 2e-6 * abs(b["loss_base"]))
        assert a["I_se"] == pytest.approx(b["I_se"], abs=1e-6 + 2e-6 * abs(b["loss_base"]))
    # and the cls model gives other numbers: the sweep really measured the mean-pooled function
    cls_naive = exact_importance(loud_tiny_model("bert"), batches, impl="naive", progress=False)
    assert max(abs(a["I"] - b["I"]) for a, b in zip(naive, cls_naive)) > 1e-3


def test_fast_sweep_with_mean_pooling_and_peft_lora(loud_tiny_model, tiny_batches):
    from peft import LoraConfig, get_peft_model

    model = apply_pooling(loud_tiny_model("bert"), "mean")
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value", "attention.output.dense"],
                        task_type="SEQ_CLS", init_lora_weights=False)
    model = get_peft_model(model, config).eval()
    batches = tiny_batches()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = exact_importance(model, batches, impl="fast", progress=False)
    naive = exact_importance(model, batches, impl="naive", progress=False)
    assert [r["impl"] for r in fast] == ["fast"] * 8
    for a, b in zip(fast, naive):
        assert a["I"] == pytest.approx(b["I"], abs=1e-6 + 2e-6 * abs(b["loss_base"]))


def test_probe_replays_the_mean_pooled_classifier(loud_tiny_model, tiny_batches):
    """The θ0 probe's cached features are the pooled mean; its replay check against the model's logits passes,
    and the fitted classifier gives the same logits through the real model."""
    from peftlab.heads.probe import train_probe

    model = apply_pooling(loud_tiny_model("bert"), "mean")
    batches = tiny_batches()
    info = train_probe(model, batches, batches[:1], batches[1:], max_steps=20, eval_every=10)
    assert info["pooler"] == "bert.pooler"
    batch = batches[0]
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(logits, _by_hand(model, batch), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["fft", "lora"])
def test_a_mean_pooled_run_records_it_and_loads_back_mean_pooled(method, tmp_path, tiny_dir, data_dir):
    """pooling=mean trains, is recorded in run_config.json and ckpt_init/config.json, and θ0 and θ1 load back
    reading the mean (the saved weights are plain HF: the hooks come from the recorded config)."""
    from peftlab.config import load_config
    from peftlab.io import read_json
    from peftlab.runs import load_run_model
    from peftlab.train import train_run

    cfg = load_config(None, [f"model={tiny_dir}", f"data_dir={data_dir}", f"out={tmp_path}", "task=rte",
                             f"method={method}", "max_steps=2", "batch_size=4", "max_train_samples=8",
                             "max_eval_samples=8", "max_len=32", "pooling=mean"])
    run_dir = train_run(cfg)
    assert read_json(run_dir / "run_config.json")["config"]["pooling"] == "mean"
    assert read_json(run_dir / "ckpt_init" / "config.json")["peftlab_pooling"] == "mean"
    for which in ("init", "final"):
        model, _, _ = load_run_model(run_dir, which)
        assert pooling_of(model) == "mean", which
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        assert getattr(base, "_peftlab_mean_pooling", None) is not None, which


def test_a_finished_run_is_not_reused_for_another_pooling_and_old_runs_count_as_cls(tmp_path, tiny_dir, data_dir):
    from peftlab.config import load_config
    from peftlab.errors import PeftlabError
    from peftlab.io import atomic_write_json, read_json
    from peftlab.train import train_run

    args = [f"model={tiny_dir}", f"data_dir={data_dir}", f"out={tmp_path}", "task=rte", "method=fft", "max_steps=1",
            "batch_size=4", "max_train_samples=4", "max_eval_samples=4", "max_len=16"]
    run_dir = train_run(load_config(None, args))
    with pytest.raises(PeftlabError, match="pooling"):
        train_run(load_config(None, [*args, "pooling=mean"]))
    info = read_json(run_dir / "run_config.json")  # a run written before the key existed
    del info["config"]["pooling"]
    atomic_write_json(run_dir / "run_config.json", info)
    assert train_run(load_config(None, args)) == run_dir  # reused, not refused
