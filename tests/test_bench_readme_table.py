"""scripts/bench/readme_table.py: one README table from saved bench.csv files, nothing recomputed."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench" / "readme_table.py"
COLUMNS = ["method", "rank", "targets", "n_seeds", "seeds", "metric", "score_mean", "score_std", "vs_chance",
           "trainable_params", "trainable_params_without_classifier", "pct_of_fft_params", "train_s_mean",
           "latency_b8_ms", "latency_b8_merged_ms", "merge_note"]


def _bench(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True)
    with open(folder / "bench.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def test_rows_come_from_bench_csv_and_unfinished_benches_are_named(tmp_path):
    _bench(tmp_path / "main", [
        dict(method="lora", rank="8", targets="q,v", n_seeds="3", seeds="1 2 3", metric="accuracy",
             score_mean="0.88741", score_std="0.0052", vs_chance="above chance", trainable_params="75268",
             trainable_params_without_classifier="73728", pct_of_fft_params="0.3314", train_s_mean="245.6",
             latency_b8_ms="251.04", latency_b8_merged_ms="240.5", merge_note=""),
        dict(method="adapter", rank="8", targets="", n_seeds="1", seeds="1", metric="accuracy",
             score_mean="0.25", score_std="", vs_chance="AT CHANCE", trainable_params="80000",
             trainable_params_without_classifier="78480", pct_of_fft_params="0.35", train_s_mean="200",
             latency_b8_ms="260", latency_b8_merged_ms="", merge_note="not mergeable: adapters add modules"),
    ])
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "main", "missing"], capture_output=True,
                          text=True, check=True)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("| bench | method | rank | targets | accuracy mean ± std (seeds) |")
    assert lines[2] == ("| main | lora | 8 | q,v | 0.887 ± 0.005 (1 2 3) | above chance | 73,728 | 0.33 | 246 | "
                        "251.0 | 240.5 |")
    assert lines[3] == "| main | adapter | 8 | — | 0.250 (1) | AT CHANCE | 78,480 | 0.35 | 200 | 260.0 | not mergeable |"
    assert "missing: no bench.csv (grid not finished): skipped" in done.stderr


def test_scores_only_drops_the_time_columns(tmp_path):
    _bench(tmp_path / "fft", [dict(method="fft", rank="", targets="", n_seeds="1", seeds="1", metric="pearson",
                                   score_mean="0.385", score_std="", vs_chance="", trainable_params="100",
                                   trainable_params_without_classifier="90", pct_of_fft_params="100",
                                   train_s_mean="189", latency_b8_ms="400", latency_b8_merged_ms="",
                                   merge_note="nothing to merge: no modules added")])
    lines = subprocess.run([sys.executable, str(SCRIPT), "--scores-only", str(tmp_path), "fft"], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    assert lines[0] == ("| bench | method | rank | targets | pearson mean ± std (seeds) | vs chance | "
                        "trainable params (no classifier) | % of FFT |")
    assert lines[1] == "|---|---|---|---|---|---|---|---|" and lines[2] == "| fft | fft | — | — | 0.385 (1) |  | 90 | 100.00 |"
