"""scripts/comp7404_train.py: the original study's flags → peftlab calls, exactly; bad input → one line, exit 2."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from peftlab.errors import PeftlabError

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "comp7404_train.py"
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def comp():
    spec = importlib.util.spec_from_file_location("comp7404_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["comp7404_train"] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


def test_every_original_flag_of_a_single_run_maps_to_one_config_key(comp):
    from peftlab.config import load_config

    argv = ("--dataset stsb --max_seq_length 96 --batch_size 16 --eval_batch_size 32 --model_name some/dir "
            "--method lora --learning_rate 3e-4 --weight_decay 0.1 --num_epochs 2 --warmup_ratio 0.1 "
            "--gradient_accumulation_steps 2 --seed 7 --time_count --mode train --lora_rank 4 --lora_alpha 8 "
            "--lora_dropout 0.1 --test_iters 5 --lora_target q k v o --adapter_LN --adapter_bottleneck 32 "
            "--output_dir out7404 --save_model").split()
    plan = comp.plan(argv)
    assert plan.overrides == ["task=stsb", "method=lora", "max_len=96", "batch_size=16", "eval_batch_size=32",
                              "model=some/dir", "lr=0.0003", "weight_decay=0.1", "epochs=2.0", "warmup_ratio=0.1",
                              "grad_accum=2", "seed=7", "rank=4", "alpha=8.0", "dropout=0.1",
                              "adapter_bottleneck=32", "out=out7404", "targets=q,k,v,o", "adapter_ln=true"]
    assert plan.commands == [["train", *plan.overrides]] and plan.time_count and plan.latency is None
    assert any("always saves" in note for note in plan.notes)
    cfg = load_config(None, plan.overrides)
    assert (cfg.task, cfg.method, cfg.max_len, cfg.rank, cfg.alpha, cfg.targets, cfg.grad_accum, cfg.adapter_ln) == (
        "STS-B", "lora", 96, 4, 8.0, ("q", "k", "v", "o"), 2, True)


@pytest.mark.parametrize("method, expected", [("full", "fft"), ("FFT", "fft"), ("adapter", "adapter"),
                                              ("houlsby", "adapter"), ("dora", "dora")])
def test_method_names_of_the_original_and_peftlabs_own(comp, method, expected):
    assert comp.plan(["--method", method]).overrides == [f"method={expected}"]


def test_grid_flags_become_bench_calls(comp):
    plan = comp.plan("--dataset ag_news --method lora --compare_ranks --lora_target q v --seed 2 "
                     "--output_dir o --test_iters 50 --learning_rate 1e-3 --output_matrices".split())
    assert plan.commands == [["bench", "--task", "ag_news", "--methods", "lora", "--ranks", "1,2,4,8,16",
                              "--targets", "q,v", "--seeds", "2", "--profile", "full", "--out", "o",
                              "--name", "comp7404_compare_ranks", "--latency-iters", "50", "--save-matrices",
                              "lr=0.001"]]
    plan = comp.plan("--dataset stsb --method lora --lora_rank 4 --compare_ranks 2 8 "
                     "--test_weight_matrix_comb_with_rank".split())
    assert [c[c.index("--ranks") + 1] for c in plan.commands] == ["2,8", "4"]  # comb default: --lora_rank
    comb = plan.commands[1]
    assert comb[comb.index("--targets") + 1:comb.index("--seeds")] == ["q", "k", "v", "o", "q,v", "q,k,v,o"]
    # a single run with --output_matrices: one bench cell (the adapter's size axis is its bottleneck)
    (single,) = comp.plan("--method adapter --adapter_bottleneck 16 --adapter_LN --output_matrices".split()).commands
    assert single[:6] == ["bench", "--task", "rte", "--methods", "adapter", "--ranks"] and single[6] == "16"
    assert single[-3:] == ["--save-matrices", "adapter_bottleneck=16", "adapter_ln=true"]
    (fft,) = comp.plan("--method full --output_matrices".split()).commands
    assert "--ranks" not in fft


def test_mode_test_is_the_latency_test_of_the_trained_run(comp):
    plan = comp.plan("--dataset stsb --method lora --lora_rank 4 --mode test --test_iters 5".split())
    assert plan.commands == [] and plan.latency == {"overrides": ["task=stsb", "method=lora", "rank=4"],
                                                    "iters": 5, "batches": [1, 8], "warmup": 10}
    assert comp.plan(["--mode", "test"]).latency["iters"] == 100


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "stsb", "--fp16"], "unsupported flag(s) --fp16"),
    (["--lora_targets", "q"], "unsupported flag(s) --lora_targets"),  # no prefix matching of flags
    (["--mode", "eval"], "unsupported --mode 'eval'"),
    (["--method", "nope"], "unknown method 'nope'"),
    (["--method", "prefix-tuning"], "prefix-tuning' is not available"),
    (["--dataset", "imdb"], "unknown task 'imdb'"),
    (["--lora_rank", "x"], "argument --lora_rank: invalid int value: 'x'"),
    (["--lora_rank", "0"], "rank must be a positive integer"),
    (["--adapter_bottleneck", "0"], "adapter_bottleneck must be a positive integer"),
    (["--lora_target", "q", "x"], "unknown target 'x'"),
    (["--compare_ranks", "0", "4"], "--compare_ranks ranks must be positive integers, got 0"),
    (["--method", "adapter", "--test_weight_matrix_comb_with_rank", "4"], "needs a low-rank method"),
    (["--method", "bitfit", "--compare_ranks"], "--compare_ranks needs a method with a rank"),
    (["--mode", "test", "--compare_ranks"], "--mode test times one trained run"),
    (["--test_iters", "0"], "--test_iters must be > 0"),
])
def test_bad_input_is_one_line_and_exit_2(comp, argv, message, capsys):
    with pytest.raises(PeftlabError, match=None):
        comp.plan(argv)
    assert comp.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_unknown_flag_from_the_shell(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dataset", "stsb", "--do_predict"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: unsupported flag(s) --do_predict") and proc.stderr.count("\n") == 1


def test_train_with_time_count_then_mode_test_on_a_tiny_model(comp, tmp_path, monkeypatch, capsys):
    from peftlab.testing import save_tiny_model_dir, write_generated_rte

    model = save_tiny_model_dir(tmp_path / "tiny", "bert")
    monkeypatch.setenv("PEFTLAB_DATA", str(write_generated_rte(tmp_path / "data", 8, 8)))
    flags = ["--dataset", "rte", "--method", "lora", "--lora_rank", "2", "--lora_target", "q", "v",
             "--model_name", str(model), "--max_seq_length", "16", "--batch_size", "8", "--num_epochs", "1",
             "--output_dir", str(tmp_path / "out")]
    assert comp.main([*flags, "--time_count"]) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "out" / "LoRA" / "RTE" / "seed1_r2__targets-q-v"
    final = json.loads((run_dir / "final_metrics.json").read_text())
    assert final["finished"] is True and json.loads((run_dir / "run_config.json").read_text())["config"]["targets"] == ["q", "v"]
    assert f"forward_s {final['timing_breakdown']['forward_s']:.2f}" in out and "optimizer steps" in out
    assert comp.main([*flags, "--mode", "test", "--test_iters", "2"]) == 0
    out = capsys.readouterr().out
    assert str(run_dir) in out and "batch 1:" in out and "batch 8:" in out and "merged" in out
    # mode test before training: one line saying what to run
    assert comp.main([*flags, "--seed", "9", "--mode", "test"]) == 2
    assert "needs a finished run" in capsys.readouterr().err
