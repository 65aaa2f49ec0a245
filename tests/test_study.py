"""A tiny end-to-end `peftlab study`: train → measure → analyze → compare → aggregate → compare-ranks →
report.html, on a tiny random BERT and generated RTE rows; then the same study again is all skips."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from peftlab.errors import PeftlabError
from peftlab.testing import save_tiny_model_dir, write_generated_rte

TINY_TRAINING = ["max_steps=2", "max_train_samples=32", "max_eval_samples=16", "batch_size=8", "max_len=32",
                 "logging_steps=1"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from peftlab.study import run_study

    root = tmp_path_factory.mktemp("study")
    data_dir = write_generated_rte(root / "data", n_train=80, n_dev=40)
    model_dir = save_tiny_model_dir(root / "tiny-bert", "bert")
    out = root / "out"
    kwargs = dict(task="rte", methods=["fft", "lora"], seeds=[1, 2], ranks=[2, 4], profile="quick", out=str(out),
                  overrides=TINY_TRAINING, model=str(model_dir), data_dir=str(data_dir), subset_size=16,
                  progress=False)
    report = run_study(**kwargs)
    return {"report": report, "out": out, "kwargs": kwargs}


def test_study_writes_every_stage_and_a_self_contained_report(study):
    report, out = study["report"], study["out"]
    assert report == out / "STUDY" / "RTE" / "quick_fft-lora_s1-2_r2-4" / "report.html"
    summary = json.loads((report.parent / "study.json").read_text())
    # FFT ignores ranks: 2 seeds × (1 FFT + 2 LoRA ranks) = 6 runs.
    assert len(summary["runs"]) == 6
    for run in map(Path, summary["runs"]):
        final = json.loads((run / "final_metrics.json").read_text())
        assert final["finished"] and 0.0 <= final["score"] <= 1.0
        for name in ("importance_pre.jsonl", "importance_post.jsonl", "gradfisher_pre.jsonl", "update.jsonl",
                     "importance_taylor_vs_exact.json", "analysis/heads.csv", "analysis/stats.json"):
            assert (run / name).is_file(), f"{run}/{name} missing"
        manifest = json.loads((run / "measure_manifest.json").read_text())
        assert all(step["finished"] for step in manifest["steps"].values())
        assert json.loads((run / "eval_subset.json").read_text())["size"] == 16
    # Each seed compares FFT with each LoRA rank (same method at two ranks is compare-ranks' job).
    assert len(summary["compare"]) == 4
    for compare_dir in map(Path, summary["compare"]):
        assert (compare_dir / "compare_summary.txt").is_file() and (compare_dir / "compare_metrics.json").is_file()
    assert (out / "MULTI_SEED" / "RTE").is_dir()
    assert any((out / "RANK_COMPARISON").rglob("rank_comparison.csv"))

    html = report.read_text(encoding="utf-8")
    # Self-contained: figures embedded as data URIs that decode to PNGs, no external references.
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert images and all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    assert not re.search(r'(src|href)="(http|file:|/)', html)
    for needle in ("Across seeds", "Across LoRA ranks", "Comparison"):
        assert needle in html
    assert re.search(r"<th>pooling</th>", html) and re.search(r"<td>cls</td>", html)  # what the classifier read


def test_rerunning_the_study_skips_finished_stages(study):
    from peftlab.study import run_study

    summary_before = json.loads((study["report"].parent / "study.json").read_text())
    times_before = {run: Path(run, "final_metrics.json").stat().st_mtime_ns for run in summary_before["runs"]}
    manifests_before = {run: Path(run, "measure_manifest.json").read_text() for run in summary_before["runs"]}
    run_study(**study["kwargs"])
    for run in summary_before["runs"]:
        assert Path(run, "final_metrics.json").stat().st_mtime_ns == times_before[run]  # not retrained
        steps = json.loads(Path(run, "measure_manifest.json").read_text())["steps"]
        assert steps == json.loads(manifests_before[run])["steps"]  # no step re-measured


def test_study_rejects_bad_input(tmp_path):
    from peftlab.study import run_study

    with pytest.raises(PeftlabError, match="unknown profile 'fast'; choose one of: quick, full"):
        run_study("rte", ["fft"], [1], [8], profile="fast", out=str(tmp_path))
    with pytest.raises(PeftlabError, match="no methods given"):
        run_study("rte", [], [1], [8], out=str(tmp_path))
    with pytest.raises(PeftlabError, match="unknown task"):
        run_study("nosuchtask", ["fft"], [1], [8], out=str(tmp_path))


def test_quick_profile_is_sst2_demo_and_rte_one_flag_away():
    from peftlab.study import DEMO_TASK, StudyPlan, _configs, profile_settings

    assert DEMO_TASK == "SST-2" and profile_settings("quick", "SST-2")["subset_size"] == 512
    assert profile_settings("quick", "RTE")["subset_size"] == 256
    plan = StudyPlan("SST-2", ["fft", "lora"], [1], [8], "quick")
    fft, lora = _configs(plan)
    assert (fft.task, fft.max_len, fft.max_train_samples, fft.epochs) == ("SST-2", 64, 12288, 1)
    assert (fft.lr, lora.lr) == (1e-4, 2e-3)
    user = _configs(StudyPlan("SST-2", ["lora"], [1], [8], "quick", overrides=["lr=1e-3"]))[0]
    assert user.lr == 1e-3  # user overrides win over the profile's lr
    (rte,) = _configs(StudyPlan("RTE", ["fft"], [1], [8], "quick"))
    assert (rte.max_len, rte.max_train_samples, rte.lr) == (128, 1024, 5e-5)
