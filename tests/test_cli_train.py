"""`peftlab train` / `peftlab info` and the seed-compatible scripts: results, and one clear line per bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from peftlab.cli import main
from peftlab.errors import PeftlabError

REPO = Path(__file__).resolve().parents[1]
FAST = ["--max-train-samples", "16", "--max-eval-samples", "8", "--epochs", "1", "--max-len", "32",
        "batch_size=8", "eval_batch_size=8"]


def run_cli(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def base_args(tiny_dir, data_dir, out) -> list:
    return ["train", "--task", "rte", "--model", tiny_dir, "--data-dir", data_dir, "--out", out, *FAST]


def no_complete_run(out: Path) -> bool:
    return not list(Path(out).rglob("final_metrics.json")) and not list(Path(out).rglob("ckpt_final"))


@pytest.fixture(scope="module")
def cli_lora_run(tmp_path_factory, tiny_dir, data_dir):
    out = tmp_path_factory.mktemp("cli")
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in base_args(tiny_dir, data_dir, out)
              + ["--method", "lora", "--seed", "2", "--rank", "4", "--alpha", "8", "--targets", "q,k,v,o", "lr=1e-3"]])
    assert exc.value.code == 0
    return out / "LoRA" / "RTE" / "seed2_r4__alpha-8"  # a non-default alpha is part of the run-dir name


def test_train_prints_run_dir_and_result(cli_lora_run, tiny_dir, data_dir, capsys):
    from peftlab.io import read_json

    run = cli_lora_run
    fm = read_json(run / "final_metrics.json")
    assert fm["finished"] and fm["rank"] == 4
    cfg = read_json(run / "run_config.json")["config"]
    assert cfg["lr"] == 1e-3 and cfg["targets"] == ["q", "k", "v", "o"] and cfg["alpha"] == 8.0  # trailing override
    # the same command again: skipped, same output format
    out = run.parents[2]
    code, stdout, err = run_cli(base_args(tiny_dir, data_dir, out)
                                + ["--method", "lora", "--seed", "2", "--rank", "4", "--alpha", "8", "lr=1e-3"], capsys)
    assert code == 0, err
    lines = stdout.strip().splitlines()
    assert lines[0] == str(run)
    assert lines[1].startswith(f"RTE lora accuracy={fm['score']:.4f} (train ") and "skipped" in lines[1]


def test_info_summarises_a_run(cli_lora_run, capsys):
    code, stdout, err = run_cli(["info", cli_lora_run], capsys)
    assert code == 0, err
    assert "finished" in stdout and "accuracy (main)" in stdout and "ckpt_final" in stdout
    assert "trainable" in stdout and "cpu_peak_rss_process" in stdout


def test_info_on_a_directory_that_is_not_a_run(tmp_path, capsys):
    code, stdout, err = run_cli(["info", tmp_path], capsys)
    assert code == 2
    assert err.startswith("error: ") and "is not a peftlab run directory" in err and err.count("\n") == 1


@pytest.mark.parametrize("extra, needle", [
    (["--method", "lora", "--task", "imagenet"], "imagenet"),
    (["--method", "lora", "--rank", "0"], "rank must be a positive integer"),
    (["--method", "lora", "--alpha", "0"], "alpha must be > 0"),
    (["--method", "lora", "--dropout", "1.5"], "dropout must be in [0, 1)"),
    (["--method", "lora", "--targets", "q,attn"], "unknown target 'attn'; valid targets: q, k, v, o, ffn_in, ffn_out"),
    (["--method", "qlora"], "unknown method"),
    (["--method", "lora", "learning_rate=1"], "unknown config key 'learning_rate'; valid keys:"),
    (["--method", "lora", "--config", "nosuch"], "unknown config preset 'nosuch'"),
])
def test_bad_config_input(tmp_path, tiny_dir, data_dir, capsys, extra, needle):
    out = tmp_path / "out"
    code, stdout, err = run_cli(base_args(tiny_dir, data_dir, out) + extra, capsys)
    assert code == 2
    assert err.startswith("error: ") and needle in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()  # config errors stop before any file is written


def test_missing_data_dir(tmp_path, tiny_dir, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(base_args(tiny_dir, tmp_path / "no_data", out) + ["--method", "fft"], capsys)
    assert code == 2 and err.startswith("error: ") and "RTE" in err and err.count("\n") == 1
    assert not out.exists()  # no empty run directories are left behind


def test_missing_task_file(tmp_path, tiny_dir, tiny_glue, capsys):
    (tiny_glue / "glue" / "RTE" / "dev.tsv").unlink()
    out = tmp_path / "out"
    code, _, err = run_cli(base_args(tiny_dir, tiny_glue, out) + ["--method", "fft"], capsys)
    assert code == 2 and "dev" in err and err.count("\n") == 1 and "Traceback" not in err
    assert no_complete_run(out)


def test_model_that_is_not_a_model(tmp_path, data_dir, capsys):
    junk = tmp_path / "junk_model"
    junk.mkdir()
    (junk / "notes.txt").write_text("no weights here")
    out = tmp_path / "out"
    code, _, err = run_cli(["train", "--task", "rte", "--method", "fft", "--model", junk, "--data-dir", data_dir,
                            "--out", out], capsys)
    assert code == 2 and str(junk) in err and "--model" in err and err.count("\n") == 1
    assert not out.exists()


def test_output_directory_not_writable(tmp_path, tiny_dir, data_dir, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where a directory is needed: fails even for root
    code, _, err = run_cli(base_args(tiny_dir, data_dir, blocker / "out") + ["--method", "fft"], capsys)
    assert code == 2
    assert err == f"error: output directory {blocker / 'out'} is not writable (Not a directory); choose a writable --out\n"


def test_debug_shows_the_traceback(tmp_path, tiny_dir, data_dir):
    with pytest.raises(PeftlabError, match="rank must be"):
        main(["--debug", *map(str, base_args(tiny_dir, data_dir, tmp_path)), "--method", "lora", "--rank", "-1"])


def test_adapter_on_a_different_base_model_names_both(cli_lora_run, tiny_dir, tmp_path):
    """θ1 = θ0 + saved LoRA; a ckpt_init that is not the trained-on base is refused, naming both models."""
    from peftlab.methods import get_method
    from peftlab.models import load_model
    from peftlab.runs import load_run_model
    from peftlab.testing import tiny_model

    other = tmp_path / "other"
    tiny_model("bert", seed=7).save_pretrained(other)  # same architecture, different weights
    with pytest.raises(PeftlabError) as err:
        get_method("lora").load_final(load_model(str(other), 2), cli_lora_run / "ckpt_final")
    assert str(tiny_dir) in str(err.value) and str(other) in str(err.value)

    run = tmp_path / "copied_run"
    shutil.copytree(cli_lora_run, run)
    shutil.rmtree(run / "ckpt_init")
    shutil.copytree(other, run / "ckpt_init")
    shutil.copy(Path(tiny_dir) / "tokenizer.json", run / "ckpt_init")
    shutil.copy(Path(tiny_dir) / "tokenizer_config.json", run / "ckpt_init")
    with pytest.raises(PeftlabError) as err:
        load_run_model(run, "final")
    assert str(tiny_dir) in str(err.value) and "ckpt_init" in str(err.value)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- scripts


@pytest.fixture
def fake_peftlab(tmp_path) -> dict:
    """PATH with a `peftlab` that prints its arguments, to check what the scripts run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "peftlab"
    fake.write_text('#!/usr/bin/env bash\necho "$@"\n')
    fake.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


