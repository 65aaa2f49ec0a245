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

import numpy as np
import pytest

from peftlab.errors import PeftlabError
from peftlab.heads.measure import STEPS, measure_run, parse_steps, probe_files
from peftlab.heads.probe import PROBE_FILES
from peftlab.io import read_json, read_jsonl
from peftlab.testing import write_generated_rte

IMPORTANCE_KEYS = ["layer", "head", "I", "I_se", "I_ci_low", "I_ci_high", "loss_base", "loss_ablate", "metric_name",
                   "metric_base", "metric_ablate", "n_examples", "theta0", "impl", "dL_dgate", "taylor"]
PROBE_KEYS = ["probe_heldout_loss", "probe_heldout_metric", "probe_chance_metric", "probe_better_than_chance"]
GRADFISHER_KEYS = ["layer", "head", "G", "G_se", "F", "F_se", "n_examples", "batch_size", "per", "theta0",
                   "plasticity_classifier"]


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
            keys = IMPORTANCE_KEYS + (PROBE_KEYS if phase == "pre" else [])
            assert all(list(r) == keys for r in rows)
            assert all(r["I"] == pytest.approx(r["loss_ablate"] - r["loss_base"], abs=1e-12) for r in rows)
            assert all(r["taylor"] == abs(r["dL_dgate"]) and r["I_ci_low"] < r["I"] < r["I_ci_high"] for r in rows)
            assert {r["theta0"] for r in rows} == ({"probe"} if phase == "pre" else {None})
            assert not (run_dir / f"importance_{phase}.partial.jsonl").exists()
            d = np.load(run_dir / f"importance_{phase}_per_example.npy")
            assert d.shape == (8, 16) and d.dtype == np.float64  # [n_layers·n_heads, N], row = layer·4 + head
            np.testing.assert_allclose(d.mean(1), [r["I"] for r in rows], rtol=0, atol=1e-15)
            np.testing.assert_allclose(d.std(1, ddof=1) / 4, [r["I_se"] for r in rows], rtol=1e-12)
        ratio = read_json(run_dir / "importance_taylor_vs_exact.json")
        assert set(ratio) == {"pre", "post"}
        for comparison in ("signed", "magnitude"):
            entry = ratio["pre"][comparison]
            assert entry["ci_low"] <= entry["spearman"] <= entry["ci_high"] and 0 <= entry["p"] <= 1
        assert ratio["pre"]["bootstrap"]["seed"] == 0 and ratio["pre"]["n_heads"] == 8

        grad = read_jsonl(run_dir / "gradfisher_pre.jsonl")
        assert len(grad) == 8 and all(list(r) == GRADFISHER_KEYS for r in grad)
        assert all(r["F"] >= 0 and r["G"] >= 0 and r["G"] ** 2 <= r["F"] * (1 + 1e-6) + 1e-30 for r in grad)
        assert all(r["plasticity_classifier"] == "init" and r["G_se"] > 0 for r in grad)
        assert manifest["plasticity_classifier"] == "init" and manifest["theta0_classifier"] == "probe"

        probe = read_json(run_dir / "probe.json")
        pre = read_jsonl(run_dir / "importance_pre.jsonl")
        assert probe["subset_loss"] == pre[0]["loss_base"]  # the probe head is what importance_pre measured
        assert all((run_dir / name).is_file() for name in PROBE_FILES)
        assert all(pre[0][field] == probe.get(key) for field, key in
                   zip(PROBE_KEYS, ("heldout_loss", "heldout_metric", "chance_metric", "better_than_chance")))
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
    assert (fft / "importance_pre_per_example.npy").read_bytes() == (lora / "importance_pre_per_example.npy").read_bytes()
    parts = manifests["fft"]["steps"]
    assert parts["importance_post"]["parts"]["taylor"] > 0 and parts["importance_post"]["parts"]["exact"] > 0
    assert parts["gradfisher_pre"]["parts"]["gradfisher"] > 0
    # the report shows these step times side by side (issue 12)
    from peftlab.analysis.report import measure_times

    times = measure_times(fft)
    assert times["exact I_post s (fast)"] == round(parts["importance_post"]["parts"]["exact"], 1)
    assert times["Taylor post s"] == round(parts["importance_post"]["parts"]["taylor"], 1)
    assert times["G, F s"] == round(parts["gradfisher_pre"]["parts"]["gradfisher"], 1)
    assert measure_times(lora)["exact I_pre s (fast)"] == "reused"
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
    # Taylor never passes as importance: I and its spread are null, the gradient is kept with its sign.
    assert all(r["theta0"] == "init" and r["impl"] is None and r["I"] is None and r["I_se"] is None
               and r["loss_ablate"] is None and r["taylor"] == abs(r["dL_dgate"]) for r in taylor)
    assert not (run_dir / "importance_pre_per_example.npy").exists()
    # the post sweep above was exact-only and this one Taylor-only: no comparison describes the rows any more
    assert not (run_dir / "importance_taylor_vs_exact.json").exists()


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
    for name in ("importance_pre.jsonl", "importance_pre_per_example.npy"):
        assert (interrupted / name).read_bytes() == (reference / name).read_bytes(), name
    rows = read_jsonl(interrupted / "importance_pre.jsonl")
    kept_d = np.array([row.pop("d") for row in kept])  # partial lines carry each head's d_i
    assert rows[: len(kept)] == kept  # the heads finished before the kill were kept, not recomputed
    assert len(rows) == 16
    d = np.load(interrupted / "importance_pre_per_example.npy")
    assert d.shape == (16, 128) and np.array_equal(d[: len(kept)], kept_d)


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
    assert code == 2 and "--theta0-classifier must be one of probe, init" in err
    code, err = _cli([str(runs["fft"]), "--plasticity-classifier", "random"], capsys)
    assert code == 2 and "--plasticity-classifier must be one of probe, init" in err


