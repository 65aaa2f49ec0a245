"""Fault injection: `kill -9` a real `peftlab train` process at seeded random points, resume, and get
byte-for-byte the result of an uninterrupted run.

Kill points are drawn (seed 8) as "after the k-th metrics line" plus a short random delay, so they
land while training, checkpointing or evaluating rather than while Python imports torch. The
uninterrupted reference and the final resume run in this process; the killed runs are subprocesses
of the CLI. Tiny model, 32 optimizer steps: ~35 s of CPU in total (most of it three interpreter starts
importing torch/transformers); wall time grows with machine load.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peftlab.config import load_config
from peftlab.io import read_json, read_jsonl
from peftlab.train import train_run

REPO = Path(__file__).resolve().parents[1]
# 64 rows / batch 4 = 16 steps per epoch, 2 epochs = 32 steps; a checkpoint every 3 steps + each epoch end.
ARGS = ["task=rte", "method=fft", "seed=5", "max_train_samples=64", "max_eval_samples=16", "batch_size=4",
        "eval_batch_size=16", "epochs=2", "max_len=32", "logging_steps=1", "save_steps=3"]
N_KILLS = 3


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _log_rows(path: Path) -> list[dict]:
    noisy = ("runtime", "per_second", "flos")
    return [{k: v for k, v in row.items() if not any(n in k for n in noisy)} for row in read_jsonl(path)]


def _count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def test_kill_9_at_random_points_then_resume_equals_uninterrupted(tmp_path, tiny_dir, data_dir):
    common = [f"model={tiny_dir}", f"data_dir={data_dir}", *ARGS]
    reference = train_run(load_config(None, [*common, f"out={tmp_path / 'ref'}"]))

    out = tmp_path / "killed"
    run = out / "FFT" / "RTE" / "seed5"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "peftlab", "train", *common, f"out={out}"]
    rng = random.Random(8)
    # metrics.jsonl gets 32 train lines + 2 eval lines; kill after a seeded line count each time, increasing
    targets = sorted(rng.sample(range(2, 32), N_KILLS))
    killed = 0
    for target in targets:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while proc.poll() is None and _count_lines(run / "metrics.jsonl") < target and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait(timeout=60)
        proc.stderr.close()
        # whatever the kill interrupted, nothing looks complete
        assert not (run / "final_metrics.json").exists()
        assert not (run / "ckpt_final").exists() or not (run / "final_metrics.json").exists()
    assert killed >= 2, f"only {killed} of {N_KILLS} kills landed before the run finished"

    # the same command again, in this process (saves one ~7 s interpreter start): resumes and finishes
    assert train_run(load_config(None, [*common, f"out={out}"])) == run

    a, b = read_json(reference / "final_metrics.json"), read_json(run / "final_metrics.json")
    assert b["finished"] is True and b["resumed_from_step"] is not None
    for key in ("dev", "score", "train_loss", "global_step", "trainable_params", "train_samples"):
        assert a[key] == b[key], key
    assert _files(reference / "ckpt_final") == _files(run / "ckpt_final")  # byte for byte
    assert _files(reference / "ckpt_init") == _files(run / "ckpt_init")
    assert _log_rows(reference / "metrics.jsonl") == _log_rows(run / "metrics.jsonl")
    assert not (run / "checkpoints").exists()
    assert not [p for p in run.rglob("*") if ".tmp-" in p.name]
