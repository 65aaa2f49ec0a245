"""Sweeps: spec expansion and validation, skip/resume, failure recording, local vs Ray equality.

Runs use a tiny random BERT body (+ the MiniLM tokenizer) on generated RTE-layout rows, ~1 s each.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from peftlab.errors import PeftlabError
from peftlab.io import read_json
from peftlab.runs import is_finished
from peftlab.sweep.runner import run_sweep
from peftlab.sweep.spec import expand, grid_size, load_spec, parse_spec

TINY = {"task": "rte", "epochs": 1, "max_train_samples": 16, "max_eval_samples": 8, "batch_size": 8,
        "eval_batch_size": 8, "max_len": 32, "logging_steps": 1, "save_steps": 1}


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory) -> dict:
    """A tiny model body dir and a generated RTE data dir (no real data needed)."""
    from peftlab.models import load_tokenizer
    from peftlab.testing import tiny_model, write_generated_rte

    root = tmp_path_factory.mktemp("sweep_inputs")
    model_dir = root / "bert"
    tiny_model("bert").base_model.save_pretrained(model_dir)
    load_tokenizer(None).save_pretrained(model_dir)
    data_dir = write_generated_rte(root / "data", n_train=24, n_dev=12)
    return {"model": str(model_dir), "data_dir": str(data_dir)}


def spec_dict(tiny_inputs, **axes) -> dict:
    return {"name": "tiny", "fixed": {**TINY, **tiny_inputs},
            "axes": axes or {"method": ["fft", "lora"], "seed": [1, 2]},
            "resources": {"cpus_per_run": 1, "max_concurrent": 2}}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------- spec


def test_readme_example_spec_expands_to_the_train_layout(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text("name: tiny\nfixed: {task: rte, epochs: 1, max_train_samples: 64, max_eval_samples: 32}\n"
                    "axes:\n  method: [fft, lora]\n  seed: [1, 2]\nresources: {cpus_per_run: 1, max_concurrent: 2}\n")
    spec = load_spec(path)
    assert grid_size(spec) == 4 and spec.resources.max_concurrent == 2
    runs = expand(spec, tmp_path / "out")
    assert [r.run_dir.relative_to(tmp_path / "out").as_posix() for r in runs] == [
        "FFT/RTE/seed1", "FFT/RTE/seed2", "LoRA/RTE/seed1_r8", "LoRA/RTE/seed2_r8"]
    assert [r.axes for r in runs][2] == {"method": "lora", "seed": 1}
    assert runs[0].cfg.epochs == 1.0 and runs[0].cfg.max_eval_samples == 32 and runs[0].cfg.lr == 5e-5


def test_non_identity_axes_get_their_own_output_root_and_ignored_settings_merge(tmp_path):
    spec = parse_spec({"name": "g", "fixed": {"task": "rte"},
                       "axes": {"method": ["fft", "lora"], "rank": [4, 8], "lr": [1e-4, 3e-4]}})
    runs = expand(spec, tmp_path)
    assert grid_size(spec) == 8
    # fft ignores rank: its two rank points are one run (trained once), lora keeps both
    assert len(runs) == 6
    dirs = sorted(r.run_dir.relative_to(tmp_path).as_posix() for r in runs)
    assert dirs == sorted(["lr-0.0001/FFT/RTE/seed1", "lr-0.0003/FFT/RTE/seed1",
                           "lr-0.0001/LoRA/RTE/seed1_r4", "lr-0.0001/LoRA/RTE/seed1_r8",
                           "lr-0.0003/LoRA/RTE/seed1_r4", "lr-0.0003/LoRA/RTE/seed1_r8"])
    fft = next(r for r in runs if r.run_dir.as_posix().endswith("lr-0.0001/FFT/RTE/seed1"))
    assert fft.also == [{"method": "fft", "rank": 8, "lr": 1e-4}] and fft.cfg.lr == 1e-4


@pytest.mark.parametrize("data, message", [
    ({"name": "x", "axes": {"sigal": [1]}}, "unknown config key 'sigal' in axes; valid keys: task, method"),
    ({"name": "x", "fixed": {"lrr": 1}, "axes": {"seed": [1]}}, "unknown config key 'lrr' in fixed"),
    ({"name": "x", "axes": {"method": ["fft", "loraa"]}}, "grid point (method=loraa): unknown method 'loraa'"),
    ({"name": "x", "axes": {"seed": [1, "one"]}}, "config key 'seed' expects int, got 'one'"),
    ({"name": "x", "axes": {"out": ["a"]}}, "'out' cannot be set in axes; pass --out"),
    ({"name": "x", "fixed": {"seed": 1}, "axes": {"seed": [1]}}, "'seed' is both an axis and fixed"),
    ({"name": "x", "axes": {"seed": 1}}, "axis 'seed' must be a non-empty list"),
    ({"name": "../x", "axes": {"seed": [1]}}, "name '../x' is not a plain name"),
    ({"name": "x", "axis": {"seed": [1]}}, "unknown top-level key 'axis'"),
    ({"name": "x", "axes": {"seed": [1]}, "resources": {"max_concurrent": 0}}, "resources.max_concurrent must be"),
    ({"name": "x", "axes": {"lr": [1e-4]}, "search": "bayes"}, "search 'bayes' is not available; choose grid or asha"),
])
def test_invalid_specs_fail_with_one_line_naming_the_problem(tmp_path, data, message):
    with pytest.raises(PeftlabError) as err:
        expand(parse_spec(data), tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cli_invalid_axis_is_one_error_line(tmp_path, capsys):
    from peftlab.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text("name: x\naxes: {method: [fft], sigal: [1]}\n")
    with pytest.raises(SystemExit) as code:
        main(["sweep", str(path), "--dry-run"])
    err = capsys.readouterr().err
    assert code.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: sweep spec {path}: unknown config key 'sigal' in axes")


def test_missing_ray_names_the_extra(monkeypatch, tmp_path, tiny_inputs):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(PeftlabError, match=r'run: pip install "peftlab\[ray\]"'):
        run_sweep(parse_spec(spec_dict(tiny_inputs)), out=tmp_path, backend="ray", echo=lambda _: None)
    assert not (tmp_path / "SWEEP").exists()  # failed before anything ran or was written


# ---------------------------------------------------------------- local backend


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory, tiny_inputs):
    out = tmp_path_factory.mktemp("local")
    lines: list[str] = []
    sweep_dir = run_sweep(parse_spec(spec_dict(tiny_inputs)), out=out, echo=lines.append)
    return out, sweep_dir, lines


def test_local_sweep_writes_train_run_dirs_and_tables(local_sweep, tiny_inputs):
    from peftlab.config import load_config
    from peftlab.runs import read_final_metrics, run_dir_for

    out, sweep_dir, lines = local_sweep
    assert lines[0] == "sweep tiny: grid method(2) × seed(2) = 4 points, 4 runs"
    assert lines[1] == "  done 0, to resume 0, to do 4"
    rows = read_csv(sweep_dir / "sweep.csv")
    assert [(r["method"], r["seed"], r["status"]) for r in rows] == [
        ("fft", "1", "finished"), ("fft", "2", "finished"), ("lora", "1", "finished"), ("lora", "2", "finished")]
    for row in rows:
        # each run dir is exactly what `peftlab train` writes for the same settings
        cfg = load_config(None, {**TINY, **tiny_inputs, "method": row["method"], "seed": row["seed"], "out": str(out)})
        assert Path(row["run_dir"]) == run_dir_for(cfg) and is_finished(run_dir_for(cfg))
        fm = read_final_metrics(row["run_dir"])
        assert float(row["score"]) == fm["score"] and float(row["dev_accuracy"]) == fm["dev"]["accuracy"]
        assert int(row["trainable_params"]) == fm["trainable_params"]
        assert float(row["train_s"]) == fm["timing"]["train_s"]
    assert int(rows[2]["trainable_params"]) < int(rows[0]["trainable_params"])  # LoRA trains fewer than FFT
    meta = read_json(sweep_dir / "sweep.json")
    assert meta["complete"] is True and meta["counts"] == {"finished": 4, "skipped": 0, "failed": 0, "stopped_early": 0,
                                                         "not run": 0}
    assert meta["spec"]["axes"] == {"method": ["fft", "lora"], "seed": [1, 2]} and meta["failures"] == []
    assert meta["versions"]["torch"] and meta["started"] <= meta["ended"]


def test_second_sweep_skips_finished_runs(local_sweep, tiny_inputs):
    out, sweep_dir, _ = local_sweep
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/RTE/*/final_metrics.json")}
    lines: list[str] = []
    run_sweep(parse_spec(spec_dict(tiny_inputs)), out=out, echo=lines.append)
    assert lines[1] == "  done 4, to resume 0, to do 0"
    assert {r["status"] for r in read_csv(sweep_dir / "sweep.csv")} == {"skipped"}
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/RTE/*/final_metrics.json")} == before


def test_interrupted_run_resumes_and_equals_an_uninterrupted_one(tmp_path, tiny_inputs, local_sweep):
    from peftlab.train import train_run
    from peftlab.training.callbacks import StopAfterStepCallback

    spec = parse_spec(spec_dict(tiny_inputs, method=["lora"], seed=[1]))
    run = expand(spec, tmp_path)[0]
    with pytest.raises(KeyboardInterrupt):
        train_run(run.cfg, callbacks=[StopAfterStepCallback(1)])  # like Ctrl-C after step 1 (of 2)
    lines: list[str] = []
    run_sweep(spec, out=tmp_path, echo=lines.append)
    assert lines[1] == "  done 0, to resume 1, to do 0"
    resumed = read_json(run.run_dir / "final_metrics.json")
    reference = read_json(local_sweep[0] / "LoRA/RTE/seed1_r8/final_metrics.json")
    assert resumed["resumed_from_step"] == 1 and resumed["global_step"] == reference["global_step"] == 2
    assert resumed["dev"] == reference["dev"]


def test_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path, tiny_inputs):
    # a model dir that does not exist passes config validation but fails its runs in preflight
    data = spec_dict(tiny_inputs, method=["fft", "lora"])
    data["fixed"].pop("model")
    data["axes"]["model"] = [tiny_inputs["model"], str(tmp_path / "no-such-model")]
    spec = parse_spec(data)
    sweep_dir = run_sweep(spec, out=tmp_path / "out", echo=lambda _: None)
    rows = read_csv(sweep_dir / "sweep.csv")
    assert [r["status"] for r in rows] == ["finished", "failed", "finished", "failed"]
    meta = read_json(sweep_dir / "sweep.json")
    assert meta["counts"]["failed"] == 2 and len(meta["failures"]) == 2
    for failure in meta["failures"]:
        assert "no-such-model" in failure["error"] and "\n" not in failure["error"]
        assert failure["axes"]["model"].endswith("no-such-model")
    # --fail-fast stops at the first failure; the rest are "not run" and the sweep is marked incomplete
    sweep_dir = run_sweep(spec, out=tmp_path / "out2", fail_fast=True, echo=lambda _: None)
    assert [r["status"] for r in read_csv(sweep_dir / "sweep.csv")] == ["finished", "failed", "not run", "not run"]
    assert read_json(sweep_dir / "sweep.json")["complete"] is False


# ---------------------------------------------------------------- ray backend


def _ray_missing() -> str | None:
    try:
        import ray  # noqa: F401
        from ray import tune  # noqa: F401
    except ImportError as err:
        return f"ray[tune] is not importable ({err}); install with pip install 'peftlab[ray]'"
    return None


@pytest.mark.skipif(_ray_missing() is not None, reason=str(_ray_missing()))
def test_ray_backend_gives_the_same_scores_as_local(tmp_path, tiny_inputs, local_sweep):
    from peftlab.runs import read_final_metrics

    out = tmp_path / "ray"
    lines: list[str] = []
    sweep_dir = run_sweep(parse_spec(spec_dict(tiny_inputs)), out=out, backend="ray", echo=lines.append)
    rows = read_csv(sweep_dir / "sweep.csv")
    assert [r["status"] for r in rows] == ["finished"] * 4
    local_out = local_sweep[0]
    for rel in ("FFT/RTE/seed1", "FFT/RTE/seed2", "LoRA/RTE/seed1_r8", "LoRA/RTE/seed2_r8"):
        ray_fm, local_fm = read_final_metrics(out / rel), read_final_metrics(local_out / rel)
        assert ray_fm["score"] == local_fm["score"] and ray_fm["dev"] == local_fm["dev"]
        assert ray_fm["train_loss"] == local_fm["train_loss"]
    meta = read_json(sweep_dir / "sweep.json")
    assert meta["backend"] == "ray" and meta["versions"]["ray"] and meta["ray"]["init_s"] > 0
    assert meta["ray"]["temp_dir_note"] is None or "107" in meta["ray"]["temp_dir_note"]


def test_ray_temp_dir_is_short_enough_for_unix_sockets(tmp_path):
    from peftlab.sweep.ray_backend import MAX_TEMP_DIR, ray_temp_dir

    short, why = ray_temp_dir(Path("/o/SWEEP/x"))
    assert short == Path("/o/SWEEP/x/ray") and why is None
    deep = tmp_path / ("d" * 60) / "SWEEP" / "tiny"
    chosen, why = ray_temp_dir(deep)
    assert len(str(chosen)) <= MAX_TEMP_DIR and "107" in why


@pytest.mark.skipif(_ray_missing() is not None, reason=str(_ray_missing()))
def test_ray_backend_skips_finished_runs_without_starting_ray(local_sweep, tiny_inputs, monkeypatch):
    import ray

    def no_init(*args, **kwargs):
        raise AssertionError("ray.init must not be called when every run is finished")

    monkeypatch.setattr(ray, "init", no_init)
    out, sweep_dir, _ = local_sweep
    run_sweep(parse_spec(spec_dict(tiny_inputs)), out=out, backend="ray", echo=lambda _: None)
    assert {r["status"] for r in read_csv(sweep_dir / "sweep.csv")} == {"skipped"}
    assert read_json(sweep_dir / "sweep.json")["ray"]["trials"] == 0


@pytest.mark.skipif(_ray_missing() is not None, reason=str(_ray_missing()))
def test_shared_storage_check_runs_on_every_node(tmp_path):
    """The --ray-address check, on a one-node local Ray: the probe is seen there, and removed afterwards."""
    import tempfile

    import ray

    from peftlab.sweep.ray_backend import check_shared_storage, require_ray

    require_ray()
    with tempfile.TemporaryDirectory(prefix="plr-", dir="/tmp") as temp_dir:  # short: unix socket path limit
        ray.init(num_cpus=1, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
        try:
            nodes = check_shared_storage(ray, tmp_path / "out")
        finally:
            ray.shutdown()
    assert len(nodes) == 1
    assert list((tmp_path / "out").iterdir()) == []


# ---------------------------------------------------------------- ASHA (learning-rate searches only)


def asha_dict(tiny_inputs, lrs=(3e-3, 1e-7), **extra) -> dict:
    fixed = {**TINY, **tiny_inputs, "method": "fft", "epochs": 2, "max_train_samples": 128, "max_eval_samples": 16,
             "warmup_ratio": 0.0, "lr_scheduler": "constant", "save_steps": 100}
    return {"name": "lrs", "fixed": fixed, "axes": {"lr": list(lrs)}, "search": "asha",
            "asha": {"grace_period": 1, "reduction_factor": 2}, "resources": {"cpus_per_run": 1, "max_concurrent": 1},
            **extra}


@pytest.mark.parametrize("change, message", [
    ({"axes": {"rank": [4, 8]}}, "search: asha is only for learning-rate searches (the one axis must be "
                                            "lr), got axes rank; early stopping would bias a factorial comparison"),
    ({"axes": {"lr": [1e-3], "seed": [1, 2]}}, "got axes lr, seed"),
    ({"asha": {"grace_period": 0}}, "asha.grace_period must be a whole number of epochs >= 1"),
    ({"asha": {"reduction_factor": 1}}, "asha.reduction_factor must be > 1"),
    ({"asha": {"grace": 1}}, "unknown asha key 'grace'"),
    ({"search": "grid"}, "'asha' settings need search: asha"),
])
def test_asha_is_refused_outside_a_learning_rate_search(tiny_inputs, change, message):
    with pytest.raises(PeftlabError) as err:
        parse_spec({**asha_dict(tiny_inputs), **change})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_asha_needs_ray_and_evaluations_during_training(tmp_path, tiny_inputs):
    with pytest.raises(PeftlabError, match=r"^search: asha needs the ray backend .*pass --backend ray"):
        run_sweep(parse_spec(asha_dict(tiny_inputs)), out=tmp_path, backend="local", echo=lambda _: None)
    lines: list[str] = []
    assert run_sweep(parse_spec(asha_dict(tiny_inputs)), out=tmp_path, dry_run=True, echo=lines.append) is None
    assert "search asha: grace_period 1 epoch(s), reduction_factor 2" in lines[2]
    one_epoch = asha_dict(tiny_inputs)
    one_epoch["fixed"]["epochs"] = 1  # its only evaluation is at the end: nothing for ASHA to act on
    with pytest.raises(PeftlabError, match="epochs > asha.grace_period"):
        run_sweep(parse_spec(one_epoch), out=tmp_path, backend="ray", echo=lambda _: None)
    assert not (tmp_path / "SWEEP").exists()


@pytest.fixture(scope="module")
def keyword_rte(tmp_path_factory) -> str:
    """RTE-layout rows whose label word fills the sentences: the tiny model reaches dev accuracy 1.0 within one
    epoch (16 steps) at lr 3e-3 and stays at chance (0.5) at lr 1e-7."""
    from peftlab.testing import GENERATED_WORDS

    root = tmp_path_factory.mktemp("keyword_rte")
    labels = ("entailment", "not_entailment")
    for split, n_rows in (("train", 128), ("dev", 16)):
        lines = ["index\tsentence1\tsentence2\tlabel\n"]
        for i in range(n_rows):
            cue = "yes" if i % 2 == 0 else "no"
            words = " ".join(GENERATED_WORDS[(i * 7 + k) % len(GENERATED_WORDS)] for k in range(4))
            lines.append(f"{i}\t{(cue + ' ') * 6}{words}.\t{cue} {cue}.\t{labels[i % 2]}\n")
        path = root / "glue" / "RTE" / f"{split}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(lines), encoding="utf-8")
    return str(root)


@pytest.mark.skipif(_ray_missing() is not None, reason=str(_ray_missing()))
def test_asha_stops_the_bad_learning_rate_and_says_so(tmp_path, tiny_inputs, keyword_rte):
    from peftlab.runs import read_final_metrics

    spec = parse_spec(asha_dict({**tiny_inputs, "data_dir": keyword_rte}))
    lines: list[str] = []
    sweep_dir = run_sweep(spec, out=tmp_path, backend="ray", echo=lines.append)
    rows = read_csv(sweep_dir / "sweep.csv")
    # FIFO, one at a time: lr 3e-3 reaches epoch 1 first; lr 1e-7 then scores below it there and is stopped
    assert [(r["lr"], r["status"]) for r in rows] == [("0.003", "finished"), ("1e-07", "stopped_early")]
    good, bad = rows
    assert is_finished(good["run_dir"]) and not is_finished(bad["run_dir"]) and bad["dev_accuracy"] == ""
    assert bad["stopped_epoch"] == "1" and float(bad["stopped_score"]) < read_final_metrics(good["run_dir"])["score"]
    meta = read_json(sweep_dir / "sweep.json")
    assert meta["counts"]["stopped_early"] == 1 and meta["counts"]["failed"] == 0
    assert meta["stopped_early"] == [bad["run_dir"]] and meta["failures"] == []
    assert meta["asha"] == {"metric": "dev_accuracy", "main_metric": "accuracy", "mode": "max", "time_attr": "epoch",
                            "max_t": 2, "grace_period": 1, "reduction_factor": 2.0}
    assert any("lr=1e-07: stopped early by ASHA after epoch 1" in line for line in lines)
    # a re-run keeps ASHA's decision: nothing to train, so Ray is not even started
    lines = []
    run_sweep(spec, out=tmp_path, backend="ray", echo=lines.append)
    assert lines[1] == "  done 1, stopped early before 1, to resume 0, to do 0"
    assert [r["status"] for r in read_csv(sweep_dir / "sweep.csv")] == ["skipped", "stopped_early"]
