"""TrainConfig: defaults, presets, key=value coercion, validation errors (no training here)."""

from __future__ import annotations

import pytest

from peftlab.config import FFT_LR, FIELD_NAMES, PEFT_LR, TrainConfig, config_from_dict, load_config
from peftlab.errors import PeftlabError


def test_defaults_resolve_lr_by_method():
    assert load_config().lr == PEFT_LR  # default method is lora
    assert load_config(overrides=["method=fft"]).lr == FFT_LR
    assert load_config(overrides=["method=peft-lora"]).lr == PEFT_LR
    assert load_config(overrides=["method=fft", "lr=1e-4"]).lr == 1e-4


def test_overrides_are_coerced_by_field_type():
    cfg = load_config(overrides=[
        "rank=4", "alpha=32", "targets=Q, v", "group_by_length=false", "max_train_samples=none",
        "epochs=2", "seed=1e1", "model=/some/dir", "task=sst2", "method=LoRA",
    ])
    assert cfg.rank == 4 and isinstance(cfg.rank, int)
    assert cfg.alpha == 32.0 and isinstance(cfg.alpha, float)
    assert cfg.targets == ("q", "v")
    assert cfg.group_by_length is False
    assert cfg.max_train_samples is None
    assert cfg.seed == 10 and isinstance(cfg.seed, int)
    assert cfg.model == "/some/dir"
    assert cfg.task == "SST-2"  # canonical task name
    assert cfg.method == "lora"


def test_dict_overrides_and_round_trip():
    cfg = load_config(overrides={"rank": 16, "targets": ["o"], "task": "STS-B"})
    again = config_from_dict(cfg.to_dict())
    assert again == cfg
    assert cfg.to_dict()["targets"] == ["o"]  # JSON-ready


def test_unknown_key_lists_valid_keys():
    with pytest.raises(PeftlabError) as err:
        load_config(overrides=["learning_rate=1e-4"])
    msg = str(err.value)
    assert "learning_rate" in msg and "valid keys" in msg
    assert all(name in msg for name in ("lr", "rank", "targets", "max_len"))
    assert "\n" not in msg


@pytest.mark.parametrize("override, needle", [
    ("rank=abc", "rank"), ("rank=8.5", "rank"), ("epochs=many", "epochs"), ("group_by_length=maybe", "group_by_length"),
])
def test_bad_types_are_one_line_errors(override, needle):
    with pytest.raises(PeftlabError, match=needle) as err:
        load_config(overrides=[override])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("override, needle", [
    ("rank=0", "rank must be a positive integer"),
    ("rank=-2", "rank must be a positive integer"),
    ("alpha=0", "alpha must be > 0"),
    ("alpha=-1", "alpha must be > 0"),
    ("dropout=1.0", "dropout must be in [0, 1)"),
    ("dropout=-0.1", "dropout must be in [0, 1)"),
    ("epochs=0", "epochs must be > 0"),
    ("lr=0", "lr must be > 0"),
    ("lr=-1e-4", "lr must be > 0"),
    ("batch_size=0", "batch_size must be >= 1"),
    ("warmup_ratio=1.5", "warmup_ratio"),
    ("lr_scheduler=exp", "unknown lr_scheduler"),
    ("regression_bias=median", "unknown regression_bias 'median'; choose from mean, zero"),
    ("pooling=max", "unknown pooling 'max'"),
    ("method=qlora", "unknown method"),
    ("task=imagenet", "imagenet"),
    ("targets=q,attn", "unknown target"),
    ("device=tpu", "unknown device"),
])
def test_validation_errors(override, needle):
    with pytest.raises(PeftlabError) as err:
        load_config(overrides=[override])
    msg = str(err.value)
    assert needle in msg
    assert "\n" not in msg


def test_unknown_target_lists_valid_ones():
    with pytest.raises(PeftlabError) as err:
        load_config(overrides=["targets=q,query"])
    assert all(t in str(err.value) for t in ("q", "k", "v", "o", "ffn_in", "ffn_out"))


def test_override_without_equals():
    with pytest.raises(PeftlabError, match="not key=value"):
        load_config(overrides=["lr"])


def test_presets_apply_left_to_right():
    quick = load_config("quick")
    assert quick.epochs == 1 and quick.max_train_samples == 1024
    rte_quick = load_config("rte,quick")
    assert rte_quick.task == "RTE" and rte_quick.epochs == 1  # quick wins over rte's epochs
    quick_rte = load_config(["quick", "rte"])
    assert quick_rte.epochs == 5  # rte wins
    assert load_config("sst2").task == "SST-2"
    # overrides beat presets
    assert load_config("rte", ["epochs=2"]).epochs == 2
    # every shipped preset is valid
    from peftlab.config import available_presets

    for name in available_presets():
        assert isinstance(load_config(name), TrainConfig)


def test_yaml_file_and_its_errors(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("task: mrpc\nrank: 2\ntargets: [q, o]\nlr: 3e-4\n")
    cfg = load_config(str(good))
    assert (cfg.task, cfg.rank, cfg.targets, cfg.lr) == ("MRPC", 2, ("q", "o"), 3e-4)

    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("task: rte\nbatchsize: 8\n")
    with pytest.raises(PeftlabError, match="unknown config key 'batchsize'"):
        load_config(str(unknown))

    broken = tmp_path / "broken.yaml"
    broken.write_text("task: [rte\n")
    with pytest.raises(PeftlabError, match="not valid YAML"):
        load_config(str(broken))

    with pytest.raises(PeftlabError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(PeftlabError, match="unknown config preset 'nosuch'; available presets: .*quick"):
        load_config("nosuch")


def test_field_names_cover_the_issue_list():
    wanted = {"task", "method", "seed", "rank", "alpha", "dropout", "targets", "epochs", "lr", "batch_size",
              "eval_batch_size", "max_len", "weight_decay", "warmup_ratio", "grad_accum", "max_grad_norm",
              "lr_scheduler", "model", "data_dir", "out", "max_train_samples", "max_eval_samples", "logging_steps",
              "save_steps", "eval_each_epoch", "device", "group_by_length"}
    assert wanted <= set(FIELD_NAMES)
