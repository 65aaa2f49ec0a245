"""Issue 7 "trustworthy numbers", analysis side: exact vs Taylor importance kept apart, permutation chance
levels, paired comparison of correlations, significance of I, SYNTHETIC fixtures, the report's first screen.

Runs are SYNTHETIC fixtures from tests/fixtures_runs.py unless built by hand here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from fixtures_runs import make_fixture_run  # tests/ is on sys.path
import peftlab
from peftlab.analysis import stats as st
from peftlab.analysis.analyze import analyze_run
from peftlab.analysis.cases import find_cases
from peftlab.analysis.compare import compare_runs
from peftlab.analysis.report import study_report
from peftlab.analysis.tables import load_heads
from peftlab.io import read_jsonl, write_jsonl_atomic

SRC = Path(peftlab.__file__).resolve().parent  # the package under test
DPI = 30


def read_stats(run: Path) -> dict:
    return json.loads((run / "analysis/stats.json").read_text())


# --- 1. Taylor never passes as exact importance ---------------------------------------------------

def test_legacy_taylor_only_rows_go_to_taylor_columns_not_I(tmp_path):
    # the old measure code wrote Taylor-only rows with I = taylor, impl = null, loss_ablate = null
    run = make_fixture_run(tmp_path, "fft", 1, None, legacy=True, taylor_only=["post"])
    legacy_rows = read_jsonl(run / "importance_post.jsonl")
    heads = load_heads(run).heads
    assert heads["I_post"].isna().all() and heads["I_post_se"].isna().all()
    assert heads["taylor_post"].tolist() == pytest.approx([r["I"] for r in legacy_rows])
    assert heads["I_pre"].notna().all()  # pre was exact
    analyze_run(run, n_resamples=100, figures=False)
    stats = read_stats(run)
    assert "I_post~U" not in stats["spearman"] and "taylor_post~U" in stats["spearman"]
    assert stats["spearman"]["taylor_post~U"]["x"] == "taylor_post"
    assert "I_pre~I_post" not in stats["spearman"] and "taylor_pre~taylor_post" in stats["spearman"]
    assert stats["importance_columns"] == {"pre": "I_pre", "post": "taylor_post"}
    assert stats["significance"]["I_post"]["measured"] is False
    assert pd.read_csv(run / "analysis/heads.csv")["I_post"].isna().all()


def test_new_format_taylor_only_pre_is_labelled_taylor_everywhere(tmp_path):
    run = make_fixture_run(tmp_path, "lora", 1, 8, taylor_only=["pre"])
    assert all(r["I"] is None for r in read_jsonl(run / "importance_pre.jsonl"))
    out = analyze_run(run, n_resamples=100, dpi=DPI)
    stats, cases = read_stats(run), json.loads((out / "cases.json").read_text())
    assert not any(key.startswith("I_pre") for key in stats["spearman"])
    assert {"taylor_pre~U", "taylor_pre~G", "taylor_pre~taylor_post"} <= set(stats["spearman"])
    assert cases["importance"] == "taylor_pre" and "taylor_pre >=" in cases["important_static"]["rule"]
    assert list(stats["topk"]["pairs"]) == ["taylor_pre~U", "taylor_pre~Urel", "taylor_pre~G"]
    assert any("exact I_pre not measured" in note for note in stats["notes"])
    heads = pd.read_csv(out / "heads.csv")
    assert heads["I_pre"].isna().all() and heads["taylor_pre"].notna().all()


def test_compare_never_pairs_exact_with_taylor(tmp_path):
    exact = make_fixture_run(tmp_path, "fft", 1, None)
    taylor = make_fixture_run(tmp_path, "lora", 1, 8, taylor_only=["post"])
    for run in (exact, taylor):
        analyze_run(run, n_resamples=100, figures=False)
    metrics = json.loads((compare_runs(exact, taylor, out=tmp_path, dpi=DPI) / "compare_metrics.json").read_text())
    assert "I_post~U" not in metrics["spearman"] and "taylor_post~U" not in metrics["spearman"]
    assert "only like is compared with like" in metrics["skipped"]["I_post~U"]
    assert "I_pre~U" in metrics["spearman"]  # both exact on θ0
    for entry in metrics["spearman"].values():
        assert entry["a"]["x"] == entry["b"]["x"] and entry["a"]["y"] == entry["b"]["y"]


def test_taylor_agreement_signed_and_absolute(tmp_path):
    run = make_fixture_run(tmp_path, "fft", 1, None)
    analyze_run(run, n_resamples=200, figures=False)
    agreement = read_stats(run)["taylor_vs_exact"]["pre"]
    rows = read_jsonl(run / "importance_pre.jsonl")
    signed = sps.spearmanr([-r["dL_dgate"] for r in rows], [r["I"] for r in rows]).statistic
    absolute = sps.spearmanr([abs(r["dL_dgate"]) for r in rows], [abs(r["I"]) for r in rows]).statistic
    assert agreement["-dL_dgate~I"]["rho"] == pytest.approx(signed)
    assert agreement["|dL_dgate|~|I|"]["rho"] == pytest.approx(absolute)
    assert agreement["-dL_dgate~I"]["ci_low"] <= signed <= agreement["-dL_dgate~I"]["ci_high"]
    # older rows have no signed derivative: the signed ρ says "not measured", |·| uses the taylor column
    old = make_fixture_run(tmp_path / "old", "fft", 1, None, legacy=True)
    analyze_run(old, n_resamples=200, figures=False)
    old_agreement = read_stats(old)["taylor_vs_exact"]["pre"]
    assert old_agreement["-dL_dgate~I"]["rho"] is None and "not measured" in old_agreement["-dL_dgate~I"]["why"]
    assert old_agreement["|dL_dgate|~|I|"]["rho"] is not None


def test_old_run_dirs_still_analyse_with_empty_new_columns(tmp_path):
    run = make_fixture_run(tmp_path, "fft", 1, None, legacy=True)
    out = analyze_run(run, n_resamples=100, dpi=DPI)
    heads = pd.read_csv(out / "heads.csv")
    assert heads["I_pre_se"].isna().all() and heads["G_se"].isna().all() and heads["I_pre"].notna().all()
    stats = read_stats(run)
    assert stats["significance"]["I_pre"] == {"measured": False,
                                              "why": "no per-head standard error (I_se) in the measurement file"}
    assert stats["plasticity_classifier"] is None and stats["probe"]["measured"] is False
    assert any("fig_importance_ci.png not drawn" in note for note in stats["notes"])


# --- 2. permutation chance levels ------------------------------------------------------------------

def test_or_rule_chance_is_the_permutation_value_not_the_analytic_4_5():
    n = 72
    rng = np.random.default_rng(0)
    position = np.arange(n)
    # top quarter (18 heads) of U = heads 0..17, of G = heads 14..31: |union| = 32, overlap 4
    u = np.where(position < 18, 10.0 + position, rng.uniform(0, 1, n))
    g = np.where((position >= 14) & (position < 32), 10.0 + position, rng.uniform(0, 1, n))
    heads = pd.DataFrame({"layer": position // 12, "head": position % 12, "I_pre": rng.permutation(n) / n,
                          "U": u, "G": g})
    cases = find_cases(heads, n_permutations=10000, seed=3)
    chance = cases["plastic_unimportant"]["chance"]
    # 18 heads have I_pre ≤ Q(0.25); each falls in the 32-head union with probability 32/72 → 18·32/72 = 8.0
    assert chance["expected"] == pytest.approx(8.0, abs=0.1)
    assert chance["ci_low"] < 8 < chance["ci_high"]
    assert cases["important_static"]["chance"]["expected"] == pytest.approx(18 * 18 / 72, abs=0.1)  # single rule
    assert "expected_by_chance" not in cases
    assert (chance["n_permutations"], chance["seed"]) == (10000, 3)
    # p = (1 + #{null ≥ observed}) / (B + 1), from the same permutations
    perms = st.permutation_indices(n, 10000, 3)
    low_i = heads["I_pre"].to_numpy() <= np.quantile(heads["I_pre"], 0.25)
    side = (u >= np.quantile(u, 0.75)) | (g >= np.quantile(g, 0.75))
    null = (low_i[perms] & side).sum(axis=1)
    observed = cases["plastic_unimportant"]["count"]
    assert chance["p"] == pytest.approx((1 + (null >= observed).sum()) / 10001)
    # with U and G independent the OR rule's chance is ≈ 7.9 on 72 heads (18 · 31.5 / 72)
    means = []
    for seed in range(20):
        r = np.random.default_rng(100 + seed)
        frame = pd.DataFrame({"layer": position // 12, "head": position % 12, "I_pre": r.normal(size=n),
                              "U": r.normal(size=n), "G": r.normal(size=n)})
        means.append(find_cases(frame, n_permutations=1000, seed=seed)["plastic_unimportant"]["chance"]["expected"])
    assert np.mean(means) == pytest.approx(7.9, abs=0.3)


def test_permutation_summary_and_topk_null_by_hand():
    summary = st.permutation_summary(3, np.array([0, 1, 3, 4, 2, 0, 3, 1, 0]), seed=5)
    assert summary["p"] == pytest.approx((1 + 3) / 10) and summary["expected"] == pytest.approx(14 / 9)
    x, y = np.array([5.0, 4, 3, 2, 1]), np.array([1.0, 2, 3, 4, 5])  # top-2: x {0, 1}, y {3, 4}
    perms = np.array([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [3, 0, 1, 4, 2]])
    # shuffled x rows: [5,4,3,2,1] → top {0,1}: 0 overlap; [1,2,3,4,5] → {3,4}: 2; [2,5,4,1,3] → {1,2}: 0
    assert st.topk_null(x, y, 2, perms).tolist() == [0, 2, 0]
    with pytest.raises(Exception, match="too few for a chance level"):
        st.check_permutations(999)


def test_chance_levels_reach_cases_stats_and_the_compare_summary(tmp_path):
    fft, lora = make_fixture_run(tmp_path, "fft", 1, None), make_fixture_run(tmp_path, "lora", 1, 8)
    out = analyze_run(fft, n_resamples=100, figures=False, n_permutations=2000, seed=4)
    stats, cases = read_stats(fft), json.loads((out / "cases.json").read_text())
    assert stats["permutation"] == {**stats["permutation"], "n_permutations": 2000, "seed": 4}
    assert stats["counter_examples"]["chance"]["plastic_unimportant"] == cases["plastic_unimportant"]["chance"]
    assert stats["topk"]["pairs"]["I_pre~G"]["chance"]["n_permutations"] == 2000
    analyze_run(lora, n_resamples=100, figures=False, n_permutations=2000, seed=4)
    summary = (compare_runs(fft, lora, out=tmp_path, dpi=DPI) / "compare_summary.txt").read_text()
    expected = cases["plastic_unimportant"]["chance"]["expected"]
    assert f"{expected:.1f} [" in summary and "chance = permutation mean" in summary


# --- 3. paired comparison of two correlations ----------------------------------------------------

def _set_update(run: Path, values: np.ndarray) -> None:
    rows = read_jsonl(run / "update.jsonl")
    heads = [r for r in rows if r["kind"] == "head"]
    for row, value in zip(heads, values):
        row["U"] = float(value)
    write_jsonl_atomic(run / "update.jsonl", rows)


def test_compare_uses_the_paired_difference_not_ci_overlap(tmp_path):
    fft, lora = make_fixture_run(tmp_path, "fft", 1, None), make_fixture_run(tmp_path, "lora", 1, 8)
    i_pre = np.array([r["I"] for r in read_jsonl(fft / "importance_pre.jsonl")])  # shared θ0
    n = len(i_pre)
    z = sps.norm.ppf(sps.rankdata(i_pre) / (n + 1))  # normal scores of I_pre (Spearman sees ranks only)
    base = z + 0.9 * np.random.default_rng(5).normal(size=n)
    _set_update(fft, np.exp(base))  # ρ_A ≈ 0.7
    _set_update(lora, np.exp(base - 0.3 * z))  # the same heads, a little less coupled: ρ_B ≈ 0.58
    for run in (fft, lora):
        analyze_run(run, figures=False)  # default 1000 bootstrap resamples; figures are not under test here
    metrics = json.loads((compare_runs(fft, lora, out=tmp_path, dpi=DPI) / "compare_metrics.json").read_text())
    entry = metrics["spearman"]["I_pre~U"]
    assert entry["cis_overlap"] is True  # the old rule would have said "not distinguishable"
    diff = entry["diff_b_minus_a"]
    assert diff["ci_high"] < 0 and diff["p"] < 0.01
    assert entry["distinguishable"] is True and entry["verdict"].startswith("higher in FFT (paired")
    assert diff["diff"] == pytest.approx(entry["b"]["rho"] - entry["a"]["rho"])
    # reference: the same bootstrap indices resample both runs' heads jointly
    idx = st.bootstrap_indices(n, 1000, 0)
    u_a, u_b = np.exp(base), np.exp(base - 0.3 * z)
    reps = st.spearman_rows(i_pre[idx], u_b[idx]) - st.spearman_rows(i_pre[idx], u_a[idx])
    assert diff["ci_low"] == pytest.approx(np.quantile(reps, 0.025)) and metrics["bootstrap"]["n_resamples"] == 1000
    summary = (tmp_path / "COMPARE/RTE/seed1/FFT_vs_LoRA_r8/compare_summary.txt").read_text()
    assert "higher in FFT (paired 95 % CI of ρ_B − ρ_A excludes 0" in summary


# --- 4. significance of importance ----------------------------------------------------------------

def test_significance_matches_t_test_and_benjamini_hochberg_by_hand():
    values = np.array([0.05, -0.04, 0.001, 0.0, 0.02, -0.0005, 0.3, np.nan])
    se = np.array([0.01, 0.01, 0.01, 0.01, 0.015, 0.01, 0.05, 0.01])
    out = st.significance(values, se, 100)
    t = values[:7] / se[:7]
    p = 2 * sps.t.sf(np.abs(t), 99)
    order = np.argsort(p)  # BH by hand: p_(i) · m / i, made monotone from the top
    adjusted = np.empty(7)
    adjusted[order] = np.minimum.accumulate((p[order] * 7 / np.arange(1, 8))[::-1])[::-1]
    significant = adjusted <= 0.05
    assert out["n_tested"] == 7
    assert out["n_positive"] == int((significant & (t > 0)).sum()) == 2  # 0.05 and 0.3 (0.02/0.015 is not)
    assert out["n_negative"] == int((significant & (t < 0)).sum()) == 1
    assert out["positive_positions"] == [0, 6] and out["negative_positions"] == [1]
    assert out["noise_level"] is False


def test_noise_level_importance_is_flagged_in_stats_and_report(tmp_path):
    noisy = make_fixture_run(tmp_path, "fft", 1, None, se_scale=1.0)
    analyze_run(noisy, n_resamples=100, dpi=DPI)
    stats = read_stats(noisy)
    sig = stats["significance"]
    assert sig["I_pre"]["noise_level"] is True and sig["I_pre"]["fraction_significant"] < 0.1
    assert sig["noise_level"] is True and st.NOISE_SENTENCE in sig["message"]
    assert st.NOISE_SENTENCE == "importance at noise level — conclusions about I are not supported on this run"
    assert any(st.NOISE_SENTENCE in note for note in stats["notes"])
    assert (noisy / "analysis/fig_importance_ci.png").is_file()
    clean = make_fixture_run(tmp_path / "clean", "fft", 1, None)
    analyze_run(clean, n_resamples=100, figures=False)
    assert read_stats(clean)["significance"]["noise_level"] is False
    assert read_stats(clean)["significance"]["G"]["median_relative_se"] == pytest.approx(0.1)
    html = study_report(tmp_path / "study", [noisy]).read_text()
    assert st.NOISE_SENTENCE in html


# --- 6. synthetic fixtures say so -----------------------------------------------------------------

def test_fixture_files_all_say_synthetic_and_src_writes_none(tmp_path):
    run = make_fixture_run(tmp_path, "lora", 1, 8)
    for path in run.iterdir():
        if path.suffix == ".json":
            assert json.loads(path.read_text())["synthetic"] is True, path.name
        elif path.suffix == ".jsonl":
            assert all(row["synthetic"] is True for row in read_jsonl(path)), path.name
    assert not (SRC / "analysis/fixtures.py").exists()
    for source in SRC.rglob("*.py"):
        assert "make_fixture_run" not in source.read_text(encoding="utf-8"), source


# --- 7. the report's first screen ------------------------------------------------------------------

def test_report_first_screen_states_score_probe_chance_significance(tmp_path):
    weak = make_fixture_run(tmp_path, "fft", 1, None, probe_better=False)
    lora = make_fixture_run(tmp_path, "lora", 1, 8)
    for run in (weak, lora):
        analyze_run(run, n_resamples=100, figures=False)  # the first screen is tables only
    html = study_report(tmp_path / "study", [weak, lora]).read_text()
    assert "<title>SYNTHETIC" in html and "<h1>SYNTHETIC" in html
    first = html.index("<h2>Read this first</h2>")
    assert first < html.index("<h2>Runs</h2>")
    screen = html[first:html.index("<h2>Runs</h2>")]
    stats = read_stats(weak)
    assert f"{stats['run']['score']:.4f}" in screen
    assert "accuracy 0.490 vs chance 0.510" in screen and "NOT better than chance" in screen
    assert "the θ0 probe does not beat chance" in screen
    sig = stats["significance"]["I_pre"]
    assert f"{sig['n_positive']} &gt; 0, {sig['n_negative']} &lt; 0 of 72" in screen
    chance = stats["counter_examples"]["chance"]["plastic_unimportant"]
    assert f"chance {chance['expected']:.1f} [" in screen
    assert "plasticity classifier" in screen and "<td>init</td>" in screen
    assert "accuracy 0.580 vs chance 0.510" in screen  # the LoRA run's probe beats chance


def test_an_analysis_written_by_an_older_peftlab_is_redone_not_reused(tmp_path):
    from peftlab.analysis.analyze import STATS_FORMAT, load_analysis

    run = make_fixture_run(tmp_path, "fft", 1, None)
    out = analyze_run(run, n_resamples=100, figures=False)
    old = read_stats(run)
    del old["format"], old["significance"]  # what an older analysis left behind (newer than every input)
    (out / "stats.json").write_text(json.dumps(old))
    _, stats, _ = load_analysis(run, n_resamples=100, figures=False)
    assert stats["format"] == STATS_FORMAT and "significance" in stats