@pytest.mark.parametrize("script, args, expected", [
    ("run_lora.sh", ["1", "RTE", "8", "16"], "train --method lora --seed 1 --task RTE --rank 8 --alpha 16"),
    ("run_lora.sh", ["3", "SST-2", "4", "8", "--epochs", "1"],
     "train --method lora --seed 3 --task SST-2 --rank 4 --alpha 8 --epochs 1"),
    ("run_mnli.sh", ["2", "MRPC", "FFT"], "train --method fft --seed 2 --task MRPC"),
    ("run_mnli.sh", ["2", "RTE", "LoRA", "--rank", "8"], "train --method lora --seed 2 --task RTE --rank 8"),
    ("run_mnli.sh", ["5", "RTE", "PEFT-LoRA"], "train --method peft-lora --seed 5 --task RTE"),
])
def test_scripts_map_seed_arguments(fake_peftlab, script, args, expected):
    result = subprocess.run([str(REPO / "scripts" / script), *args], env=fake_peftlab, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


@pytest.mark.parametrize("script, args", [("run_lora.sh", ["1", "RTE", "8"]), ("run_mnli.sh", ["1"])])
def test_scripts_print_usage_when_arguments_are_missing(fake_peftlab, script, args):
    result = subprocess.run([str(REPO / "scripts" / script), *args], env=fake_peftlab, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith(f"usage: {script} SEED TASK")
    assert result.stdout == ""
