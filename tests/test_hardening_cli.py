"""Every bad invocation of every command: exit 2, one `error:` line, no traceback, no new file.

The table covers the CLI's own parsing errors (typer's bundled click exceptions: wrong type, unknown
option/command, missing or extra argument) and peftlab's value errors (non-finite numbers, bad names,
missing paths). Each case runs `peftlab.cli.main` in a fresh working directory; a few run as real
subprocesses to prove the process-level behaviour (exit status, stderr, no traceback).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from peftlab.cli import INTERRUPTED, main

REPO = Path(__file__).resolve().parents[1]

# (case id, argv with {tmp}/{data}/{model} placeholders, a substring the error line must contain)
BAD_INVOCATIONS = [
    # -- the CLI's own parsing errors
    ("unknown-command", ["nosuch"], "No such command 'nosuch'"),
    ("unknown-root-option", ["--bogus"], "No such option: --bogus"),
    ("train-seed-not-int", ["train", "--seed", "abc"], "Invalid value for '--seed'"),
    ("train-seed-missing-value", ["train", "--seed"], "'--seed' requires an argument"),
    ("train-rank-float", ["train", "--rank", "1.5"], "Invalid value for '--rank'"),
    ("train-lr-word", ["train", "--lr", "fast"], "Invalid value for '--lr'"),
    ("train-epochs-word", ["train", "--epochs", "x"], "Invalid value for '--epochs'"),
    ("train-unknown-option", ["train", "--bogus"], "No such option: --bogus"),
    ("train-max-len-missing", ["train", "--max-len"], "'--max-len' requires an argument"),
    ("info-missing-arg", ["info"], "Missing argument"),
    ("info-extra-arg", ["info", "a", "b"], "unexpected extra argument"),
    ("tasks-extra-arg", ["tasks", "extra"], "unexpected extra argument"),
    ("tasks-data-dir-missing", ["tasks", "--data-dir"], "'--data-dir' requires an argument"),
    ("measure-missing-arg", ["measure"], "Missing argument"),
    ("measure-subset-size-word", ["measure", "{tmp}", "--subset-size", "abc"], "Invalid value for '--subset-size'"),
    ("measure-batch-size-float", ["measure", "{tmp}", "--batch-size", "1.5"], "Invalid value for '--batch-size'"),
    ("analyze-missing-arg", ["analyze"], "Missing argument"),
    ("analyze-dpi-word", ["analyze", "{tmp}", "--dpi", "high"], "Invalid value for '--dpi'"),
    ("analyze-q-hi-word", ["analyze", "{tmp}", "--q-hi", "x"], "Invalid value for '--q-hi'"),
    ("compare-missing-second", ["compare", "{tmp}"], "Missing argument"),
    ("compare-dpi-word", ["compare", "{tmp}", "{tmp}", "--dpi", "x"], "Invalid value for '--dpi'"),
    ("aggregate-missing-options", ["aggregate", "--task", "RTE"], "Missing option"),
    ("aggregate-missing-task", ["aggregate", "--methods", "FFT", "--seeds", "1"], "Missing option '--task'"),
    ("compare-ranks-missing-ranks", ["compare-ranks", "--task", "RTE"], "Missing option '--ranks'"),
    ("compare-ranks-seed-word", ["compare-ranks", "--task", "RTE", "--ranks", "8", "--seed", "x"],
     "Invalid value for '--seed'"),
    ("study-unknown-option", ["study", "--bogus"], "No such option: --bogus"),
    ("study-task-missing-value", ["study", "--task"], "'--task' requires an argument"),
    ("demo-out-missing-value", ["demo", "--out"], "'--out' requires an argument"),
    ("scores-tasks-missing-value", ["scores", "--tasks"], "'--tasks' requires an argument"),
    ("scores-unknown-option", ["scores", "--nope"], "No such option: --nope"),
    # -- non-finite and out-of-range numbers: caught by config validation before any file is written
    ("train-lr-nan", ["train", "lr=nan"], "lr must be a finite number"),
    ("train-lr-inf-option", ["train", "--lr", "inf"], "lr must be a finite number"),
    ("train-epochs-inf", ["train", "epochs=inf"], "epochs must be a finite number"),
    ("train-alpha-minus-inf", ["train", "alpha=-inf"], "alpha must be a finite number"),
    ("train-dropout-nan", ["train", "dropout=nan"], "dropout must be a finite number"),
    ("train-max-grad-norm-nan", ["train", "max_grad_norm=nan"], "max_grad_norm must be a finite number"),
    ("train-weight-decay-inf", ["train", "weight_decay=inf"], "weight_decay must be a finite number"),
    ("train-warmup-nan", ["train", "warmup_ratio=NaN"], "warmup_ratio must be a finite number"),
    ("train-negative-seed", ["train", "--seed", "-1"], "seed must be an integer in [0, 4294967295]"),
    ("train-huge-seed", ["train", "--seed", "99999999999"], "seed must be an integer in [0, 4294967295]"),
    ("train-zero-batch", ["train", "batch_size=0"], "batch_size must be >= 1"),
    ("train-rank-zero", ["train", "--method", "lora", "--rank", "0"], "rank must be a positive integer"),
    ("train-unknown-device", ["train", "device=tpu"], "unknown device 'tpu'"),
    # -- bad names and paths
    ("train-unknown-task", ["train", "--task", "imagenet"], "unknown task 'imagenet'"),
    ("train-unknown-method", ["train", "--method", "qlora"], "unknown method"),
    ("train-unknown-target", ["train", "--targets", "q,attn"], "unknown target 'attn'"),
    ("train-override-not-kv", ["train", "lr"], "override 'lr' is not key=value"),
    ("train-unknown-key", ["train", "nokey=1"], "unknown config key 'nokey'"),
    ("train-unknown-preset", ["train", "--config", "nosuch"], "unknown config preset 'nosuch'"),
    ("train-missing-data-dir", ["train", "--data-dir", "{tmp}/nodata", "--model", "{model}"], "RTE"),
    ("train-model-not-a-model", ["train", "--data-dir", "{data}", "--model", "{tmp}/nomodel"], "nomodel"),
    ("info-not-a-run", ["info", "{tmp}"], "is not a peftlab run directory"),
    ("info-missing-dir", ["info", "{tmp}/nonexistent"], "does not exist"),
    ("scores-no-runs", ["scores", "--out", "{tmp}/empty"], "no finished runs"),
    ("study-unknown-task", ["study", "--task", "imagenet"], "imagenet"),
    ("study-unknown-method", ["study", "--methods", "nope"], "unknown method 'nope'"),
    ("measure-missing-dir", ["measure", "{tmp}/none"], "does not exist"),
    ("measure-bad-importance", ["measure", "{tmp}", "--importance", "nope"], "--importance must be one of"),
    ("analyze-missing-dir", ["analyze", "{tmp}/none"], "does not exist"),
    ("compare-missing-dirs", ["compare", "{tmp}/a", "{tmp}/b"], "does not exist"),
    ("aggregate-unknown-task", ["aggregate", "--task", "imagenet", "--methods", "FFT", "--seeds", "1"],
     "unknown task 'imagenet'"),
    ("aggregate-seeds-word", ["aggregate", "--task", "RTE", "--methods", "FFT", "--seeds", "x"],
     "--seeds takes whole numbers"),
    ("compare-ranks-no-runs", ["compare-ranks", "--task", "RTE", "--ranks", "8", "--out", "{tmp}/o"], "missing"),
    ("demo-missing-data", ["demo", "--data-dir", "{tmp}/nodata", "--out", "{tmp}/o"], "nodata"),
]

def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_the_table_is_big_enough():
    assert len(BAD_INVOCATIONS) >= 40
    assert len({case for case, _, _ in BAD_INVOCATIONS}) == len(BAD_INVOCATIONS)
    commands = {argv[0] for _, argv, _ in BAD_INVOCATIONS if not argv[0].startswith("-")}
    assert {"train", "info", "tasks", "measure", "analyze", "compare", "aggregate", "compare-ranks", "study",
            "demo", "scores"} <= commands


@pytest.mark.parametrize("case, argv, needle", BAD_INVOCATIONS, ids=[c for c, _, _ in BAD_INVOCATIONS])
def test_bad_invocation(case, argv, needle, tmp_path, monkeypatch, capsys, tiny_dir, data_dir):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # default outputs/ would land here
    monkeypatch.setenv("PEFTLAB_DATA", str(data_dir))
    args = [a.format(tmp=work, data=data_dir, model=tiny_dir) for a in argv]
    before = _snapshot(work)
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    lines = err.splitlines()
    assert lines and lines[-1].startswith("error: ") and err.endswith("\n"), err
    assert sum(line.startswith("error:") for line in lines) == 1 and "Traceback" not in err
    if argv[0] not in ("demo", "study"):  # these two print their progress ("[1/2] train ...") first
        assert len(lines) == 1, err
    assert needle in lines[-1], err
    assert _snapshot(work) == before  # nothing written, so nothing that looks complete


def test_device_cuda_without_cuda_is_an_error(tmp_path, monkeypatch, capsys, tiny_dir, data_dir):
    import torch

    if torch.cuda.is_available():  # pragma: no cover - this machine has no GPU
        pytest.skip("CUDA is available here")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--model", str(tiny_dir), "--data-dir", str(data_dir), "device=cuda"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith("error: device=cuda was asked for but CUDA is not available") and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_bare_peftlab_prints_help_and_exits_0(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    out = capsys.readouterr()
    assert exc.value.code == 0
    assert "Usage: peftlab" in out.out and "train" in out.out and out.err == ""


def test_ctrl_c_prints_the_interrupted_line(monkeypatch, capsys, tmp_path):
    import peftlab.train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(peftlab.train, "train_run", interrupted)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 130 and err == INTERRUPTED + "\n"
    assert err.startswith("interrupted: ")


def test_os_error_is_one_line(monkeypatch, capsys, tmp_path):
    import errno

    import peftlab.train

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(peftlab.train, "train_run", disk_full)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: cannot access '{tmp_path / 'x'}': No space left on device")


@pytest.mark.parametrize("argv, code, stream, needle", [
    (["train", "--seed", "abc"], 2, "stderr", "error: Invalid value for '--seed'"),
    (["nosuch"], 2, "stderr", "error: No such command 'nosuch'"),
    ([], 0, "stdout", "Usage: peftlab"),
])
def test_real_process(argv, code, stream, needle, tmp_path):
    """The same through a real `python -m peftlab` process: exit status, stream, no traceback."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "peftlab", *argv], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == code, result.stderr
    text = getattr(result, stream)
    assert needle in text and "Traceback" not in result.stderr
    if code:
        assert result.stderr.count("\n") == 1 and result.stdout == ""
    assert not list(tmp_path.iterdir())
