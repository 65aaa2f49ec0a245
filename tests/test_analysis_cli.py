"""compare / aggregate / compare-ranks / report / CLI errors / seed scripts, on synthetic fixture runs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from peftlab.analysis.aggregate import aggregate
from peftlab.analysis.analyze import analyze_run
from peftlab.analysis.compare import compare_runs, verdict
from fixtures_runs import make_fixture_run  # tests/ is on sys.path
from peftlab.analysis.ranks import compare_ranks
from peftlab.analysis.report import Pre, Section, study_report, write_report
from peftlab.cli import main
from peftlab.errors import PeftlabError
from test_analysis import DPI, assert_png_readable  # tests/ is on sys.path (pytest prepend import mode)

REPO = Path(__file__).resolve().parents[1]
FAST = {"n_resamples": 200}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    """FFT and LoRA_r8 for seeds 1–3, LoRA r4/r16 for seed 1; analysed without figures (speed)."""
    out = tmp_path_factory.mktemp("outputs")
    runs = [("fft", s, None) for s in (1, 2, 3)] + [("lora", s, 8) for s in (1, 2, 3)] + \
           [("lora", 1, 4), ("lora", 1, 16)]
    for method, seed, rank in runs:
        analyze_run(make_fixture_run(out, method, seed, rank), figures=False, **FAST)
    return out


@pytest.fixture(scope="module")
def compared(outputs) -> Path:
    return compare_runs(outputs / "FFT/RTE/seed1", outputs / "LoRA/RTE/seed1_r8", out=outputs, dpi=DPI)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


# --- compare ---------------------------------------------------------------------------------

def test_compare_writes_every_file_and_summary_sections(compared, outputs):
    assert compared == outputs / "COMPARE/RTE/seed1/FFT_vs_LoRA_r8"
    for name in ("compare_I_vs_U.png", "compare_stats.png", "compare_update_dist.png", "compare_headwise.png"):
        assert_png_readable(compared / name)
    summary = (compared / "compare_summary.txt").read_text()
    for section in ("== Spearman correlations", "== Top-K overlap", "== Counter-examples", "== Main findings"):
        assert section in summary
    metrics = json.loads((compared / "compare_metrics.json").read_text())
    assert metrics["a"]["label"] == "FFT" and metrics["b"]["label"] == "LoRA_r8"
    # the verdict follows the paired-difference rule, pair by pair
    for key, entry in metrics["spearman"].items():
        diff = entry["diff_b_minus_a"]
        contains_0 = diff["ci_low"] <= 0 <= diff["ci_high"]
        assert entry["distinguishable"] is (not contains_0)
        assert ("not distinguishable" in entry["verdict"]) == contains_0
    # θ0 is shared (same seed): I_pre~G is identical → not distinguishable; FFT's U follows I_pre, LoRA's does not
    assert metrics["theta0_shared"] is True
    assert metrics["spearman"]["I_pre~G"]["diff_b_minus_a"]["diff"] == 0.0
    assert metrics["spearman"]["I_pre~U"]["verdict"].startswith("higher in FFT (paired 95 % CI of ρ_B − ρ_A excludes 0")
    assert "I_pre~U: FFT ρ = " in summary and "not distinguishable" in summary


def test_verdict_rule():
    assert verdict({"diff": 0.1, "ci_low": -0.02, "ci_high": 0.2, "p": 0.2}, "A", "B") == \
        (False, "not distinguishable (paired 95 % CI of ρ_B − ρ_A contains 0)")
    assert verdict({"diff": 0.1, "ci_low": 0.02, "ci_high": 0.2, "p": 0.01}, "A", "B") == \
        (True, "higher in B (paired 95 % CI of ρ_B − ρ_A excludes 0, p = 0.01)")
    assert verdict({"diff": -0.3, "ci_low": -0.5, "ci_high": -0.1, "p": 0.002}, "A", "B")[1].startswith("higher in A")
    assert verdict({"diff": None, "ci_low": None, "ci_high": None}, "A", "B")[0] is None


def test_compare_rejects_bad_inputs(outputs, tmp_path, capsys):
    fft = outputs / "FFT/RTE/seed1"
    mrpc = make_fixture_run(tmp_path, "lora", 1, 8, task="MRPC")
    with pytest.raises(PeftlabError, match="different tasks"):
        compare_runs(fft, mrpc, out=tmp_path)
    small = make_fixture_run(tmp_path / "small", "lora", 1, 8, n_layers=2, n_heads=4)
    with pytest.raises(PeftlabError, match="different head counts: 6×12 vs 2×4"):
        compare_runs(fft, small, out=tmp_path, **FAST, dpi=DPI)
    other_model = make_fixture_run(tmp_path / "model", "lora", 1, 8, model="bert-base-uncased")
    with pytest.raises(PeftlabError, match="different models"):
        compare_runs(fft, other_model, out=tmp_path, **FAST, dpi=DPI)
    with pytest.raises(PeftlabError, match="same run"):
        compare_runs(fft, fft, out=tmp_path)
    code, _, err = run_cli(["compare", str(fft), str(mrpc), "--out", str(tmp_path)], capsys)
    assert code == 2 and err.count("\n") == 1 and "different tasks" in err


# --- aggregate / compare-ranks -------------------------------------------------------------------

@pytest.mark.parametrize("seed_args", [["1", "2", "3"], ["1,2,3"]])
def test_aggregate_cli_multi_value_options(outputs, capsys, seed_args):
    code, out, err = run_cli(["aggregate", "--task", "rte", "--methods", "FFT", "LoRA_r8", "--seeds", *seed_args,
                              "--out", str(outputs), "--dpi", str(DPI)], capsys)
    assert code == 0, err
    out_dir = Path(out.strip())
    assert out_dir == outputs / "MULTI_SEED/RTE"
    result = json.loads((out_dir / "aggregate.json").read_text())
    assert result["seeds"] == [1, 2, 3] and result["methods"] == ["FFT", "LoRA_r8"]
    # dev score: mean ± t_{0.975,2}·s/√3 of the three final_metrics scores
    scores = [json.loads((outputs / f"FFT/RTE/seed{s}/final_metrics.json").read_text())["score"] for s in (1, 2, 3)]
    dev = result["dev"]["FFT"]
    half = sps.t.ppf(0.975, 2) * np.std(scores, ddof=1) / np.sqrt(3)
    assert dev["mean"] == pytest.approx(np.mean(scores)) and dev["ci_high"] == pytest.approx(np.mean(scores) + half)
    rho = result["quantities"]["LoRA_r8"]["rho:I_pre~U"]
    per_seed = [json.loads((outputs / f"LoRA/RTE/seed{s}_r8/analysis/stats.json").read_text())
                ["spearman"]["I_pre~U"]["rho"] for s in (1, 2, 3)]
    assert rho["mean"] == pytest.approx(np.mean(per_seed)) and rho["std"] == pytest.approx(np.std(per_seed, ddof=1))
    stability = result["stability"]["FFT"]["I_pre"]
    assert len(stability["pairs"]) == 3 and stability["mean"] > 0.5  # fixture importance is a body property
    assert "t_{0.975" in result["interval"]
    csv = (out_dir / "aggregate.csv").read_text()
    assert "FFT,rho:I_pre~U,3," in csv and "LoRA_r8,stability:U," in csv
    assert_png_readable(out_dir / "fig_aggregate.png")


def test_aggregate_missing_run_names_the_train_command(outputs):
    with pytest.raises(PeftlabError, match=r"peftlab train --task RTE --method lora --seed 7 --rank 8"):
        aggregate("RTE", ["LoRA_r8"], [1, 7], out=outputs)


def test_compare_ranks(outputs, capsys):
    code, out, err = run_cli(["compare-ranks", "--task", "RTE", "--seed", "1", "--ranks", "16", "4", "8",
                              "--out", str(outputs), "--dpi", str(DPI)], capsys)
    assert code == 0, err
    out_dir = Path(out.strip())
    assert out_dir == outputs / "RANK_COMPARISON/RTE/seed1"
    result = json.loads((out_dir / "rank_comparison.json").read_text())
    assert [r["rank"] for r in result["rows"]] == [4, 8, 16]
    params = [r["trainable_params"] for r in result["rows"]]
    assert params == sorted(params) and result["reference"]["label"] == "FFT"
    final8 = json.loads((outputs / "LoRA/RTE/seed1_r8/final_metrics.json").read_text())
    row8 = result["rows"][1]
    assert (row8["score"], row8["train_s"]) == (final8["score"], final8["timing"]["train_s"])
    assert row8["ci_low:I_pre~U"] <= row8["rho:I_pre~U"] <= row8["ci_high:I_pre~U"]
    assert (out_dir / "rank_comparison.csv").read_text().splitlines()[1].startswith("4,LoRA_r4,")
    assert_png_readable(out_dir / "fig_rank_comparison.png")
    with pytest.raises(PeftlabError, match="--rank 64"):
        compare_ranks("RTE", 1, [8, 64], out=outputs)


# --- report ----------------------------------------------------------------------------------------

def test_write_report_is_self_contained_and_escapes(tmp_path, compared):
    path = write_report(tmp_path / "r.html", [Section("A <b>", ["x < y", Pre("ρ = 0.1"),
                                                                compared / "compare_stats.png"])])
    text = path.read_text()
    assert "A &lt;b&gt;" in text and "x &lt; y" in text and "data:image/png;base64," in text


def test_study_report_is_self_contained(outputs, compared, tmp_path):
    runs = [outputs / "FFT/RTE/seed1", outputs / "LoRA/RTE/seed1_r8"]
    agg = aggregate("RTE", ["FFT", "LoRA_r8"], [1, 2, 3], out=outputs, dpi=DPI)
    ranks = compare_ranks("RTE", 1, [4, 8, 16], out=outputs, dpi=DPI)
    report = study_report(tmp_path / "study", runs, [compared], aggregate_dir=agg, ranks_dir=ranks)
    html = report.read_text()
    assert report == tmp_path / "study/report.html"
    assert "data:image/png;base64," in html
    assert 'src="http' not in html and "<link" not in html and "<script" not in html
    for text in ("θ0", "probe", "Taylor vs exact", "Counter-example heads", "== Main findings ==",
                 "Across seeds", "Across LoRA ranks", "accuracy"):
        assert text in html, text
    cases = json.loads((runs[1] / "analysis/cases.json").read_text())
    for head in cases["plastic_unimportant"]["heads"]:
        assert head["label"] in html


# --- CLI errors --------------------------------------------------------------------------------------

def test_analyze_cli_missing_input_names_the_command(tmp_path, capsys):
    run = make_fixture_run(tmp_path, "lora", 1, 8, n_layers=2, n_heads=3, skip=["importance_pre"])
    code, _, err = run_cli(["analyze", str(run)], capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"peftlab measure {run} --steps importance_pre" in err
    code, _, err = run_cli(["analyze", str(tmp_path / "nope")], capsys)
    assert code == 2 and "does not exist" in err
    code, _, err = run_cli(["aggregate", "--task", "RTE", "--methods", "FFT", "--seeds", "x"], capsys)
    assert code == 2 and "--seeds takes whole numbers" in err


# --- seed scripts ------------------------------------------------------------------------------------

@pytest.fixture
def fake_peftlab(tmp_path) -> dict:
    """PATH with a `peftlab` that prints its arguments: checks what the scripts would run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "peftlab"
    fake.write_text("#!/usr/bin/env bash\necho \"peftlab $*\"\n")
    fake.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def script(name: str, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / name), *args], env=env, capture_output=True, text=True,
                          timeout=30)


