"""Issue 8 hardening: non-finite values, divergence, corrupt/foreign files, nothing lost, devices.

Training cases use a tiny random BERT body and a few dozen real RTE rows (about a second per run).
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from peftlab.config import TrainConfig, load_config
from peftlab.errors import DivergedError, PeftlabError
from peftlab.io import atomic_write_json, atomic_write_text, nonfinite_keys, read_json, write_jsonl_atomic
from peftlab.runs import (
    check_checkpoint_dir,
    check_finite_weights,
    clear_run_dir,
    is_finished,
    load_run_model,
    read_run_info,
    safe_name,
    safe_output_path,
    safetensors_problem,
)
from peftlab.train import train_run
from peftlab.training.callbacks import StopAfterStepCallback

REPO = Path(__file__).resolve().parents[1]
# 24 rows / batch 8 = 3 steps per epoch, 2 epochs = 6 optimizer steps; checkpoints at 2, 3 (epoch end), 4, 6.
SMALL = ["max_train_samples=24", "max_eval_samples=16", "batch_size=8", "eval_batch_size=16", "epochs=2",
         "max_len=48", "logging_steps=1", "save_steps=2", "seed=3", "task=rte", "method=fft"]


@pytest.fixture(scope="module")
def make_cfg(tiny_dir, data_dir):
    def make(out, *overrides, data=None):
        return load_config(None, [f"model={tiny_dir}", f"data_dir={data or data_dir}", f"out={out}", *SMALL,
                                  *overrides])
    return make


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, make_cfg) -> Path:
    """One uninterrupted FFT run (read-only for the tests; copy it before changing anything)."""
    return train_run(make_cfg(tmp_path_factory.mktemp("ref")))


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- JSON never holds NaN / Infinity


def test_json_writers_write_null_for_non_finite_values(tmp_path):
    import numpy as np

    row = {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -math.inf}, "e": np.float32("nan"),
           "f": np.float64(2.5), "g": 3}
    assert nonfinite_keys(row) == ["a", "b[1]", "c.d"]  # np.float32 is not a Python float: found on writing
    atomic_write_json(tmp_path / "x.json", row)
    write_jsonl_atomic(tmp_path / "x.jsonl", [row, row])
    text = (tmp_path / "x.json").read_text() + (tmp_path / "x.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    for parsed in [json.loads((tmp_path / "x.json").read_text())] + [
            json.loads(line) for line in (tmp_path / "x.jsonl").read_text().splitlines()]:
        assert parsed == {"a": None, "b": [1.0, None], "c": {"d": None}, "e": None, "f": 2.5, "g": 3}


def test_a_failed_write_leaves_no_temp_file_and_says_why(tmp_path, monkeypatch):
    target = tmp_path / "out" / "final_metrics.json"

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(PeftlabError, match=r"cannot write '.*final_metrics.json': the disk is full; free some space"):
        atomic_write_json(target, {"finished": True})
    assert list((tmp_path / "out").iterdir()) == []  # neither the file nor a .tmp-* sibling
    monkeypatch.undo()

    class Boom(Exception):
        pass

    def explode(fd):
        raise Boom()

    monkeypatch.setattr(os, "fsync", explode)
    with pytest.raises(Boom):
        atomic_write_text(target, "x")
    assert list((tmp_path / "out").iterdir()) == []


# ---------------------------------------------------------------- config values


@pytest.mark.parametrize("field, value", [("lr", float("nan")), ("epochs", float("inf")), ("alpha", -math.inf),
                                          ("dropout", float("nan")), ("max_grad_norm", float("nan"))])
def test_non_finite_config_values_stop_before_any_file(tmp_path, tiny_dir, data_dir, field, value):
    cfg = TrainConfig(model=str(tiny_dir), data_dir=str(data_dir), out=str(tmp_path / "out"), **{field: value})
    with pytest.raises(PeftlabError, match=f"^{field} must be a finite number, got {value}; pass a real value"):
        train_run(cfg)
    assert not (tmp_path / "out").exists()  # no ckpt_init/, no run_config.json with "lr": NaN


def test_seed_range(tmp_path):
    with pytest.raises(PeftlabError, match=r"seed must be an integer in \[0, 4294967295\], got -1"):
        load_config(None, ["seed=-1"])
    assert load_config(None, ["seed=4294967295"]).seed == 2**32 - 1


# ---------------------------------------------------------------- divergence


def test_divergence_stops_training_with_one_line(tmp_path, make_cfg):
    cfg = make_cfg(tmp_path, "lr=1e30", "max_grad_norm=0", "warmup_ratio=0")
    with pytest.raises(DivergedError) as err:
        train_run(cfg)
    message = str(err.value)
    assert "\n" not in message and err.value.exit_code == 3
    assert message.startswith("training diverged at step ")
    assert "lr=1e+30" in message and "max_grad_norm=0 (no clipping)" in message and "--force" in message
    assert "last finite loss" in message
    run = tmp_path / "FFT" / "RTE" / "seed3"
    assert not (run / "final_metrics.json").exists() and not (run / "ckpt_final").exists()
    assert not is_finished(run)
    # nothing non-finite reached a checkpoint (the optimizer step that would apply it never ran)
    from safetensors.torch import load_file

    for state in (run / "checkpoints").glob("checkpoint-*/peftlab_model_state.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(state).values() if t.is_floating_point())
    for line in (run / "metrics.jsonl").read_text().splitlines():
        assert "NaN" not in line and "Infinity" not in line


def test_divergence_through_the_cli_exits_3(tmp_path, tiny_dir, data_dir, capsys):
    from peftlab.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--model", str(tiny_dir), "--data-dir", str(data_dir), "--out", str(tmp_path),
              *SMALL, "lr=1e30", "max_grad_norm=0"])
    err = capsys.readouterr().err
    assert exc.value.code == 3
    assert err.startswith("error: training diverged at step ") and err.count("\n") == 1


def test_check_finite_weights():
    from peftlab.testing import tiny_model

    model = tiny_model("bert")
    check_finite_weights(model)  # finite: no error
    with torch.no_grad():
        model.bert.encoder.layer[1].attention.self.query.weight[0, 0] = float("nan")
    with pytest.raises(PeftlabError, match=r"ckpt_final holds non-finite weights \(1 tensors, e\.g\. "
                                           r"bert\.encoder\.layer\.1\.attention\.self\.query\.weight\)"):
        check_finite_weights(model, "ckpt_final")


# ---------------------------------------------------------------- corrupt and foreign files


def test_safetensors_header_check(tmp_path):
    from safetensors.torch import save_file

    good = tmp_path / "good.safetensors"
    save_file({"w": torch.ones(4, 4), "b": torch.zeros(4)}, good)
    assert safetensors_problem(good) is None
    data = good.read_bytes()
    cases = {"empty": b"", "short": data[:5], "truncated": data[:-3], "garbled": data[:8] + b"x" * (len(data) - 8),
             "huge_header": (10**12).to_bytes(8, "little") + data[8:]}
    problems = {}
    for name, content in cases.items():
        (tmp_path / f"{name}.safetensors").write_bytes(content)
        problems[name] = safetensors_problem(tmp_path / f"{name}.safetensors")
    assert "truncated or empty" in problems["empty"] and "truncated or empty" in problems["short"]
    assert "(truncated)" in problems["truncated"]
    assert "garbled header" in problems["garbled"]
    assert "past the end" in problems["huge_header"]


def test_truncated_weights_are_not_finished_and_load_names_the_file(finished_run, tmp_path, capsys):
    from peftlab.cli import main

    run = tmp_path / "copy"
    shutil.copytree(finished_run, run)
    weights = run / "ckpt_final" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(SystemExit) as exc:
        main(["info", str(run)])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert "[finished]" not in out and "finished, but its weights are unreadable" in out
    assert "model.safetensors" in out and "--force" in out
    with pytest.raises(PeftlabError) as err:
        load_run_model(run, "final")
    assert str(weights) in str(err.value) and "(truncated)" in str(err.value) and "\n" not in str(err.value)
    assert "peftlab train --task RTE --method fft --seed 3" in str(err.value)


def test_garbled_config_in_a_checkpoint_dir_is_named(finished_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(finished_run, run)
    (run / "ckpt_init" / "config.json").write_text('{"model_type": "bert", ')
    with pytest.raises(PeftlabError, match=r"ckpt_init/config\.json: not valid JSON \(truncated or garbled\); re-run"):
        load_run_model(run, "init")
    check_checkpoint_dir(finished_run / "ckpt_init", "unused")  # the original is fine


def test_foreign_run_config_is_one_line(tmp_path):
    (tmp_path / "run_config.json").write_text('["not", "a", "run"]')
    with pytest.raises(PeftlabError, match="is not a peftlab run config"):
        read_run_info(tmp_path)
    (tmp_path / "run_config.json").write_bytes(b"\xff\xfe garbage")
    with pytest.raises(PeftlabError, match="is not valid JSON"):
        read_run_info(tmp_path)


def test_corrupt_last_checkpoint_falls_back_to_the_previous_one(tmp_path, make_cfg, finished_run, capfd):
    cfg = make_cfg(tmp_path)
    run = tmp_path / "FFT" / "RTE" / "seed3"
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, callbacks=[StopAfterStepCallback(4)])
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-4"]
    state = run / "checkpoints" / "checkpoint-4" / "peftlab_model_state.safetensors"
    state.write_bytes(state.read_bytes()[:100])  # torn by a crash
    capfd.readouterr()
    resumed = train_run(cfg)
    err = capfd.readouterr().err
    assert "note: checkpoint-4 was incomplete or corrupt; resumed from checkpoint-3 instead" in err
    fm = read_json(resumed / "final_metrics.json")
    assert fm["resumed_from_step"] == 3
    assert read_json(resumed / "run_config.json")["resume_note"].startswith("checkpoint-4 was incomplete")
    assert _files(resumed / "ckpt_final") == _files(finished_run / "ckpt_final")  # byte for byte
    assert fm["dev"] == read_json(finished_run / "final_metrics.json")["dev"]


def test_header_only_split_is_one_clear_line(tmp_path, make_cfg, tiny_glue):
    (tiny_glue / "glue" / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n")
    # the loader names the file (tasks/local.py); training checks again for sources that return 0 rows
    with pytest.raises(PeftlabError, match=r"RTE/train.tsv: holds only a header and no data rows"):
        train_run(make_cfg(tmp_path / "out", data=tiny_glue))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- values from run files are data, not paths


@pytest.mark.parametrize("bad", ["../x", "/etc", "a/b", "..", ".hidden", "-rf", "", "x" * 200, "a\nb"])
def test_safe_name_rejects_path_like_values(bad):
    with pytest.raises(PeftlabError, match="is not a plain name"):
        safe_name(bad, "task")


def test_safe_output_path_stays_under_the_root(tmp_path):
    root = tmp_path / "outputs"
    root.mkdir()
    assert safe_output_path(root, "COMPARE", "RTE", "seed1", "FFT_vs_LoRA_r8") == \
        root / "COMPARE" / "RTE" / "seed1" / "FFT_vs_LoRA_r8"
    with pytest.raises(PeftlabError):
        safe_output_path(root, "COMPARE", "../../etc")
    (root / "escape").symlink_to(tmp_path)  # a symlink pointing out of the root
    with pytest.raises(PeftlabError, match="outside the output root"):
        safe_output_path(root, "escape", "x")


def test_info_and_scores_read_method_rank_task_from_files(finished_run, tmp_path, capsys):
    """A run directory renamed to mislead (LoRA/SST-2/seed9_r64) is still an RTE FFT seed-3 run."""
    from peftlab.analysis.scores import collect_runs
    from peftlab.cli import main

    out = tmp_path / "outputs"
    fake = out / "LoRA" / "SST-2" / "seed9_r64"
    shutil.copytree(finished_run, fake)
    with pytest.raises(SystemExit):
        main(["info", str(fake)])
    header = capsys.readouterr().out.splitlines()[0]
    assert "RTE / fft / seed 3  [finished]" in header and "r=" not in header
    assert "--rank" not in read_run_info(fake).train_command()
    runs = collect_runs(out)
    assert runs[["task", "label", "method", "seed"]].values.tolist() == [["RTE", "FFT", "fft", 3]]
    assert runs["rank"].isna().all()


# ---------------------------------------------------------------- nothing lost


def test_force_with_bad_input_keeps_the_finished_run(finished_run, tmp_path, make_cfg):
    out = tmp_path / "out"
    run = out / "FFT" / "RTE" / "seed3"
    shutil.copytree(finished_run, run)
    before = _files(run)
    with pytest.raises(PeftlabError, match="RTE"):
        train_run(make_cfg(out, data=tmp_path / "no_data"), force=True)
    assert _files(run) == before and is_finished(run)
    with pytest.raises(PeftlabError, match="no_model"):
        train_run(make_cfg(out, f"model={tmp_path / 'no_model'}"), force=True)
    (tmp_path / "junk_model").mkdir()
    (tmp_path / "junk_model" / "config.json").write_text("{}")  # a tokenizer-less, type-less "model"
    with pytest.raises(PeftlabError, match="junk_model"):
        train_run(make_cfg(out, f"model={tmp_path / 'junk_model'}"), force=True)
    assert _files(run) == before


def test_force_never_deletes_a_users_file(finished_run, tmp_path, make_cfg):
    out = tmp_path / "out"
    run = out / "FFT" / "RTE" / "seed3"
    shutil.copytree(finished_run, run)
    (run / "my_notes.json").write_text("{}")  # looks like JSON, is not peftlab's
    before = _files(run)
    with pytest.raises(PeftlabError, match=r"holds files peftlab did not write \(my_notes.json\).*nothing was deleted"):
        train_run(make_cfg(out), force=True)
    assert _files(run) == before


def test_clear_run_dir_deletes_only_known_names(tmp_path):
    run = tmp_path / "run"
    for name in ("run_config.json", "final_metrics.json", "importance_pre.jsonl", "importance_pre_per_example.npy",
                 "gradfisher_pre.jsonl", "update.jsonl", "update_meta.json", "eval_subset.json", "probe.json",
                 "probe_head.safetensors", "measure_manifest.json", "importance_post.partial.jsonl",
                 "final_metrics.json.tmp-123"):
        atomic_write_text(run / name, "x")
    (run / "ckpt_final").mkdir()
    (run / "analysis").mkdir()
    assert len(clear_run_dir(run)) == 15 and list(run.iterdir()) == []


# ---------------------------------------------------------------- devices


def test_device_recorded_is_where_it_ran(finished_run):
    fm = read_json(finished_run / "final_metrics.json")
    assert fm["device"] == "cpu" and fm["device_requested"] == "auto" and fm["autocast_dtype"] is None


def test_explicit_unavailable_device_is_an_error(tmp_path, make_cfg, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PeftlabError, match="device=cuda:1 was asked for but CUDA is not available"):
        train_run(make_cfg(tmp_path / "out", "device=cuda:1"))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- seed scripts


def test_seed_scripts_accept_task_names_in_any_case(tmp_path):
    from peftlab.tasks.registry import _LOOKUP

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "peftlab").write_text('#!/usr/bin/env bash\necho "$@"\n')
    (bin_dir / "peftlab").chmod(0o755)
    out = tmp_path / "outputs"
    for rel in ("FFT/RTE/seed1", "LoRA/RTE/seed1_r8"):
        atomic_write_text(out / rel / "final_metrics.json", '{"finished": true}')
        for step in ("importance_pre", "update", "gradfisher_pre", "importance_post"):
            atomic_write_text(out / rel / f"{step}.jsonl", "{}\n")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PEFTLAB_OUT": str(out)}

    def script(*args):
        return subprocess.run([str(REPO / "scripts" / args[0]), *args[1:]], env=env, capture_output=True, text=True)

    result = script("compare_fft_lora.sh", "1", "rte", "8")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"compare {out}/FFT/RTE/seed1 {out}/LoRA/RTE/seed1_r8 --out {out}"
    assert script("measure_lora.sh", "1", "sst2", "8").stdout.strip() == f"measure {out}/LoRA/SST-2/seed1_r8"
    assert script("make_plots.sh", "1", "sts-b").stdout.strip() == f"analyze {out}/FFT/STS-B/seed1"
    assert script("make_plots_lora.sh", "2", "Cola", "4").stdout.strip() == f"analyze {out}/LoRA/CoLA/seed2_r4"
    assert script("measure_mnli.sh", "1", "mrpc", "fft").stdout.strip() == f"measure {out}/FFT/MRPC/seed1"
    # the bash table agrees with the registry for every name the registry accepts
    names = " ".join(_LOOKUP)
    result = subprocess.run(["bash", "-c", f'. "{REPO}/scripts/_task.sh"; for n in {names}; do canonical_task "$n"; '
                             f'canonical_task "$(echo $n | tr a-z A-Z)"; done'], capture_output=True, text=True)
    expected = [c for c in _LOOKUP.values() for _ in range(2)]
    assert result.stdout.split() == expected


def test_disk_full_while_checkpointing_is_one_line(tmp_path, make_cfg, monkeypatch):
    def failed_write(*args, **kwargs):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", failed_write)
    with pytest.raises(PeftlabError, match=r"cannot write a checkpoint under .*checkpoints \(PytorchStreamWriter "
                                           r"failed writing file data/0: file write failed\); free some space"):
        train_run(make_cfg(tmp_path))
    assert not (tmp_path / "FFT" / "RTE" / "seed3" / "final_metrics.json").exists()


def test_scores_table_survives_a_null_score(finished_run, tmp_path):
    """A run whose dev metric was not finite has `"score": null`; the scores table says n/a instead of crashing."""
    from peftlab.analysis.scores import write_scores

    out = tmp_path / "outputs"
    run = out / "FFT" / "RTE" / "seed3"
    shutil.copytree(finished_run, run)
    fm = read_json(run / "final_metrics.json")
    atomic_write_json(run / "final_metrics.json", {**fm, "score": float("nan"), "dev": {"accuracy": float("nan")}})
    assert read_json(run / "final_metrics.json")["score"] is None
    table = (write_scores(out) / "scores.md").read_text()
    assert "| RTE | FFT | accuracy | n/a (no finite score) | 3 |" in table