# ---------------------------------------------------------------------- fingerprint, reuse, classifiers


def _pre(run_dir, **kwargs):
    return _measure(run_dir, steps="subset,importance_pre,gradfisher_pre", importance="exact", theta0="init",
                    **kwargs)


def test_reuse_needs_the_same_fingerprint(runs, tmp_path):
    """A sibling is reused only when every input that changes numbers is equal: max_len, tokenizer files and
    every file of ckpt_init (not only *.safetensors) are part of the fingerprint."""
    out = tmp_path / "out"
    first = _copy_run(runs["fft"], out / "FFT" / "RTE" / "seed1")
    _pre(first)

    same = _copy_run(runs["fft"], out / "SAME" / "RTE" / "seed1")
    steps = _pre(same)["steps"]
    assert steps["importance_pre"]["reused_from"] == str(first)  # control: an identical sibling is reused
    assert steps["gradfisher_pre"]["reused_from"] == str(first)

    longer = _copy_run(runs["fft"], out / "MAXLEN" / "RTE" / "seed1")
    config = read_json(longer / "run_config.json")
    config["config"]["max_len"] = 16
    (longer / "run_config.json").write_text(json.dumps(config))

    tokenizer = _copy_run(runs["fft"], out / "TOKENIZER" / "RTE" / "seed1")
    path = tokenizer / "ckpt_init" / "tokenizer_config.json"
    path.write_text(json.dumps(read_json(path), indent=4))  # same meaning, other bytes: still a change

    weights = _copy_run(runs["fft"], out / "WEIGHTS" / "RTE" / "seed1")
    (weights / "ckpt_init" / "pytorch_model.bin").write_bytes(b"not the same checkpoint")

    for changed, key in ((longer, "max_len"), (tokenizer, "tokenizer_sha256"), (weights, "theta0_files_sha256")):
        steps = _pre(changed)["steps"]
        for step in ("importance_pre", "gradfisher_pre"):
            assert "reused_from" not in steps[step], (changed, step)
            assert steps[step]["settings"][key] != read_json(first / "measure_manifest.json")["steps"][step][
                "settings"][key]
    # max_len really changes the numbers: the reuse would have been wrong
    assert read_jsonl(longer / "importance_pre.jsonl")[0]["loss_base"] != \
        read_jsonl(first / "importance_pre.jsonl")[0]["loss_base"]


def test_plasticity_classifier_init_by_default_and_probe_on_request(runs, tmp_path):
    from peftlab.heads.plasticity import gradfisher
    from peftlab.heads.subset import subset_batches
    from peftlab.runs import load_run_model

    run_dir = _copy_run(runs["lora"], tmp_path / "out" / "LoRA" / "RTE" / "seed1_r2")
    manifest = _measure(run_dir, steps="subset,gradfisher_pre")  # theta0 probe for importance, init for G/F
    rows = read_jsonl(run_dir / "gradfisher_pre.jsonl")
    model, tokenizer, _ = load_run_model(run_dir, "init")  # θ0 with the seeded classifier, no probe
    reference = gradfisher(model, subset_batches(run_dir, tokenizer, 8), progress=False)
    assert [r["G"] for r in rows] == [r["G"] for r in reference] and [r["F"] for r in rows] == [r["F"] for r in reference]
    assert {(r["plasticity_classifier"], r["theta0"]) for r in rows} == {("init", "probe")}
    assert manifest["steps"]["gradfisher_pre"]["settings"]["plasticity_classifier"] == "init"

    manifest = _measure(run_dir, steps="gradfisher_pre", plasticity_classifier="probe")
    probed = read_jsonl(run_dir / "gradfisher_pre.jsonl")
    assert {r["plasticity_classifier"] for r in probed} == {"probe"} and manifest["plasticity_classifier"] == "probe"
    assert manifest["steps"]["gradfisher_pre"]["settings"]["probe"] is not None
    assert [r["G"] for r in probed] != [r["G"] for r in rows]  # the classifier matters


