"""Run-directory names keep apart runs that differ only in a method option (issue 10), and a finished run is
never silently reused for other settings."""

from __future__ import annotations

import json

import pytest

from peftlab.config import load_config
from peftlab.errors import PeftlabError
from peftlab.runs import is_finished, run_dir_for
from peftlab.train import train_run

FAST = ["max_train_samples=8", "max_eval_samples=8", "batch_size=8", "eval_batch_size=8", "max_steps=1",
        "max_len=16", "logging_steps=1", "save_steps=100", "eval_each_epoch=false"]


def cfg_for(out, *overrides):
    return load_config(None, ["task=rte", f"out={out}", *overrides])


@pytest.mark.parametrize("method, a, b", [
    ("lora", "targets=q,v", "targets=q,k,v,o"),
    ("peft-lora", "alpha=8", "alpha=16"),
    ("dora", "dropout=0.1", "dropout=0.05"),
    ("vera", "targets=q", "targets=q,k,v,o"),
    ("ia3", "targets=k,v", "targets=q,k,v,o"),
    ("adapter", "adapter_bottleneck=16", "adapter_bottleneck=64"),
    ("adapter", "adapter_ln=true", "adapter_ln=false"),
    ("adapter", "adapter_act=relu", "adapter_act=gelu"),
    ("prompt-tuning", "prompt_tokens=5", "prompt_tokens=20"),
])
def test_method_options_give_different_run_dirs(tmp_path, method, a, b):
    dir_a, dir_b = run_dir_for(cfg_for(tmp_path, f"method={method}", a)), run_dir_for(cfg_for(tmp_path, f"method={method}", b))
    assert dir_a != dir_b and dir_a.parent == dir_b.parent
    key, value = a.split("=")
    assert dir_a.name.endswith(f"__{key}-{value.replace(',', '-')}")
    assert "__" not in dir_b.name  # b is the default value: the plain seed-pipeline name


def test_default_options_keep_the_plain_names_and_ignored_keys_share_a_dir(tmp_path):
    assert run_dir_for(cfg_for(tmp_path, "method=lora", "rank=8")).relative_to(tmp_path).as_posix() == "LoRA/RTE/seed1_r8"
    assert run_dir_for(cfg_for(tmp_path, "method=adapter")).name == "seed1"
    # a set of matrices: typing order does not make another run
    assert run_dir_for(cfg_for(tmp_path, "targets=v,q")) == run_dir_for(cfg_for(tmp_path, "targets=q,v"))
    assert run_dir_for(cfg_for(tmp_path, "alpha=32")).name == "seed1_r8__alpha-32"
    # options a method does not read do not split its runs (FFT has no targets, no rank, no bottleneck)
    fft = {run_dir_for(cfg_for(tmp_path, "method=fft", *o)) for o in
           [(), ("targets=q",), ("rank=2",), ("adapter_bottleneck=3",), ("alpha=1",)]}
    assert fft == {tmp_path / "FFT" / "RTE" / "seed1"}
    # AdaLoRA keeps its ADALORA/<TASK>/<signal>/seed<S> layout (read by `adalora compare`)
    assert run_dir_for(cfg_for(tmp_path, "method=adalora", "targets=q,v")).name == "seed1"


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    from peftlab.testing import save_tiny_model_dir, write_generated_rte

    root = tmp_path_factory.mktemp("rundirs")
    return save_tiny_model_dir(root / "tiny-bert", "bert"), write_generated_rte(root / "data", 8, 8)


def test_two_trainings_differing_only_in_an_option_keep_both_runs(tmp_path, tiny_inputs):
    model, data = tiny_inputs
    base = [f"model={model}", f"data_dir={data}", *FAST]
    for method, options in (("lora", ("targets=q,v", "targets=q,k,v,o")),
                            ("adapter", ("adapter_bottleneck=2", "adapter_bottleneck=4"))):
        dirs = [train_run(cfg_for(tmp_path, f"method={method}", "rank=2", o, *base)) for o in options]
        assert len(set(dirs)) == 2 and all(is_finished(d) for d in dirs)
        saved = [json.loads((d / "run_config.json").read_text())["config"] for d in dirs]
        key = options[0].split("=")[0]
        assert [s[key] for s in saved] != [saved[0][key]] * 2  # each dir holds its own setting
        counts = [json.loads((d / "final_metrics.json").read_text())["trainable_params"] for d in dirs]
        assert counts[0] < counts[1]  # fewer targets / narrower adapter: fewer trainable parameters


def test_finished_run_with_other_settings_is_refused_not_reused(tmp_path, tiny_inputs):
    """A run dir written before option suffixes existed (here: faked by editing run_config.json) holds
    targets q,v under the default name; asking for the default targets must not reuse it silently."""
    model, data = tiny_inputs
    cfg = cfg_for(tmp_path, "method=lora", "rank=2", f"model={model}", f"data_dir={data}", *FAST)
    run = train_run(cfg)
    assert train_run(cfg) == run  # same settings: skipped
    path = run / "run_config.json"
    config = json.loads(path.read_text())
    config["config"]["targets"] = ["q", "v"]
    path.write_text(json.dumps(config))
    with pytest.raises(PeftlabError, match=r"holds a finished run with other settings \(targets: \['q', 'v'\] -> "
                                           r"\['k', 'o', 'q', 'v'\]\).*--force.*another --out") as err:
        train_run(cfg)
    assert "\n" not in str(err.value)
    # settings FFT does not read (rank) still reuse its finished run
    fft = train_run(cfg_for(tmp_path, "method=fft", f"model={model}", f"data_dir={data}", *FAST))
    assert train_run(cfg_for(tmp_path, "method=fft", "rank=16", f"model={model}", f"data_dir={data}", *FAST)) == fft
