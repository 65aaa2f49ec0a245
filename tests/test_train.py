"""The training loop on a tiny BERT with a few dozen real RTE / STS-B rows (each run ~1-2 s on CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from peftlab.config import load_config
from peftlab.errors import PeftlabError
from peftlab.io import read_json, read_jsonl
from peftlab.runs import is_finished, load_run_model, run_dir_for
from peftlab.train import train_run
from peftlab.training.callbacks import StopAfterStepCallback
from peftlab.training.data import EpochSeededSampler

# 24 rows / batch 8 = 3 steps per epoch, 2 epochs = 6 optimizer steps.
SMALL = ["max_train_samples=24", "max_eval_samples=16", "batch_size=8", "eval_batch_size=16", "epochs=2",
         "max_len=48", "logging_steps=1", "save_steps=2", "seed=3"]


def save_tiny_body_dir(path: Path, family: str = "bert") -> Path:
    """A tiny random *body* without a task head + the MiniLM tokenizer — like the packaged MiniLM
    checkpoint, so the classifier is freshly initialised (from the seed) at load time."""
    from peftlab.models import load_tokenizer
    from peftlab.testing import tiny_model

    tiny_model(family).base_model.save_pretrained(path)
    load_tokenizer(None).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_body_dir(tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture(scope="module")
def make_cfg(tiny_dir, data_dir):
    def make(out, *overrides):
        return load_config(None, [f"model={tiny_dir}", f"data_dir={data_dir}", f"out={out}", "task=rte",
                                  *SMALL, *overrides])
    return make


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, make_cfg):
    """One finished LoRA run (r=4 on q,v) shared by several read-only tests."""
    out = tmp_path_factory.mktemp("lora")
    return train_run(make_cfg(out, "method=lora", "rank=4", "alpha=8", "targets=q,v"))


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted((run_dir / "ckpt_final").glob("*.safetensors")):
        out.update(load_file(path))
    return out


def _rows_without_runtime(path: Path) -> list[dict]:
    noisy = ("runtime", "per_second", "flos")
    return [{k: v for k, v in row.items() if not any(n in k for n in noisy)} for row in read_jsonl(path)]


def _batch(tokenizer):
    enc = tokenizer(["A man is playing a guitar.", "Nobody came."], ["Someone plays.", "Everyone came to it."],
                    padding=True, return_tensors="pt")
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def test_run_dir_layout_and_contents(lora_run, make_cfg):
    run = lora_run
    assert run == run_dir_for(make_cfg(run.parents[2], "method=lora", "rank=4", "alpha=8", "targets=q,v"))
    assert run.parts[-3:] == ("LoRA", "RTE", "seed3_r4__alpha-8__targets-q-v")  # non-default options in the name
    names = {p.name for p in run.iterdir()}
    assert {"run_config.json", "ckpt_init", "ckpt_final", "metrics.jsonl", "final_metrics.json"} <= names
    assert "checkpoints" not in names  # deleted after a successful finish
    assert not [n for n in names if ".tmp-" in n]
    assert (run / "ckpt_init" / "config.json").is_file() and (run / "ckpt_init" / "tokenizer.json").is_file()

    fm = read_json(run / "final_metrics.json")
    for key in ("task", "method", "seed", "rank", "dev", "main_metric", "score", "timing", "peak_memory_mb",
                "trainable_params", "total_params", "finished"):
        assert key in fm, key
    assert fm["finished"] is True and is_finished(run)
    assert (fm["task"], fm["method"], fm["seed"], fm["rank"]) == ("RTE", "lora", 3, 4)
    assert fm["main_metric"] == "accuracy" and fm["score"] == fm["dev"]["accuracy"]
    assert 0.0 <= fm["score"] <= 1.0 and fm["eval_samples"] == 16 and fm["train_samples"] == 24
    assert fm["global_step"] == 6
    assert set(fm["timing"]) == {"data_s", "train_s", "eval_s", "save_s", "total_s"}
    assert all(v >= 0 for v in fm["timing"].values())
    assert fm["timing"]["total_s"] >= fm["timing"]["train_s"]
    assert fm["peak_memory_kind"] == "cpu_peak_rss_process" and fm["peak_memory_mb"] > 0
    # LoRA r=4 on q and v of 2 layers (hidden 32): 2·2·(4·32 + 32·4) + classifier (32·2 + 2)
    assert fm["trainable_params"] == 2 * 2 * (4 * 32 + 32 * 4) + 32 * 2 + 2

    rc = read_json(run / "run_config.json")
    assert rc["task"] == "RTE" and rc["method"] == "lora" and rc["config"]["rank"] == 4
    assert rc["config"]["lr"] == 5e-4  # resolved method default is recorded
    assert {"torch", "transformers", "peft", "peftlab"} <= set(rc["versions"])
    assert "git_commit" in rc and "created" in rc
    assert rc["data"]["train"]["source"].endswith("RTE/train.tsv")
    assert rc["data"]["train"]["n_used"] == 24 and rc["data"]["train"]["n_rows"] == 2490

    rows = read_jsonl(run / "metrics.jsonl")
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [3, 6]  # one eval per epoch
    assert evals[-1]["eval_accuracy"] == fm["dev"]["accuracy"]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_ckpt_init_is_the_pre_apply_model(tmp_path, make_cfg, monkeypatch):
    """θ0 reloaded from ckpt_init gives exactly the logits of the model `method.apply` received."""
    from peftlab.methods import get_method
    from peftlab.models import load_tokenizer

    method = get_method("lora")
    seen = {}
    original_apply = method.apply

    def spy_apply(model, cfg):
        tokenizer = load_tokenizer(None)  # the tiny model dir holds the packaged MiniLM tokenizer
        model.eval()
        with torch.no_grad():
            seen["logits"] = model(**_batch(tokenizer)).logits.clone()
        model.train()
        return original_apply(model, cfg)

    monkeypatch.setattr(method, "apply", spy_apply)
    run = train_run(make_cfg(tmp_path, "method=lora", "rank=2", "max_steps=3", "eval_each_epoch=false"))
    monkeypatch.undo()
    model, tokenizer, info = load_run_model(run, "init")
    with torch.no_grad():
        logits = model(**_batch(tokenizer)).logits
    assert torch.equal(logits, seen["logits"])
    assert info["method"] == "lora" and not model.training
    # θ1 differs from θ0 (the classifier and LoRA B moved)
    final, _, _ = load_run_model(run, "final")
    with torch.no_grad():
        assert not torch.equal(final(**_batch(tokenizer)).logits, logits)


def test_classifier_init_depends_on_seed(tmp_path, make_cfg):
    a = train_run(make_cfg(tmp_path, "method=fft", "max_steps=1", "eval_each_epoch=false", "seed=1"))
    b = train_run(make_cfg(tmp_path, "method=fft", "max_steps=1", "eval_each_epoch=false", "seed=2"))
    wa, wb = load_file(a / "ckpt_init" / "model.safetensors"), load_file(b / "ckpt_init" / "model.safetensors")
    assert not torch.equal(wa["classifier.weight"], wb["classifier.weight"])
    assert torch.equal(wa["bert.encoder.layer.0.attention.self.query.weight"],
                       wb["bert.encoder.layer.0.attention.self.query.weight"])


class _OptimizerSpy(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.model = model
        self.groups = [list(g["params"]) for g in optimizer.param_groups]
        self.decays = [g["weight_decay"] for g in optimizer.param_groups]


@pytest.mark.parametrize("method", ["lora", "fft"])
def test_optimizer_holds_exactly_the_trainable_parameters(tmp_path, make_cfg, method):
    from peftlab.methods import get_method

    spy = _OptimizerSpy()
    run = train_run(make_cfg(tmp_path, f"method={method}", "rank=4", "max_steps=2", "eval_each_epoch=false",
                             "weight_decay=0.1"), callbacks=[spy])
    in_optimizer = {id(p) for group in spy.groups for p in group}
    trainable = get_method(method).trainable_parameters(spy.model)
    assert in_optimizer == {id(p) for _, p in trainable}
    assert in_optimizer == {id(p) for p in spy.model.parameters() if p.requires_grad}
    names = {id(p): n for n, p in spy.model.named_parameters()}
    decayed, not_decayed = [[names[id(p)] for p in g] for g in spy.groups]
    assert spy.decays == [0.1, 0.0]
    assert all("bias" not in n and "LayerNorm" not in n for n in decayed)
    assert any(n.endswith("classifier.bias") for n in not_decayed)
    fm = read_json(run / "final_metrics.json")
    if method == "fft":
        assert fm["trainable_params"] == fm["total_params"]
        assert run.parts[-3:] == ("FFT", "RTE", "seed3")
    else:
        assert fm["trainable_params"] < fm["total_params"] / 50
        # frozen base weights did not move: θ1's base W_q equals θ0's
        init, _, _ = load_run_model(run, "init")
        final, _, _ = load_run_model(run, "final")
        w0 = init.bert.encoder.layer[0].attention.self.query.weight
        w1 = dict(final.named_parameters())
        base = [v for k, v in w1.items() if k.endswith("layer.0.attention.self.query.base_layer.weight")
                or k == "bert.encoder.layer.0.attention.self.query.weight"]
        assert len(base) == 1 and torch.equal(base[0], w0)


def test_two_identical_runs_give_identical_results(tmp_path, make_cfg, lora_run):
    again = train_run(make_cfg(tmp_path, "method=lora", "rank=4", "alpha=8", "targets=q,v"))
    a, b = read_json(lora_run / "final_metrics.json"), read_json(again / "final_metrics.json")
    assert a["dev"] == b["dev"] and a["train_loss"] == b["train_loss"]
    wa, wb = _weights(lora_run), _weights(again)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert _rows_without_runtime(lora_run / "metrics.jsonl") == _rows_without_runtime(again / "metrics.jsonl")


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory, make_cfg, lora_run):
    """Uninterrupted runs per method (built on first use)."""
    cache = {"lora": lora_run}

    def get(method):
        if method not in cache:
            out = tmp_path_factory.mktemp(method)
            cache[method] = train_run(make_cfg(out, f"method={method}", "rank=4", "alpha=8", "targets=q,v"))
        return cache[method]
    return get


# stop mid first epoch / mid second epoch (the resumed run crosses an epoch boundary in its data order)
@pytest.mark.parametrize("method, stop_step", [("lora", 2), ("lora", 4), ("peft-lora", 4)])
def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, make_cfg, reference_runs, method, stop_step):
    lora_run = reference_runs(method)  # the uninterrupted run of this method
    cfg = make_cfg(tmp_path, f"method={method}", "rank=4", "alpha=8", "targets=q,v")
    run = run_dir_for(cfg)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, callbacks=[StopAfterStepCallback(stop_step)])
    # killed: nothing looks complete, a checkpoint exists, the run cannot be loaded
    assert not is_finished(run) and not (run / "final_metrics.json").exists()
    assert not (run / "ckpt_final").exists()
    assert (run / "checkpoints" / f"checkpoint-{stop_step}" / "trainer_state.json").is_file()
    with pytest.raises(PeftlabError, match=f"has not finished.*peftlab train --task RTE --method {method} --seed 3"):
        load_run_model(run, "final")

    resumed = train_run(cfg)  # the same command again
    a, b = read_json(lora_run / "final_metrics.json"), read_json(resumed / "final_metrics.json")
    assert b["resumed_from_step"] == stop_step
    assert a["dev"] == b["dev"] and a["train_loss"] == b["train_loss"] and a["global_step"] == b["global_step"]
    wa, wb = _weights(lora_run), _weights(resumed)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert _rows_without_runtime(lora_run / "metrics.jsonl") == _rows_without_runtime(resumed / "metrics.jsonl")
    assert not (resumed / "checkpoints").exists()


def test_resume_refuses_a_changed_config(tmp_path, make_cfg):
    cfg = make_cfg(tmp_path, "method=lora", "rank=4")
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, callbacks=[StopAfterStepCallback(2)])
    with pytest.raises(PeftlabError, match=r"other settings \(lr: 0.0005 -> 0.001\).*--force"):
        train_run(make_cfg(tmp_path, "method=lora", "rank=4", "lr=1e-3"))


def test_finished_run_is_skipped_and_force_reruns(tmp_path, make_cfg):
    cfg = make_cfg(tmp_path, "method=fft", "max_steps=2", "eval_each_epoch=false")
    run = train_run(cfg)
    stamp = (run / "final_metrics.json").stat().st_mtime_ns
    first = read_json(run / "final_metrics.json")
    (run / "ckpt_final" / "marker").write_text("left by the first run")
    assert train_run(cfg) == run
    assert (run / "final_metrics.json").stat().st_mtime_ns == stamp  # untouched
    assert (run / "ckpt_final" / "marker").exists()
    train_run(cfg, force=True)
    assert not (run / "ckpt_final" / "marker").exists()  # the directory was cleared first
    again = read_json(run / "final_metrics.json")
    assert again["dev"] == first["dev"] and again["resumed_from_step"] is None


def test_force_refuses_to_delete_foreign_files(tmp_path, make_cfg):
    cfg = make_cfg(tmp_path, "method=fft", "max_steps=1", "eval_each_epoch=false")
    run = run_dir_for(cfg)
    run.mkdir(parents=True)
    (run / "my_notes.txt").write_text("precious")
    with pytest.raises(PeftlabError, match="holds files peftlab did not write"):
        train_run(cfg, force=True)
    assert (run / "my_notes.txt").read_text() == "precious"


def test_regression_task_stsb(tmp_path, tiny_dir, data_dir):
    cfg = load_config(None, [f"model={tiny_dir}", f"data_dir={data_dir}", f"out={tmp_path}", "task=stsb",
                             "method=fft", *SMALL, "epochs=1"])
    run = train_run(cfg)
    fm = read_json(run / "final_metrics.json")
    assert fm["task"] == "STS-B" and fm["main_metric"] == "pearson"
    assert set(fm["dev"]) == {"loss", "pearson", "spearman"}
    assert -1.0 <= fm["score"] <= 1.0
    model, _, _ = load_run_model(run, "final")
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"


def test_regression_head_starts_at_the_training_label_mean(tmp_path, tiny_dir, data_dir):
    """θ0 (ckpt_init) predicts the mean of the rows trained on, and run_config says so; `zero` keeps HF's 0."""
    from peftlab.tasks import load_split

    labels = load_split("stsb", "train", data_dir).labels[:24]  # SMALL trains on the first 24 rows
    common = [f"model={tiny_dir}", f"data_dir={data_dir}", "task=stsb", "method=lora", "rank=2", "targets=q",
              *SMALL, "max_steps=1", "eval_each_epoch=false"]
    run = train_run(load_config(None, [*common, f"out={tmp_path / 'mean'}"]))
    init = load_file(run / "ckpt_init" / "model.safetensors")
    expected = sum(labels) / len(labels)
    assert init["classifier.bias"].item() == pytest.approx(expected, abs=1e-6)
    record = read_json(run / "run_config.json")["regression_bias"]
    assert record["rule"] == "mean" and record["module"] == "classifier"
    assert record["value"] == pytest.approx(expected, abs=1e-12)

    zero = train_run(load_config(None, [*common, f"out={tmp_path / 'zero'}", "regression_bias=zero"]))
    assert load_file(zero / "ckpt_init" / "model.safetensors")["classifier.bias"].item() == 0.0
    assert read_json(zero / "run_config.json")["regression_bias"]["value"] is None