def test_pre_rows_carry_the_probes_held_out_quality(runs, tmp_path, monkeypatch):
    from peftlab.heads import probe

    original = probe.ensure_probe

    def with_held_out(*args, **kwargs):
        return {**original(*args, **kwargs), "heldout_loss": 0.69, "heldout_metric": 0.55, "chance_metric": 0.5,
                "better_than_chance": False}

    monkeypatch.setattr(probe, "ensure_probe", with_held_out)
    run_dir = _copy_run(runs["fft"], tmp_path / "out" / "FFT" / "RTE" / "seed1")
    _measure(run_dir, steps="subset,importance_pre", importance="taylor")
    rows = read_jsonl(run_dir / "importance_pre.jsonl")
    assert all([r[k] for k in PROBE_KEYS] == [0.69, 0.55, 0.5, False] for r in rows)
    assert list(rows[0])[-4:] == PROBE_KEYS


def test_cli_theta0_classifier_and_its_alias(runs, tmp_path, capsys):
    from peftlab.cli import main

    run_dir = _copy_run(runs["fft"], tmp_path / "out" / "FFT" / "RTE" / "seed1")
    for option in ("--theta0-classifier", "--theta0"):
        with pytest.raises(SystemExit) as exit_info:
            main(["measure", str(run_dir), "--steps", "subset,importance_pre", "--importance", "taylor",
                  "--subset-size", "16", "--batch-size", "8", option, "init", "--plasticity-classifier", "probe",
                  "--force"])
        assert exit_info.value.code == 0
        assert {r["theta0"] for r in read_jsonl(run_dir / "importance_pre.jsonl")} == {"init"}
        manifest = read_json(run_dir / "measure_manifest.json")
        assert (manifest["theta0_classifier"], manifest["plasticity_classifier"]) == ("init", "probe")
    assert "importance_pre" in capsys.readouterr().err


def test_measure_refuses_non_finite_weights(runs, tmp_path):
    """A run whose θ1 holds NaN (diverged, or a foreign file) is refused before any head is measured."""
    from safetensors.torch import load_file, save_file

    run_dir = _copy_run(runs["fft"], tmp_path / "FFT" / "RTE" / "seed1")
    weights = run_dir / "ckpt_final" / "model.safetensors"
    tensors = load_file(str(weights))
    name = next(k for k, v in tensors.items() if v.dim() == 2)
    tensors[name][0, 0] = float("nan")
    save_file(tensors, str(weights), metadata={"format": "pt"})
    _measure(run_dir, steps="subset")
    with pytest.raises(PeftlabError, match="non-finite weights"):
        _measure(run_dir, steps="importance_post")
    assert not (run_dir / "importance_post.jsonl").exists()


def test_per_example_columns_follow_subset_indices_although_batches_are_length_sorted(runs, tmp_path):
    """Batches are formed in token-length order (less padding); the per-example matrix must still have
    column j = the subset's j-th index, i.e. equal the d_i of a sweep over batches in index order."""
    from peftlab.heads.importance import exact_importance
    from peftlab.heads.subset import load_subset_rows, read_subset, run_config, subset_batches, tokenize_batches
    from peftlab.runs import load_run_model

    run_dir = _copy_run(runs["fft"], tmp_path / "out" / "FFT" / "RTE" / "seed1")
    # dev rows of different lengths (the generated ones all tokenize to one length): row i keeps 2 + i % 9 words
    data_dir = write_generated_rte(tmp_path / "data", n_train=80, n_dev=40)
    dev = data_dir / "glue" / "RTE" / "dev.tsv"
    header, *lines = dev.read_text(encoding="utf-8").splitlines()
    cut = [line.split("\t") for line in lines]
    dev.write_text("\n".join([header] + ["\t".join([i, " ".join(a.split()[:2 + int(i) % 9]) + ".", b, y])
                                         for i, a, b, y in cut]) + "\n", encoding="utf-8")
    config = read_json(run_dir / "run_config.json")
    config["config"]["data_dir"] = str(data_dir)
    (run_dir / "run_config.json").write_text(json.dumps(config), encoding="utf-8")
    _measure(run_dir, steps="subset,importance_post", importance="exact", impl="naive")
    saved = np.load(run_dir / "importance_post_per_example.npy")
    model, tokenizer, _ = load_run_model(run_dir, "final")
    model.eval()
    batches, order = subset_batches(run_dir, tokenizer, 8, with_order=True)
    assert sorted(order) == list(range(16)) and order != list(range(16))  # really permuted on this data
    lengths = [int(b["attention_mask"][i].sum()) for b in batches for i in range(b["attention_mask"].shape[0])]
    assert lengths == sorted(lengths)
    text_a, text_b, labels = load_subset_rows(read_subset(run_dir), str(data_dir))
    in_index_order = tokenize_batches(tokenizer, text_a, text_b, labels, int(run_config(run_dir)["max_len"]), 8)
    reference = []
    exact_importance(model, in_index_order, "naive", on_head=lambda result: reference.append(result.d), progress=False)
    np.testing.assert_allclose(saved, np.array(reference), rtol=0, atol=1e-5)
