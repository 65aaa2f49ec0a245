"""scripts/adalora/: argument order of the seed entry points (run_rte/run_sst2/run_mnli SIGNAL SEED,
run_ablation_all TASK SEED, run_all TASK SEEDS...), checked with a stand-in `peftlab` that records its calls."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "adalora"

FAKE = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
if [ "$1 $2" = "adalora run" ]; then echo "$OUT/ADALORA/RTE/combo/seed1"; echo "summary"; fi
"""


def run(tmp_path, *args):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "peftlab").write_text(FAKE)
    (bin_dir / "peftlab").chmod(0o755)
    (tmp_path / "ADALORA" / "RTE" / "combo" / "seed1").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls"),
           "OUT": str(tmp_path)}
    result = subprocess.run(["bash", *args], capture_output=True, text=True, env=env, timeout=60)
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").is_file() else []
    return result, calls


@pytest.mark.parametrize("script, task", [("run_rte.sh", "RTE"), ("run_sst2.sh", "SST-2"), ("run_mnli.sh", "MNLI")])
def test_one_run_scripts_take_signal_then_seed(tmp_path, script, task):
    result, calls = run(tmp_path, str(SCRIPTS / script), "combo", "42", "lr=1e-3")
    assert result.returncode == 0, result.stderr
    assert calls == [f"adalora run --task {task} --signal combo --seed 42 lr=1e-3"]
    (tmp_path / "usage").mkdir()
    result, calls = run(tmp_path / "usage", str(SCRIPTS / script), "combo")
    assert result.returncode == 2 and result.stderr.startswith(f"usage: {script} SIGNAL SEED") and not calls


def test_ablation_all_runs_every_signal_and_the_lora_reference_then_plots(tmp_path):
    result, calls = run(tmp_path, str(SCRIPTS / "run_ablation_all.sh"), "RTE", "42", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert calls == [f"adalora run --task RTE --signals all --seeds 42 --lora-reference --out {tmp_path}",
                     f"adalora plot {tmp_path}/ADALORA/RTE/combo/seed1"]


def test_run_all_loops_seeds_then_compares(tmp_path):
    result, calls = run(tmp_path, str(SCRIPTS / "run_all.sh"), "RTE", "1", "2", "--", "lr=1e-3", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    runs = [c for c in calls if c.startswith("adalora run")]
    assert runs == [f"adalora run --task RTE --signals all --seeds {s} --lora-reference lr=1e-3 --out {tmp_path}"
                    for s in (1, 2)]
    assert calls[-1] == f"adalora compare --task RTE --seeds 1 2 --out {tmp_path}"


def test_readme_table_runs_both_tasks_with_the_documented_settings(tmp_path):
    result, calls = run(tmp_path, str(SCRIPTS / "readme_table.sh"), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    runs = [c for c in calls if c.startswith("adalora run")]
    assert runs == [
        "adalora run --task SST-2 --signals all --seeds 1 2 3 --lora-reference --config sst2 max_train_samples=4096 "
        f"lr=1e-2 tinit=0.1 tfinal=0.3 --out {tmp_path} --lora-lr 1e-3",
        "adalora run --task RTE --signals all --seeds 1 2 3 --lora-reference --config rte epochs=1 "
        f"max_train_samples=1024 lr=1e-2 tinit=0.1 tfinal=0.3 deltaT=5 --out {tmp_path} --lora-lr 1e-3"]
    assert [c for c in calls if c.startswith("adalora compare")] == [
        f"adalora compare --task {t} --seeds 1 2 3 --out {tmp_path}" for t in ("SST-2", "RTE")]