def test_regression_bias_is_not_a_difference_on_classification_runs():
    """A classification run written before the key existed is still reused/resumed; a regression one is not."""
    from peftlab.training.loop import _config_diff

    old_rte = {"task": "RTE", "lr": 1e-4}  # no regression_bias key: written before it existed
    assert _config_diff(old_rte, {"task": "RTE", "lr": 1e-4, "regression_bias": "mean"}) == []
    old_stsb = {"task": "STS-B", "lr": 1e-4}
    assert _config_diff(old_stsb, {"task": "STS-B", "lr": 1e-4, "regression_bias": "mean"}) == [
        "regression_bias: 'zero' -> 'mean'"]


def test_unwritable_out_fails_before_any_work(tmp_path, make_cfg):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(PeftlabError, match=f"output directory {blocker}/out is not writable \\(Not a directory\\); choose a writable --out"):
        train_run(make_cfg(blocker / "out", "method=fft"))


def test_missing_data_leaves_no_run_dir(tmp_path, tiny_dir):
    cfg = load_config(None, [f"model={tiny_dir}", f"data_dir={tmp_path / 'nodata'}", f"out={tmp_path / 'out'}",
                             "task=rte", "method=fft"])
    with pytest.raises(PeftlabError, match="RTE"):
        train_run(cfg)
    assert not (tmp_path / 'out').exists()  # not even empty parent directories


