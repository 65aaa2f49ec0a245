"""Statistics over heads: Spearman ρ with percentile-bootstrap CIs, top-K overlap, chance levels.

The unit of resampling is the head: a run's n = n_layers·n_heads heads are the sample. Heads are
not independent (heads of one layer share inputs), so the CIs describe the spread over this set of
heads, not over models; across-seed variation is `peftlab aggregate`'s job.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from peftlab.analysis.tables import head_label, measured

# (x, y) column pairs reported by `peftlab analyze`, in this order.
PAIRS = (("I_pre", "U"), ("I_pre", "Urel"), ("I_pre", "G"), ("G", "U"), ("G", "Urel"),
         ("I_pre", "I_post"), ("I_post", "U"), ("I_post", "G"))
TOPK_PAIRS = (("I_pre", "U"), ("I_pre", "Urel"), ("I_pre", "G"))
DEFAULT_RESAMPLES = 1000
DEFAULT_PERMUTATIONS = 10000
MIN_PERMUTATIONS = 1000
DEFAULT_SEED = 0
DEFAULT_LEVEL = 0.95
FDR_Q = 0.05
NOISE_FRACTION = 0.10  # fewer than this share of heads distinguishable from 0 → importance at noise level
NOISE_SENTENCE = "importance at noise level — conclusions about I are not supported on this run"


def importance_column(heads: pd.DataFrame, phase: str) -> str | None:
    """The column that stands for importance in `phase`: exact `I_<phase>`, else `taylor_<phase>`, else None.

    The Taylor score keeps its own name wherever it is used, so no output calls it I.
    """
    for column in (f"I_{phase}", f"taylor_{phase}"):
        if measured(heads, column):
            return column
    return None


def resolve_pair(heads: pd.DataFrame, x: str, y: str) -> tuple[str | None, str | None, str | None]:
    """(x', y', why-not) with I_pre/I_post replaced by the importance column actually measured.

    A pair of two importances (I_pre~I_post) is only formed from the same kind in both phases (exact
    with exact, Taylor with Taylor): an exact pre against a Taylor post would mix two quantities.
    """
    out = []
    for col in (x, y):
        if col in ("I_pre", "I_post"):
            resolved = importance_column(heads, col[2:])
            if resolved is None:
                return None, None, f"{col} not measured (neither exact nor Taylor)"
            out.append(resolved)
        elif not measured(heads, col):
            return None, None, f"column {col} not measured"
        else:
            out.append(col)
    rx, ry = out
    if x.startswith("I_") and y.startswith("I_") and rx.split("_")[0] != ry.split("_")[0]:
        if measured(heads, "taylor_pre") and measured(heads, "taylor_post"):
            return "taylor_pre", "taylor_post", None
        return None, None, f"{x} and {y} were not measured the same way (exact {rx if rx.startswith('I_') else ry}, " \
                           f"the other only Taylor): not compared"
    return rx, ry, None


def pair_key(x: str, y: str) -> str:
    """Name of a pair in stats.json: 'I_pre~U'."""
    return f"{x}~{y}"


def spearman(x, y) -> tuple[float, float]:
    """Spearman's ρ and its two-sided p-value (scipy.stats.spearmanr).

    ρ = Pearson correlation of the rank vectors: ρ = cov(r(x), r(y)) / (σ_r(x) σ_r(y)),
    ties get average ranks. p tests ρ = 0 with the t approximation t = ρ √((n−2)/(1−ρ²)), n−2 dof.
    """
    result = sps.spearmanr(np.asarray(x, float), np.asarray(y, float))
    return float(result.statistic), float(result.pvalue)


def spearman_rows(x_rows: np.ndarray, y_rows: np.ndarray) -> np.ndarray:
    """Spearman ρ of each row pair: `x_rows`, `y_rows` [B, n] → [B] (NaN where a row is constant).

    Same formula as `spearman` (average ranks, Pearson on ranks), vectorised over B resamples because
    scipy.stats.spearmanr treats a 2-D input as many variables, not as many samples.
    """
    rx = sps.rankdata(x_rows, axis=1)  # [B, n]
    ry = sps.rankdata(y_rows, axis=1)  # [B, n]
    rx = rx - rx.mean(axis=1, keepdims=True)
    ry = ry - ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx**2).sum(axis=1) * (ry**2).sum(axis=1))  # [B]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(axis=1) / den, np.nan)


def bootstrap_indices(n: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """[n_resamples, n] head indices drawn uniformly with replacement from a seeded numpy Generator.

    The same (n, n_resamples, seed) always gives the same matrix, so every pair of a run (and the
    two runs of a comparison, whose heads are matched) is resampled identically.
    """
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_resamples, n))


def percentile_ci(samples: np.ndarray, level: float = DEFAULT_LEVEL) -> tuple[float | None, float | None]:
    """Percentile interval [q_{(1−level)/2}, q_{(1+level)/2}] of the finite bootstrap replicates.

    Replicates that are NaN (a resample whose ranks are all tied) are left out.
    """
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return None, None
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_spearman(x, y, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Bootstrap replicates ρ*_b = ρ(x[i_b], y[i_b]) with i_b the b-th row of `bootstrap_indices` → [B].

    Written with numpy rather than scipy.stats.bootstrap so that all pairs and both runs of a
    comparison share one index matrix (paired differences) and tied resamples can be dropped.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    idx = bootstrap_indices(len(x), n_resamples, seed)  # [B, n]
    return spearman_rows(x[idx], y[idx])


def spearman_with_ci(x, y, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                     level: float = DEFAULT_LEVEL) -> dict[str, Any]:
    """ρ, p and the percentile bootstrap CI of ρ over heads (pairs with a NaN in x or y are dropped).

    Returns {"rho", "p", "ci_low", "ci_high", "n", "n_degenerate"} where n_degenerate counts resamples
    whose ρ was undefined (left out of the CI).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3:
        return {"rho": None, "p": None, "ci_low": None, "ci_high": None, "n": int(len(x)), "n_degenerate": 0}
    rho, p = spearman(x, y)
    replicates = bootstrap_spearman(x, y, n_resamples, seed)
    low, high = percentile_ci(replicates, level)
    return {"rho": None if np.isnan(rho) else rho, "p": None if np.isnan(p) else p, "ci_low": low,
            "ci_high": high, "n": int(len(x)), "n_degenerate": int(np.isnan(replicates).sum())}