def test_plot_scripts_map_to_analyze(fake_peftlab):
    env = {**fake_peftlab, "PEFTLAB_OUT": "out"}
    assert script("make_plots.sh", "1", "RTE", env=env).stdout == "peftlab analyze out/FFT/RTE/seed1\n"
    assert script("make_plots.sh", "2", "RTE", "LoRA_r16", "--dpi", "50", env=env).stdout == \
        "peftlab analyze out/LoRA/RTE/seed2_r16 --dpi 50\n"
    assert script("make_plots_lora.sh", "1", "MRPC", "8", env=env).stdout == "peftlab analyze out/LoRA/MRPC/seed1_r8\n"
    bad = script("make_plots.sh", "1", "RTE", "adapter", env=env)
    assert bad.returncode == 2 and "unknown METHOD" in bad.stderr


def test_compare_script_checks_prerequisites(outputs, tmp_path, fake_peftlab):
    env = {**fake_peftlab, "PEFTLAB_OUT": str(outputs)}
    ok = script("compare_fft_lora.sh", "1", "RTE", "8", env=env)
    assert ok.returncode == 0 and ok.stdout == (f"peftlab compare {outputs}/FFT/RTE/seed1 "
                                                f"{outputs}/LoRA/RTE/seed1_r8 --out {outputs}\n")
    out = tmp_path / "o"
    make_fixture_run(out, "fft", 1, None, n_layers=2, n_heads=3, skip=["update", "importance_post"])
    missing = script("compare_fft_lora.sh", "1", "RTE", "8", env={**fake_peftlab, "PEFTLAB_OUT": str(out)})
    assert missing.returncode == 2 and missing.stdout == ""
    assert f"peftlab measure {out}/FFT/RTE/seed1 --steps update" in missing.stderr
    assert f"peftlab measure {out}/FFT/RTE/seed1 --steps importance_post" in missing.stderr
    assert f"peftlab train --task RTE --method lora --seed 1 --rank 8 --out {out}" in missing.stderr


def test_run_meta_comes_from_run_files_not_directory_names(tmp_path):
    """An FFT run copied into a LoRA-looking directory is still FFT, seed 1, without a rank."""
    import shutil

    from peftlab.analysis.tables import read_run_meta

    src = make_fixture_run(tmp_path / "a", "fft", 1, None)
    dst = tmp_path / "b" / "LoRA" / "SST-2" / "seed9_r64"
    shutil.copytree(src, dst)
    meta = read_run_meta(dst)
    assert (meta.method, meta.task, meta.seed, meta.rank, meta.dir_name) == ("fft", "RTE", 1, None, "FFT")


def test_compare_never_writes_outside_out(tmp_path):
    """A crafted task name in run_config.json is data, not a path: compare refuses it."""
    out = tmp_path / "out"
    run_a = make_fixture_run(out, "fft", 1, None)
    run_b = make_fixture_run(out, "lora", 1, 8)
    for run in (run_a, run_b):
        info = json.loads((run / "run_config.json").read_text())
        info["task"] = "../../../escaped"
        (run / "run_config.json").write_text(json.dumps(info))
    with pytest.raises(PeftlabError):
        compare_runs(run_a, run_b, out=out, dpi=DPI)
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()
