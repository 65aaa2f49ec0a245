"""`peftlab measure` on tiny trained runs: every output for FFT / own LoRA / PEFT LoRA, skipping,
sibling reuse, resume after SIGKILL (byte-identical), and one-line errors for bad input."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peftlab.errors import PeftlabError
from peftlab.heads.measure import STEPS, measure_run, parse_steps
from peftlab.heads.probe import PROBE_FILES
from peftlab.io import read_json, read_jsonl
from peftlab.testing import write_generated_rte

IMPORTANCE_KEYS = ["layer", "head", "I", "loss_base", "loss_ablate", "metric_name", "metric_base", "metric_ablate",
                   "n_examples", "theta0", "impl", "taylor"]
GRADFISHER_KEYS = ["layer", "head", "G", "F", "n_examples", "batch_size", "per", "theta0"]


def train_tiny(model_dir: Path, data_dir: Path, out: Path, method: str, max_len: int = 32) -> Path:
    from peftlab.config import load_config
    from peftlab.train import train_run

    cfg = load_config(None, [f"method={method}", f"model={model_dir}", f"data_dir={data_dir}", f"out={out}",
                             "max_steps=2", "max_train_samples=32", "max_eval_samples=16", "batch_size=8",
                             f"max_len={max_len}", "rank=2", "logging_steps=1"])
    return train_run(cfg)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """FFT, own-LoRA and PEFT-LoRA runs of one tiny BERT on generated RTE data (same seed, same θ0)."""
    from peftlab.testing import save_tiny_model_dir

    root = tmp_path_factory.mktemp("measure")
    data_dir = write_generated_rte(root / "data", n_train=80, n_dev=40)
    model_dir = save_tiny_model_dir(root / "tiny-bert", "bert")
    out = root / "out"
    return {method: train_tiny(model_dir, data_dir, out, method) for method in ("fft", "lora", "peft-lora")}


def _measure(run_dir, **kwargs):
    options = dict(importance="both", subset_size=16, batch_size=8, progress=False)
    return measure_run(run_dir, **{**options, **kwargs})


def test_every_output_for_every_method(runs):
    manifests = {method: _measure(run_dir) for method, run_dir in runs.items()}
    for method, run_dir in runs.items():
        manifest = manifests[method]
        assert list(manifest["steps"]) == list(STEPS)
        assert all(step["finished"] for step in manifest["steps"].values())
        subset = read_json(run_dir / "eval_subset.json")
        assert subset["split"] == "dev" and subset["size"] == 16 and len(subset["indices"]) == 16

        for phase in ("pre", "post"):
            rows = read_jsonl(run_dir / f"importance_{phase}.jsonl")
            assert [(r["layer"], r["head"]) for r in rows] == [(l, h) for l in range(2) for h in range(4)]
            assert all(list(r) == IMPORTANCE_KEYS for r in rows)
            assert all(r["I"] == r["loss_ablate"] - r["loss_base"] and r["taylor"] >= 0 for r in rows)
            assert {r["theta0"] for r in rows} == ({"probe"} if phase == "pre" else {None})
            assert not (run_dir / f"importance_{phase}.partial.jsonl").exists()
        ratio = read_json(run_dir / "importance_taylor_vs_exact.json")
        assert set(ratio) == {"pre", "post"} and -1 <= ratio["pre"]["spearman"] <= 1

        grad = read_jsonl(run_dir / "gradfisher_pre.jsonl")
        assert len(grad) == 8 and all(list(r) == GRADFISHER_KEYS for r in grad)
        assert all(r["F"] >= 0 and r["G"] >= 0 and r["G"] ** 2 <= r["F"] * (1 + 1e-6) + 1e-30 for r in grad)

        probe = read_json(run_dir / "probe.json")
        pre = read_jsonl(run_dir / "importance_pre.jsonl")
        assert probe["subset_loss"] == pre[0]["loss_base"]  # the probe head is what importance_pre measured
        assert all((run_dir / name).is_file() for name in PROBE_FILES)  # the files probe.py says it writes
        assert {"heldout_loss", "heldout_metric", "chance_loss", "chance_metric", "better_than_chance",
                "n_train", "n_heldout", "selection"} <= set(probe)

        update = read_jsonl(run_dir / "update.jsonl")
        heads = [r for r in update if r["kind"] == "head"]
        ffn = [r for r in update if r["kind"] == "ffn"]
        assert len(heads) == 8 and len(ffn) == 2
        assert all(r["U"] > 0 and math.isclose(r["U"], math.hypot(r["U_q"], r["U_k"], r["U_v"], r["U_o"]))
                   for r in heads)
        if method == "fft":
            assert all(r["U_ffn_in"] > 0 for r in ffn)
        else:  # LoRA on q,k,v,o only: the FFN did not move
            assert all(r["U_ffn_in"] == 0.0 and r["U_ffn_out"] == 0.0 for r in ffn)
        assert read_json(run_dir / "update_meta.json")["method"] == method

    # θ0 is the same for the three runs: pre measurements were reused from the first (byte-identical)
    fft, lora = runs["fft"], runs["lora"]
    assert (fft / "importance_pre.jsonl").read_bytes() == (lora / "importance_pre.jsonl").read_bytes()
    assert manifests["lora"]["steps"]["importance_pre"]["reused_from"] == str(fft)
    # θ1 differs
    assert (fft / "importance_post.jsonl").read_bytes() != (lora / "importance_post.jsonl").read_bytes()


def test_finished_steps_are_skipped_and_changed_settings_rerun(runs):
    run_dir = runs["fft"]
    first = _measure(run_dir)
    before = (run_dir / "importance_post.jsonl").stat().st_mtime_ns
    fast = read_jsonl(run_dir / "importance_post.jsonl")
    again = _measure(run_dir)
    assert again["steps"] == first["steps"]  # nothing re-ran: same seconds recorded
    assert (run_dir / "importance_post.jsonl").stat().st_mtime_ns == before
    changed = _measure(run_dir, steps="importance_post", importance="exact", impl="naive")
    assert changed["steps"]["importance_post"]["settings"]["impl"] == "naive"
    naive = read_jsonl(run_dir / "importance_post.jsonl")
    assert {r["impl"] for r in naive} == {"naive"} and all(r["taylor"] is None for r in naive)
    for fast_row, naive_row in zip(fast, naive):  # the two sweeps agree (up to float summation order)
        assert naive_row["I"] == pytest.approx(fast_row["I"], abs=1e-5)

    _measure(run_dir, steps="importance_pre", importance="taylor", theta0="init")
    taylor = read_jsonl(run_dir / "importance_pre.jsonl")
    assert all(r["theta0"] == "init" and r["impl"] is None and r["I"] == r["taylor"] and r["loss_ablate"] is None
               for r in taylor)


def test_parse_steps():
    assert parse_steps(None) == list(STEPS)
    assert parse_steps("update,subset") == ["subset", "update"]
    with pytest.raises(PeftlabError, match="unknown step 'bogus'; valid steps: subset, importance_pre"):
        parse_steps("subset,bogus")


def _copy_run(src: Path, dst: Path) -> Path:
    """A copy of a run dir with only the training outputs (no measurements)."""
    keep = {"run_config.json", "final_metrics.json", "metrics.jsonl", "ckpt_init", "ckpt_final"}
    dst.mkdir(parents=True)
    for entry in src.iterdir():
        if entry.name in keep:
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, dst / entry.name)
    return dst


def test_resume_after_sigkill_is_byte_identical(tmp_path, capsys):
    """Kill `peftlab measure` mid-sweep (SIGKILL), re-run it: the result equals an uninterrupted run."""
    from transformers import AutoModelForSequenceClassification, BertConfig

    from peftlab.models import load_tokenizer

    # A deeper tiny BERT (4 layers × 4 heads) and longer rows, so that the sweep lasts long enough to be killed.
    model_dir = tmp_path / "tiny-bert-6"
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, num_labels=2, pad_token_id=0)
    import torch

    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(model_dir)
    load_tokenizer(None).save_pretrained(model_dir)
    data_dir = write_generated_rte(tmp_path / "data", n_train=200, n_dev=20, words_per_row=40)
    trained = train_tiny(model_dir, data_dir, tmp_path / "out", "fft", max_len=64)
    interrupted = _copy_run(trained, tmp_path / "interrupted" / "FFT" / "RTE" / "seed1")
    reference = _copy_run(trained, tmp_path / "reference" / "FFT" / "RTE" / "seed1")
    args = ["--steps", "subset,importance_pre", "--subset-size", "128", "--batch-size", "64"]

    partial = interrupted / "importance_pre.partial.jsonl"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}  # same threads as this process
    proc = subprocess.Popen([sys.executable, "-m", "peftlab", "measure", str(interrupted), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    started = time.monotonic()
    deadline = started + 600  # the θ0 probe (grid search) runs first; slow on a loaded machine
    while time.monotonic() < deadline and proc.poll() is None:
        if partial.is_file() and len(partial.read_text().splitlines()) >= 2:  # header + ≥ 1 head
            proc.send_signal(signal.SIGKILL)
            print(f"killed after {time.monotonic() - started:.1f} s with {len(partial.read_text().splitlines())} lines")
            break
        time.sleep(0.002)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"
    assert not (interrupted / "importance_pre.jsonl").exists()  # never looks complete early
    kept = read_jsonl(partial)[1:]
    assert 1 <= len(kept) < 16
    assert read_json(interrupted / "measure_manifest.json")["steps"]["importance_pre"]["finished"] is False

    # The same command again (in this process, to spare a second interpreter start-up).
    from peftlab.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["measure", str(interrupted), *args])
    assert exit_info.value.code == 0
    assert "resuming importance_pre" in capsys.readouterr().err
    assert not partial.exists()

    measure_run(reference, steps="subset,importance_pre", subset_size=128, batch_size=64, progress=False)
    resumed_bytes = (interrupted / "importance_pre.jsonl").read_bytes()
    assert resumed_bytes == (reference / "importance_pre.jsonl").read_bytes()
    rows = read_jsonl(interrupted / "importance_pre.jsonl")
    assert rows[: len(kept)] == kept  # the heads finished before the kill were kept, not recomputed
    assert len(rows) == 16


# ---------------------------------------------------------------------- CLI errors


def _cli(args, capsys):
    from peftlab.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["measure", *args])
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines  # one error line, printed last
    return exit_info.value.code, errors[0]


def test_cli_errors_are_one_line(runs, tmp_path, capsys):
    code, err = _cli([str(tmp_path)], capsys)
    assert code == 2 and err.startswith("error:") and "not a peftlab run directory" in err

    unfinished = _copy_run(runs["fft"], tmp_path / "unfinished")
    (unfinished / "final_metrics.json").unlink()
    code, err = _cli([str(unfinished)], capsys)
    assert code == 2 and "has not finished training" in err and "peftlab train" in err

    code, err = _cli([str(runs["fft"]), "--subset-size", "100000"], capsys)
    assert code == 2 and "larger than the RTE train split (80 rows)" in err

    code, err = _cli([str(runs["fft"]), "--steps", "subset,importance"], capsys)
    assert code == 2 and "unknown step 'importance'" in err

    alien = _copy_run(runs["fft"], tmp_path / "alien")
    config_path = alien / "ckpt_init" / "config.json"
    config_path.write_text(json.dumps({**read_json(config_path), "model_type": "t5"}))
    code, err = _cli([str(alien)], capsys)
    assert code == 2 and "architecture 't5' has no ArchSpec" in err

    code, err = _cli([str(runs["fft"]), "--theta0", "random"], capsys)
    assert code == 2 and "--theta0 must be one of probe, init" in err