def default_k(n: int) -> int:
    """Top-K size: K = round(20/144 · n), at least 1 (20 of BERT-base's 144 heads; 10 of MiniLM-L6's 72)."""
    return max(1, int(round(20 * n / 144)))


def top_k_positions(values, k: int) -> set[int]:
    """Positions of the k largest values; ties broken by position (i.e. by (layer, head) order)."""
    values = np.asarray(values, float)
    order = np.argsort(-values, kind="stable")  # stable: equal values keep (layer, head) order
    return set(order[:k].tolist())


def topk_overlap(a, b, k: int) -> int:
    """|top_k(a) ∩ top_k(b)|: how many of the k largest heads by `a` are also among the k largest by `b`."""
    return len(top_k_positions(a, k) & top_k_positions(b, k))


def chance_overlap(k: int, n: int) -> float:
    """Expected overlap of two independent random top-k sets of n heads: E = k·(k/n) = k²/n (hypergeometric mean)."""
    return k * k / n


def overlap_pvalue(overlap: int, k: int, n: int) -> float:
    """P(overlap ≥ observed) when the second top-k set is a uniform random k-subset: hypergeometric survival."""
    return float(sps.hypergeom.sf(overlap - 1, n, k, k))


def permutation_indices(n: int, n_permutations: int = DEFAULT_PERMUTATIONS, seed: int = DEFAULT_SEED) -> np.ndarray:
    """[n_permutations, n]: each row an independent uniform permutation of 0..n−1 (seeded numpy Generator)."""
    rng = np.random.default_rng(seed)
    return rng.permuted(np.tile(np.arange(n), (n_permutations, 1)), axis=1)  # [B, n]


