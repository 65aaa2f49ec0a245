"""`peftlab scores`: per-run table and mean ± sample std across seeds, from hand-written run files."""

from __future__ import annotations

import json
import statistics

import pandas as pd
import pytest

from peftlab.analysis.scores import write_scores
from peftlab.cli import main
from peftlab.errors import PeftlabError


def fake_run(out, dir_name, task, seed, score, rank=None, finished=True, method="fft"):
    run_dir = out / dir_name / task / (f"seed{seed}_r{rank}" if rank else f"seed{seed}")
    run_dir.mkdir(parents=True)
    (run_dir / "run_config.json").write_text(json.dumps({"config": {"epochs": 5, "task": task}}))
    (run_dir / "final_metrics.json").write_text(json.dumps({
        "task": task, "method": method, "seed": seed, "rank": rank, "dev": {"loss": 0.7, "accuracy": score},
        "main_metric": "accuracy", "score": score, "timing": {"train_s": 10.0 * seed},
        "trainable_params": 100 if rank else 1000, "total_params": 1000, "finished": finished}))
    return run_dir


@pytest.fixture
def out(tmp_path):
    out = tmp_path / "outputs"
    for seed, score in ((1, 0.60), (2, 0.64), (3, 0.65)):
        fake_run(out, "FFT", "RTE", seed, score)
    fake_run(out, "LoRA", "RTE", 1, 0.58, rank=8, method="lora")
    fake_run(out, "LoRA", "RTE", 2, 0.99, rank=8, method="lora", finished=False)  # still training: left out
    fake_run(out, "FFT", "SST-2", 1, 0.90)
    return out


def test_summary_is_mean_and_sample_std_over_finished_runs(out):
    scores_dir = write_scores(out)
    runs = pd.read_csv(scores_dir / "scores_runs.csv")
    assert len(runs) == 5 and 0.99 not in runs["score"].tolist()
    summary = pd.read_csv(scores_dir / "scores_summary.csv").set_index(["task", "label"])
    fft = summary.loc[("RTE", "FFT")]
    assert fft["n_seeds"] == 3 and fft["seeds"] == "1 2 3"
    assert fft["score_mean"] == pytest.approx(statistics.mean([0.60, 0.64, 0.65]), abs=1e-12)
    assert fft["score_std"] == pytest.approx(statistics.stdev([0.60, 0.64, 0.65]), abs=1e-12)
    assert fft["train_s_mean"] == pytest.approx(20.0)
    lora = summary.loc[("RTE", "LoRA_r8")]
    assert lora["n_seeds"] == 1 and pd.isna(lora["score_std"])
    table = (scores_dir / "scores.md").read_text()
    assert "| RTE | FFT | accuracy | 63.0 ± 2.6 | 1 2 3 | 20 | 1,000 |" in table
    assert "| RTE | LoRA_r8 | accuracy | 58.0 | 1 | 10 | 100 |" in table


def test_task_filter_and_cli(out, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["scores", "--out", str(out), "--tasks", "sst2"])
    assert exit_info.value.code == 0
    summary = pd.read_csv(out / "SCORES" / "scores_summary.csv")
    assert summary["task"].tolist() == ["SST-2"]


def test_no_runs_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(PeftlabError, match="no finished runs under"):
        write_scores(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["scores", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no finished runs under")