def test_epoch_seeded_sampler_is_a_function_of_seed_and_epoch():
    lengths = [((i * 7) % 23) + 1 for i in range(64)]
    sampler = EpochSeededSampler(lengths, batch_size=4, seed=5, group_by_length=True)
    sampler.set_epoch(0)
    first = list(sampler)
    assert sorted(first) == list(range(64))
    assert list(sampler) == first  # same epoch, same order
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first
    assert list(EpochSeededSampler(lengths, 4, seed=6, group_by_length=True)) != first
    # grouping: mean in-batch length spread is smaller than for a plain shuffle
    plain = EpochSeededSampler(lengths, 4, seed=5, group_by_length=False)

    def spread(order):
        batches = [order[i:i + 4] for i in range(0, 64, 4)]
        return sum(max(lengths[j] for j in b) - min(lengths[j] for j in b) for b in batches) / len(batches)

    assert spread(first) < spread(list(plain)) / 2


def test_run_config_json_is_valid_json_mid_run(tmp_path, make_cfg):
    """After a kill, run_config.json and metrics.jsonl are readable; final_metrics.json is absent."""
    cfg = make_cfg(tmp_path, "method=fft")
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, callbacks=[StopAfterStepCallback(2)])
    run = run_dir_for(cfg)
    json.loads((run / "run_config.json").read_text())
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]
    assert not (run / "final_metrics.json").exists()


def test_fast_dropout_is_recorded_and_false_draws_plain_hf_masks(tmp_path, make_cfg, lora_run):
    """Default: the base model's dropouts come from peftlab.fast_dropout (recorded in run_config.json);
    fast_dropout=false draws nn.Dropout's masks — same data and init, so only the masks differ."""
    fast = read_json(lora_run / "run_config.json")["fast_dropout"]
    assert fast["dropouts"] > 0 and fast["attention"] == "peftlab_sdpa_fast_dropout"
    plain = train_run(make_cfg(tmp_path, "method=lora", "rank=4", "alpha=8", "targets=q,v", "fast_dropout=false"))
    assert read_json(plain / "run_config.json")["fast_dropout"] is None
    a, b = read_json(lora_run / "final_metrics.json"), read_json(plain / "final_metrics.json")
    assert a["train_loss"] != b["train_loss"]  # other random masks (tiny BERT has hidden/attention dropout 0.1)