def permutation_summary(observed: float, null: np.ndarray, seed: int, level: float = DEFAULT_LEVEL,
                        what: str = "") -> dict[str, Any]:
    """Chance level from a permutation null: mean, percentile interval, one-sided p with the +1 correction.

    p = (1 + #{b : null_b ≥ observed}) / (B + 1) — the observed arrangement counts as one permutation,
    so p is never 0 (Phipson & Smyth 2010).
    """
    null = np.asarray(null, float)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(null, [alpha, 1.0 - alpha])
    p = (1 + int((null >= observed).sum())) / (len(null) + 1)
    return {"expected": float(null.mean()), "ci_low": float(low), "ci_high": float(high), "p": float(p),
            "observed": float(observed), "method": "permutation", "shuffled": what, "n_permutations": int(len(null)),
            "seed": seed, "level": level, "p_rule": "one-sided P(null >= observed), (1 + count) / (B + 1)"}


def topk_null(x, y, k: int, perms: np.ndarray) -> np.ndarray:
    """Overlap |top_k(x[π_b]) ∩ top_k(y)| for every permutation row π_b → [B] (x shuffled against y).

    Ties are broken by position exactly as in `top_k_positions` (stable sort), per permuted row.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    in_top_y = np.zeros(len(y), bool)
    in_top_y[list(top_k_positions(y, k))] = True
    order = np.argsort(-x[perms], axis=1, kind="stable")[:, :k]  # [B, k] positions of x's top-k after shuffling
    return in_top_y[order].sum(axis=1)  # [B]


def check_permutations(n_permutations: int) -> None:
    if n_permutations < MIN_PERMUTATIONS:
        from peftlab.errors import PeftlabError

        raise PeftlabError(f"n_permutations={n_permutations} is too few for a chance level; use at least "
                           f"{MIN_PERMUTATIONS} (default {DEFAULT_PERMUTATIONS})")


def correlation_table(heads: pd.DataFrame, pairs=PAIRS, n_resamples: int = DEFAULT_RESAMPLES,
                      seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL) -> tuple[dict, dict]:
    """({pair_key: spearman_with_ci}, {pair_key: why skipped}) for the pairs whose columns exist."""
    table, skipped = {}, {}
    for x, y in pairs:
        rx, ry, why = resolve_pair(heads, x, y)
        if why:
            skipped[pair_key(x, y)] = why
            continue
        table[pair_key(rx, ry)] = {"x": rx, "y": ry, **spearman_with_ci(heads[rx], heads[ry], n_resamples, seed,
                                                                         level)}
    return table, skipped


def topk_table(heads: pd.DataFrame, k: int, pairs=TOPK_PAIRS, n_permutations: int = DEFAULT_PERMUTATIONS,
               seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL) -> dict[str, Any]:
    """Top-K overlap of each pair with its permutation chance level (x shuffled against y).

    `k_squared_over_n` is the analytic mean of a random top-K set (hypergeometric, no ties), kept as a
    cross-check of the permutation mean.
    """
    check_permutations(n_permutations)
    n = len(heads)
    out: dict[str, Any] = {"k": k, "n": n, "k_squared_over_n": chance_overlap(k, n), "pairs": {}, "skipped": {}}
    for x, y in pairs:
        rx, ry, why = resolve_pair(heads, x, y)
        if why:
            out["skipped"][pair_key(x, y)] = why
            continue
        keep = (heads[rx].notna() & heads[ry].notna()).to_numpy()
        xs, ys = heads[rx].to_numpy(float)[keep], heads[ry].to_numpy(float)[keep]
        if len(xs) < k:
            out["skipped"][pair_key(rx, ry)] = f"fewer than K = {k} heads with both {rx} and {ry}"
            continue
        overlap = topk_overlap(xs, ys, k)
        null = topk_null(xs, ys, k, permutation_indices(len(xs), n_permutations, seed))
        out["pairs"][pair_key(rx, ry)] = {
            "x": rx, "y": ry, "overlap": overlap, "fraction": overlap / k,
            "chance": permutation_summary(overlap, null, seed, level, what=f"{rx} shuffled over heads against {ry}")}
    return out


def significance(values, se, n_examples: int | None, q: float = FDR_Q) -> dict[str, Any]:
    """Which heads' importance differs from 0, from the per-example uncertainty of the measurement.

    t_h = I_h / I_se_h,  p_h = 2 · t.sf(|t_h|, N − 1)  (two-sided, N = examples of the subset),
    then Benjamini–Hochberg over the tested heads (scipy.stats.false_discovery_control) at level q.
    Heads without an I_se (or with I_se = 0 and I = 0) are not tested.
    """
    values, se = np.asarray(values, float), np.asarray(se, float)
    if n_examples is None or n_examples < 2:
        return {"measured": False, "why": "n_examples unknown or < 2"}
    testable = np.isfinite(values) & np.isfinite(se) & (se > 0)
    if not testable.any():
        return {"measured": False, "why": "no per-head standard error (I_se) in the measurement file"}
    t = values[testable] / se[testable]
    p = 2.0 * sps.t.sf(np.abs(t), n_examples - 1)
    adjusted = sps.false_discovery_control(p, method="bh")
    significant = adjusted <= q
    positions = np.flatnonzero(testable)
    n_pos = int((significant & (t > 0)).sum())
    n_neg = int((significant & (t < 0)).sum())
    fraction = (n_pos + n_neg) / int(testable.sum())
    return {"measured": True, "n_tested": int(testable.sum()), "n_examples": int(n_examples), "q": q,
            "test": "t = I/I_se, p = 2·t.sf(|t|, N−1), Benjamini–Hochberg (scipy.stats.false_discovery_control)",
            "n_positive": n_pos, "n_negative": n_neg, "n_significant": n_pos + n_neg, "fraction_significant": fraction,
            "noise_level": fraction < NOISE_FRACTION, "noise_rule": f"fewer than {NOISE_FRACTION:.0%} of heads significant",
            "positive_positions": positions[significant & (t > 0)].tolist(),
            "negative_positions": positions[significant & (t < 0)].tolist()}


def relative_precision(values, se) -> dict[str, Any]:
    """For G (a mean of |∂L_i/∂g| ≥ 0, so "G > 0" is true by construction and not worth testing):
    the median relative standard error G_se / G over heads, i.e. how precisely each head's G is known."""
    values, se = np.asarray(values, float), np.asarray(se, float)
    ok = np.isfinite(values) & np.isfinite(se) & (values > 0)
    if not ok.any():
        return {"measured": False, "why": "no per-head standard error (G_se) in gradfisher_pre.jsonl"}
    rel = se[ok] / values[ok]
    return {"measured": True, "n": int(ok.sum()), "median_relative_se": float(np.median(rel)),
            "max_relative_se": float(rel.max()),
            "note": "G is a mean of absolute values (> 0 by construction); G_se/G says how precisely each head's G "
                    "is known"}


