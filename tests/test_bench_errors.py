"""Every bad input of issue 10's "Done means" — unknown method, bottleneck ≤ 0, empty rank grid, unsupported
flag — ends in one line `error: ...` and exit code 2, in `peftlab train`, `peftlab bench` and the
seed-compatible scripts/comp7404_train.py (no run is started, nothing is written)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from peftlab.cli import main

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "comp7404_train.py"


@pytest.mark.parametrize("args, message", [
    (["train", "--method", "houlsby"], "unknown method 'houlsby'"),
    (["bench", "--methods", "lora,nope"], "unknown method 'nope'"),
    (["train", "--method", "adapter", "adapter_bottleneck=0"], "adapter_bottleneck must be a positive integer, got 0"),
    (["train", "--method", "adapter", "adapter_bottleneck=-3"], "adapter_bottleneck must be a positive integer"),
    (["bench", "--methods", "adapter", "--ranks", "-2"], "must be positive integers, got -2"),
    (["bench", "--methods", "adapter", "--ranks", ","], "the rank grid is empty but adapter need one"),
    (["bench", "--methods", "fft,dora", "--ranks", ""], "the rank grid is empty but dora need one"),
    (["bench", "--methods", ","], "no methods given"),
    (["bench", "--bogus"], "No such option: --bogus"),
    (["bench", "--adapter-bottleneck", "8"], "No such option: --adapter-bottleneck"),
    (["train", "--lora_rank", "8"], "No such option: --lora_rank"),
])
def test_peftlab_bad_input_is_one_line(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*args, "--out", str(tmp_path)] if "--bogus" not in args else args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("args, message", [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--method", "adapter", "--adapter_bottleneck", "0"], "adapter_bottleneck must be a positive integer"),
    (["--compare_ranks", "-1"], "--compare_ranks ranks must be positive integers, got -1"),
    (["--lora_rank", "8", "--use_fp16"], "unsupported flag(s) --use_fp16"),
])
def test_comp7404_bad_input_is_one_line(args, message, tmp_path, capsys):
    """In-process (tests/test_comp7404.py runs the script once from the shell too)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("comp7404_train", SCRIPT)
    module = sys.modules.setdefault("comp7404_train", importlib.util.module_from_spec(spec))
    if not hasattr(module, "main"):
        spec.loader.exec_module(module)
    assert module.main([*args, "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and not (tmp_path / "out").exists()
