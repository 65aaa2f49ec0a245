"""`torchrun --nproc_per_node 2 -m peftlab train ...` on CPU (HF Trainer DDP over gloo): one complete run dir.

Skipped, with the reason, only when torch.distributed/gloo is missing or the sandbox forbids the local
sockets the processes rendezvous over.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from peftlab.io import read_json, read_jsonl

# Errors that mean "this machine cannot open local sockets for the process group", not a peftlab bug.
_SANDBOX_SIGNS = ("Address already in use", "Connection refused", "Operation not permitted", "Permission denied",
                  "RendezvousConnectionError", "Network is unreachable", "Failed to bind", "no such device")


def _distributed_unavailable() -> str | None:
    import torch.distributed as dist

    if not dist.is_available():
        return "torch was built without torch.distributed"
    if not dist.is_gloo_available():
        return "torch.distributed has no gloo backend (needed on CPU)"
    return None


@pytest.mark.skipif(_distributed_unavailable() is not None, reason=str(_distributed_unavailable()))
def test_torchrun_two_cpu_processes_write_one_complete_run_dir(tmp_path):
    from peftlab.models import load_tokenizer
    from peftlab.testing import tiny_model, write_generated_rte

    model_dir = tmp_path / "bert"
    tiny_model("bert").base_model.save_pretrained(model_dir)
    load_tokenizer(None).save_pretrained(model_dir)
    data_dir = write_generated_rte(tmp_path / "data", n_train=16, n_dev=8)
    out = tmp_path / "out"
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    # --standalone: a private rendezvous on a free local port (other jobs may share this machine)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "peftlab", "train", f"--model={model_dir}", f"--data-dir={data_dir}", "--task=rte", "--method=lora",
           "--epochs=1", "--batch-size=4", "--max-len=32", f"--out={out}", "logging_steps=1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        sign = next((s for s in _SANDBOX_SIGNS if s in proc.stderr), None)
        if sign:
            pytest.skip(f"torchrun cannot open local sockets here ({sign})")
        raise AssertionError(f"torchrun failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")

    run_dir = out / "LoRA" / "RTE" / "seed1_r8"
    assert proc.stdout.count(str(run_dir)) == 1  # only rank 0 reports
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "ckpt_final", "ckpt_init", "final_metrics.json", "metrics.jsonl", "run_config.json"]
    config = read_json(run_dir / "run_config.json")
    assert config["world_size"] == 2 and config["effective_batch_size"] == 8
    final = read_json(run_dir / "final_metrics.json")
    # 16 rows / (4 rows per process × 2 processes) = 2 optimizer steps (a single process would take 4)
    assert final["finished"] is True and final["global_step"] == 2 and final["train_samples"] == 16
    train_rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2]  # one writer: no row twice