def taylor_agreement(heads: pd.DataFrame, phase: str, n_resamples: int = DEFAULT_RESAMPLES,
                     seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL) -> dict[str, Any]:
    """Spearman of first-order vs exact importance over heads, with bootstrap CIs.

    `-dL_dgate~I`: ρ(−∂L/∂g, I) — the signed first-order estimate of removing the head (g: 1 → 0)
    against the exact ΔL; `|dL_dgate|~|I|`: ρ(|∂L/∂g|, |I|) — magnitudes only (the Taylor score).
    """
    exact, signed, taylor = f"I_{phase}", f"dL_dgate_{phase}", f"taylor_{phase}"
    if not measured(heads, exact):
        return {"measured": False, "why": f"exact {exact} not measured"}
    out: dict[str, Any] = {"measured": True}
    if measured(heads, signed):
        out["-dL_dgate~I"] = spearman_with_ci(-heads[signed], heads[exact], n_resamples, seed, level)
        magnitude = heads[signed].abs()
    elif measured(heads, taylor):
        out["-dL_dgate~I"] = {"rho": None, "why": "signed dL_dgate not measured (older format)"}
        magnitude = heads[taylor]
    else:
        return {"measured": False, "why": f"Taylor not measured on {phase}"}
    out["|dL_dgate|~|I|"] = spearman_with_ci(magnitude, heads[exact].abs(), n_resamples, seed, level)
    return out



