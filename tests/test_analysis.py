"""Analysis math on hand-computed examples, the heads table loader, and every per-run figure.

SYNTHETIC fixture runs come from `tests/fixtures_runs.make_fixture_run` (seeded, contract-shaped files).
Figures are drawn at low dpi to keep the file fast.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from peftlab.analysis import stats as st
from peftlab.analysis.analyze import analyze_run
from peftlab.analysis.cases import find_cases
from peftlab.analysis.figures import FIGURE_FILES
from fixtures_runs import make_fixture_run  # tests/ is on sys.path
from peftlab.analysis.tables import load_heads
from peftlab.errors import PeftlabError

DPI = 30


def assert_png_readable(path) -> None:
    """A real, non-blank PNG: imread works, it is 2-D RGB(A), and it is not one flat colour."""
    import matplotlib.image as mpimg

    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4) and image.shape[0] > 50 and image.shape[1] > 50
    rgb = image[..., :3]
    assert rgb.std() > 0.02, f"{path.name} looks blank"
    assert (rgb.min(axis=2) < 0.9).mean() > 0.01, f"{path.name} is almost all white"


# --- Spearman, bootstrap -------------------------------------------------------------------------

def test_spearman_matches_hand_computation_with_ties():
    # ranks of y with the tie 7, 7 → [1, 2, 3.5, 5, 3.5]; centred rank products 4+1+0+2+1 = 8,
    # Σdx² = 10, Σdy² = 9.5  →  ρ = 8 / √95
    x, y = [1, 2, 3, 4, 5], [5, 6, 7, 8, 7]
    rho, p = st.spearman(x, y)
    assert rho == pytest.approx(8 / np.sqrt(95), abs=1e-12)
    assert st.spearman_rows(np.array([x], float), np.array([y], float))[0] == pytest.approx(8 / np.sqrt(95))
    # no ties: ρ = 1 − 6Σd²/(n(n²−1)) with d = [1, −1, 1, −1, 0] → 1 − 24/120 = 0.8
    assert st.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])[0] == pytest.approx(0.8)
    assert 0 < p < 1


def test_spearman_rows_equals_scipy_per_row_and_nan_for_constant_rows():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20, 15))
    y = x + rng.normal(size=(20, 15))
    y[0] = 1.0  # a constant row: ρ undefined
    rows = st.spearman_rows(x, y)
    assert np.isnan(rows[0])
    for i in range(1, 20):
        assert rows[i] == pytest.approx(sps.spearmanr(x[i], y[i]).statistic, abs=1e-12)


def test_bootstrap_ci_is_reproducible_contains_rho_and_is_the_percentile_interval():
    rng = np.random.default_rng(1)
    x = rng.normal(size=72)
    y = 0.5 * x + rng.normal(size=72)
    a = st.spearman_with_ci(x, y, n_resamples=500, seed=7)
    b = st.spearman_with_ci(x, y, n_resamples=500, seed=7)
    c = st.spearman_with_ci(x, y, n_resamples=500, seed=8)
    assert a == b
    assert (a["ci_low"], a["ci_high"]) != (c["ci_low"], c["ci_high"])
    assert a["ci_low"] < a["rho"] < a["ci_high"]
    # reference path: resample by hand with the same indices, scipy ρ per resample, 2.5/97.5 percentiles
    idx = np.random.default_rng(7).integers(0, 72, size=(500, 72))
    reps = np.array([sps.spearmanr(x[i], y[i]).statistic for i in idx])
    assert a["ci_low"] == pytest.approx(np.quantile(reps, 0.025), abs=1e-12)
    assert a["ci_high"] == pytest.approx(np.quantile(reps, 0.975), abs=1e-12)
    assert a["n"] == 72 and a["n_degenerate"] == 0


def test_nan_pairs_are_dropped_and_paired_difference_of_identical_runs_is_zero():
    x = np.array([1.0, 2, 3, np.nan, 5, 6])
    y = np.array([2.0, 1, 4, 3, 6, 5])
    entry = st.spearman_with_ci(x, y, n_resamples=100)
    assert entry["n"] == 5 and entry["rho"] == pytest.approx(st.spearman(x[[0, 1, 2, 4, 5]], y[[0, 1, 2, 4, 5]])[0])
    diff = st.paired_difference(x, y, x, y, n_resamples=100)
    assert (diff["diff"], diff["ci_low"], diff["ci_high"], diff["p"], diff["n"]) == (0.0, 0.0, 0.0, 1.0, 5)


def test_t_interval_matches_formula():
    values = [0.6, 0.65, 0.7]
    out = st.t_interval(values)
    half = sps.t.ppf(0.975, 2) * np.std(values, ddof=1) / np.sqrt(3)
    assert out["mean"] == pytest.approx(0.65) and out["std"] == pytest.approx(0.05)
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((0.65 - half, 0.65 + half))
    assert st.t_interval([0.6])["ci_low"] is None


# --- top-K -----------------------------------------------------------------------------------

def test_topk_overlap_on_constructed_example():
    a = [10, 9, 8, 7, 6, 5, 4, 3]  # top-3 = positions {0, 1, 2}
    b = [9, 8, 0, 0, 0, 7, 0, 0]  # top-3 = positions {0, 1, 5}
    assert st.topk_overlap(a, b, 3) == 2
    assert st.topk_overlap(a, a, 3) == 3
    assert st.top_k_positions([1, 1, 1, 0], 2) == {0, 1}  # ties: (layer, head) order wins
    assert st.chance_overlap(3, 8) == pytest.approx(9 / 8)
    assert st.default_k(144) == 20 and st.default_k(72) == 10 and st.default_k(4) == 1
    assert st.overlap_pvalue(0, 3, 8) == pytest.approx(1.0)
    # P(overlap = 3) for k=3 of n=8 = 1 / C(8, 3)
    assert st.overlap_pvalue(3, 3, 8) == pytest.approx(1 / 56)


# --- counter-example cases --------------------------------------------------------------------

def test_case_thresholds_on_constructed_example():
    heads = pd.DataFrame({
        "layer": [0, 0, 0, 0, 1, 1, 1, 1], "head": [0, 1, 2, 3, 0, 1, 2, 3],
        "I_pre": [0, 1, 2, 3, 4, 5, 6, 7],
        "U": [8, 0, 1, 2, 3, 4, 0.5, 9],
        "G": [1, 20, 2, 3, 4, 5, 6, 7],
    })
    cases = find_cases(heads)
    t = cases["thresholds"]
    # numpy linear quantiles: I 0..7 → Q(.75) = 5.25, Q(.25) = 1.75; U sorted 0,.5,1,2,3,4,8,9 → 5.0, 0.875
    assert (t["I_pre"]["hi"], t["I_pre"]["lo"]) == pytest.approx((5.25, 1.75))
    assert (t["U"]["hi"], t["U"]["lo"]) == pytest.approx((5.0, 0.875))
    assert t["G"]["hi"] == pytest.approx(6.25)
    assert [h["label"] for h in cases["important_static"]["heads"]] == ["L1H2"]  # I=6, U=0.5
    plastic = cases["plastic_unimportant"]["heads"]
    assert [(h["label"], h["by"]) for h in plastic] == [("L0H0", ["U"]), ("L0H1", ["G"])]
    assert cases["important_static"]["count"] == 1 and cases["plastic_unimportant"]["count"] == 2
    assert cases["q_hi"] == 0.75 and cases["q_lo"] == 0.25
    # without G the plastic rule uses U only
    no_g = find_cases(heads.drop(columns="G"))
    assert [h["label"] for h in no_g["plastic_unimportant"]["heads"]] == ["L0H0"]
    with pytest.raises(PeftlabError, match="q_lo < q_hi"):
        find_cases(heads, q_hi=0.2, q_lo=0.5)


# --- heads table ------------------------------------------------------------------------------

def test_load_heads_columns_ranks_and_ffn_lines_ignored(tmp_path):
    run = make_fixture_run(tmp_path, "lora", 1, 8, n_layers=2, n_heads=3)
    table = load_heads(run)
    heads = table.heads
    value_cols = ["I_pre", "I_pre_se", "I_pre_ci_low", "I_pre_ci_high", "I_post", "I_post_se", "I_post_ci_low",
                  "I_post_ci_high", "G", "G_se", "F", "U", "Urel", "U_q", "U_k", "U_v", "U_o",
                  "dL_dgate_pre", "taylor_pre", "dL_dgate_post", "taylor_post"]
    ranked = ["I_pre", "I_post", "G", "F", "U", "Urel", "U_q", "U_k", "U_v", "U_o", "taylor_pre", "taylor_post"]
    assert list(heads.columns) == ["layer", "head", *value_cols, *[f"rank_{c}" for c in ranked]]
    assert table.n_examples == {"pre": 256, "post": 256, "G": 256} and table.plasticity_classifier == "init"
    assert len(heads) == 6 and (table.n_layers, table.n_heads) == (2, 3) and table.theta0 == "probe"
    assert heads.loc[heads["U"].idxmax(), "rank_U"] == 1 and heads.loc[heads["U"].idxmin(), "rank_U"] == 6
    rows = [json.loads(line) for line in (run / "update.jsonl").read_text().splitlines()]
    u = {(r["layer"], r["head"]): r["U"] for r in rows if r["kind"] == "head"}
    assert heads.set_index(["layer", "head"])["U"].to_dict() == u


def test_missing_required_file_names_the_measure_command(tmp_path):
    run = make_fixture_run(tmp_path, "fft", 1, None, n_layers=2, n_heads=3, skip=["update"])
    with pytest.raises(PeftlabError) as err:
        load_heads(run)
    assert f"peftlab measure {run} --steps update" in str(err.value) and "\n" not in str(err.value)
    run2 = make_fixture_run(tmp_path / "b", "fft", 1, None, n_layers=2, n_heads=3,
                            skip=["importance_pre", "eval_subset"])
    with pytest.raises(PeftlabError, match="--steps subset,importance_pre"):
        load_heads(run2)


def test_missing_optional_file_drops_columns_with_a_note(tmp_path):
    run = make_fixture_run(tmp_path, "fft", 1, None, n_layers=2, n_heads=3, skip=["importance_post"], taylor=False)
    table = load_heads(run)
    assert "I_post" not in table.heads and "taylor_pre" not in table.heads and "G" in table.heads
    assert any(f"peftlab measure {run} --steps importance_post" in note for note in table.notes)


def test_tables_listing_other_heads_are_rejected(tmp_path):
    run = make_fixture_run(tmp_path, "fft", 1, None, n_layers=2, n_heads=3)
    lines = (run / "gradfisher_pre.jsonl").read_text().splitlines()
    (run / "gradfisher_pre.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(PeftlabError, match="gradfisher_pre.jsonl' lists other heads"):
        load_heads(run)


# --- analyze + figures -------------------------------------------------------------------------

def test_analyze_writes_tables_stats_cases_and_readable_figures(tmp_path):
    run = make_fixture_run(tmp_path, "fft", 1, None)
    out = analyze_run(run, n_resamples=200, dpi=DPI)
    heads = pd.read_csv(out / "heads.csv")
    assert len(heads) == 72 and heads["rank_I_pre"].min() == 1
    stats = json.loads((out / "stats.json").read_text())
    assert list(stats["spearman"]) == [st.pair_key(x, y) for x, y in st.PAIRS]
    assert stats["topk"]["k"] == 10 and stats["topk"]["k_squared_over_n"] == pytest.approx(100 / 72)
    # the permutation mean of a top-K overlap is the hypergeometric mean K²/n (no ties here)
    chance = stats["topk"]["pairs"]["I_pre~U"]["chance"]
    assert chance["expected"] == pytest.approx(100 / 72, abs=0.05) and chance["n_permutations"] == 10000
    assert stats["bootstrap"] == {**stats["bootstrap"], "n_resamples": 200, "seed": 0, "method": "percentile"}
    entry = stats["spearman"]["I_pre~U"]
    assert entry["rho"] == pytest.approx(st.spearman(heads["I_pre"], heads["U"])[0])
    assert entry["rho"] > 0.2  # the fixture couples FFT's update to importance
    cases = json.loads((out / "cases.json").read_text())
    assert stats["counter_examples"]["important_static"] == cases["important_static"]["count"]
    assert stats["theta0"] == "probe" and stats["taylor_vs_exact_file"]["pre"]["spearman"] > 0.5
    assert stats["taylor_vs_exact"]["pre"]["|dL_dgate|~|I|"]["rho"] > 0.5
    assert sorted(stats["figures"]) == sorted(FIGURE_FILES)
    for name in FIGURE_FILES:
        assert_png_readable(out / name)


def test_figures_needing_unmeasured_columns_are_skipped_with_a_note(tmp_path):
    run = make_fixture_run(tmp_path, "lora", 1, 8, n_layers=2, n_heads=4, skip=["importance_post"])
    out = analyze_run(run, n_resamples=100, dpi=DPI)
    stats = json.loads((out / "stats.json").read_text())
    assert not (out / "fig_Ipre_vs_Ipost.png").exists()
    assert "I_pre~I_post" in stats["skipped"] and "I_pre~I_post" not in stats["spearman"]
    assert any("fig_Ipre_vs_Ipost.png not drawn" in n for n in stats["notes"])
    assert stats["topk"]["k"] == 1  # round(20/144 · 8)
    assert not (out / "fig_Ipost_corrs.png").exists()
    assert_png_readable(out / "fig_heatmaps.png")  # drawn with the three measured maps