def compute_stats(heads: pd.DataFrame, *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                  level: float = DEFAULT_LEVEL, k: int | None = None, cases: dict | None = None,
                  n_examples: dict | None = None, n_permutations: int = DEFAULT_PERMUTATIONS) -> dict[str, Any]:
    """Everything `stats.json` holds except run metadata: Spearman (with CIs), top-K with permutation chance,
    counter-example counts with their chance levels, significance of I, Taylor vs exact agreement."""
    if n_resamples < 10:
        from peftlab.errors import PeftlabError

        raise PeftlabError(f"n_resamples={n_resamples} is too few for a percentile CI; use at least 100 (default 1000)")
    n = len(heads)
    k = default_k(n) if k is None else int(k)
    if not 1 <= k <= n:
        from peftlab.errors import PeftlabError

        raise PeftlabError(f"top-K size {k} must be between 1 and the number of heads ({n})")
    spearman_pairs, skipped = correlation_table(heads, PAIRS, n_resamples, seed, level)
    result: dict[str, Any] = {
        "n_heads_total": n,
        "bootstrap": {"n_resamples": n_resamples, "seed": seed, "level": level, "method": "percentile",
                      "unit": "head (resampled with replacement)", "rng": "numpy.random.default_rng"},
        "spearman": spearman_pairs,
        "skipped": skipped,
        "permutation": {"n_permutations": n_permutations, "seed": seed, "level": level,
                        "what": "the importance column shuffled over heads against the other columns",
                        "rng": "numpy.random.default_rng(seed).permuted"},
        "topk": topk_table(heads, k, TOPK_PAIRS, n_permutations, seed, level),
        "importance_columns": {phase: importance_column(heads, phase) for phase in ("pre", "post")},
    }
    if cases is not None:
        result["counter_examples"] = {"important_static": cases["important_static"]["count"],
                                      "plastic_unimportant": cases["plastic_unimportant"]["count"],
                                      "chance": {name: cases[name]["chance"]
                                                 for name in ("important_static", "plastic_unimportant")},
                                      "importance": cases["importance"], "q_hi": cases["q_hi"], "q_lo": cases["q_lo"]}
    result["significance"] = significance_block(heads, n_examples or {})
    result["taylor_vs_exact"] = {phase: taylor_agreement(heads, phase, n_resamples, seed, level)
                                 for phase in ("pre", "post") if f"I_{phase}" in heads or f"taylor_{phase}" in heads}
    return result


def significance_block(heads: pd.DataFrame, n_examples: dict) -> dict[str, Any]:
    """stats.json "significance": per phase the BH-significant heads of I, the noise flag; G's precision."""
    labels = [head_label(layer, head) for layer, head in zip(heads["layer"], heads["head"])]
    out: dict[str, Any] = {}
    for phase in ("pre", "post"):
        col = f"I_{phase}"
        if col not in heads and f"taylor_{phase}" not in heads:
            continue
        if not measured(heads, col):
            out[col] = {"measured": False, "why": f"exact {col} not measured (Taylor scores have no per-head test)"}
            continue
        entry = significance(heads[col], heads.get(f"{col}_se", pd.Series(np.nan, index=heads.index)),
                             n_examples.get(phase))
        if entry["measured"]:
            entry["positive_heads"] = [labels[i] for i in entry.pop("positive_positions")]
            entry["negative_heads"] = [labels[i] for i in entry.pop("negative_positions")]
            entry["message"] = NOISE_SENTENCE if entry["noise_level"] else \
                f"{entry['n_significant']} of {entry['n_tested']} heads' {col} differ from 0 (BH q = {entry['q']})"
        out[col] = entry
    if "G" in heads:
        out["G"] = relative_precision(heads["G"], heads.get("G_se", pd.Series(np.nan, index=heads.index)))
    flags = [phase for phase in ("I_pre", "I_post") if (out.get(phase) or {}).get("noise_level")]
    out["noise_level"] = bool(flags)
    out["noise_level_phases"] = flags
    if flags:
        out["message"] = f"{', '.join(flags)}: {NOISE_SENTENCE}"
    return out


def paired_difference(xa, ya, xb, yb, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                      level: float = DEFAULT_LEVEL) -> dict[str, Any]:
    """Δρ = ρ(xb, yb) − ρ(xa, ya) for two runs on the same heads, with a paired percentile bootstrap CI and p.

    The heads are the same in both runs, so they are resampled jointly: Δρ*_b = ρ_B(i_b) − ρ_A(i_b) with
    one index row i_b for both runs (`bootstrap_indices`). Written with numpy rather than
    scipy.stats.bootstrap because the two correlations must share each resample and the per-run CIs
    use the very same index matrix. Two-sided bootstrap p:
        p = min(1, 2 · min((1 + #{Δρ*_b ≤ 0}), (1 + #{Δρ*_b ≥ 0})) / (B + 1)).
    """
    arrays = [np.asarray(v, float) for v in (xa, ya, xb, yb)]
    keep = np.logical_and.reduce([np.isfinite(v) for v in arrays])
    xa, ya, xb, yb = (v[keep] for v in arrays)
    if len(xa) < 3:
        return {"diff": None, "ci_low": None, "ci_high": None, "p": None, "n": int(len(xa))}
    diff = spearman(xb, yb)[0] - spearman(xa, ya)[0]
    replicates = bootstrap_spearman(xb, yb, n_resamples, seed) - bootstrap_spearman(xa, ya, n_resamples, seed)
    low, high = percentile_ci(replicates, level)
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0 or np.isnan(diff):
        return {"diff": None if np.isnan(diff) else float(diff), "ci_low": low, "ci_high": high, "p": None,
                "n": int(len(xa))}
    tail = min(int((finite <= 0).sum()), int((finite >= 0).sum()))
    p = min(1.0, 2.0 * (1 + tail) / (finite.size + 1))
    return {"diff": float(diff), "ci_low": low, "ci_high": high, "p": float(p), "n": int(len(xa)),
            "n_resamples": int(finite.size)}


def intervals_overlap(a: dict, b: dict) -> bool | None:
    """True when [a.ci_low, a.ci_high] and [b.ci_low, b.ci_high] share a point (None when a CI is missing)."""
    if None in (a.get("ci_low"), a.get("ci_high"), b.get("ci_low"), b.get("ci_high")):
        return None
    return a["ci_low"] <= b["ci_high"] and b["ci_low"] <= a["ci_high"]


def t_interval(values, level: float = DEFAULT_LEVEL) -> dict[str, Any]:
    """Mean, sample std (ddof=1) and the Student-t CI across seeds: mean ± t_{(1+level)/2, n−1} · s/√n.

    With n < 2 the std and CI are None (one seed says nothing about the spread).
    """
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], float)
    n = len(values)
    out: dict[str, Any] = {"n": n, "mean": float(values.mean()) if n else None, "std": None,
                           "ci_low": None, "ci_high": None}
    if n >= 2:
        std = float(values.std(ddof=1))
        half = float(sps.t.ppf((1 + level) / 2, n - 1)) * std / np.sqrt(n)
        out.update(std=std, ci_low=out["mean"] - half, ci_high=out["mean"] + half)
    return out


def format_rho(entry: dict | None, digits: int = 2) -> str:
    """'ρ = 0.31 [0.12, 0.48]' (or 'ρ = n/a')."""
    if not entry or entry.get("rho") is None:
        return "ρ = n/a"
    ci = ""
    if entry.get("ci_low") is not None:
        ci = f" [{entry['ci_low']:.{digits}f}, {entry['ci_high']:.{digits}f}]"
    return f"ρ = {entry['rho']:.{digits}f}{ci}"
