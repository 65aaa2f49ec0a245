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

# (x, y) column pairs reported by `peftlab analyze`, in this order.
PAIRS = (("I_pre", "U"), ("I_pre", "Urel"), ("I_pre", "G"), ("G", "U"), ("G", "Urel"),
         ("I_pre", "I_post"), ("I_post", "U"), ("I_post", "G"))
TOPK_PAIRS = (("I_pre", "U"), ("I_pre", "Urel"), ("I_pre", "G"))
DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
DEFAULT_LEVEL = 0.95


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


def correlation_table(heads: pd.DataFrame, pairs=PAIRS, n_resamples: int = DEFAULT_RESAMPLES,
                      seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL) -> tuple[dict, dict]:
    """({pair_key: spearman_with_ci}, {pair_key: why skipped}) for the pairs whose columns exist."""
    table, skipped = {}, {}
    for x, y in pairs:
        missing = [c for c in (x, y) if c not in heads]
        if missing:
            skipped[pair_key(x, y)] = f"column {', '.join(missing)} not measured"
            continue
        table[pair_key(x, y)] = {"x": x, "y": y, **spearman_with_ci(heads[x], heads[y], n_resamples, seed, level)}
    return table, skipped


def topk_table(heads: pd.DataFrame, k: int, pairs=TOPK_PAIRS) -> dict[str, Any]:
    """Top-K overlap of each pair, with the chance level K²/n and a hypergeometric p-value."""
    n = len(heads)
    out: dict[str, Any] = {"k": k, "n": n, "expected_by_chance": chance_overlap(k, n), "pairs": {}}
    for x, y in pairs:
        if x in heads and y in heads:
            keep = heads[x].notna() & heads[y].notna()
            overlap = topk_overlap(heads.loc[keep, x], heads.loc[keep, y], k)
            out["pairs"][pair_key(x, y)] = {"x": x, "y": y, "overlap": overlap, "fraction": overlap / k,
                                            "p_hypergeom": overlap_pvalue(overlap, k, int(keep.sum()))}
    return out


def compute_stats(heads: pd.DataFrame, *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                  level: float = DEFAULT_LEVEL, k: int | None = None, cases: dict | None = None) -> dict[str, Any]:
    """Everything `stats.json` holds except run metadata: Spearman (with CIs), top-K, counter-example counts."""
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
        "topk": topk_table(heads, k),
    }
    if cases is not None:
        result["counter_examples"] = {"important_static": cases["important_static"]["count"],
                                      "plastic_unimportant": cases["plastic_unimportant"]["count"],
                                      "q_hi": cases["q_hi"], "q_lo": cases["q_lo"]}
    return result


def paired_difference(xa, ya, xb, yb, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                      level: float = DEFAULT_LEVEL) -> dict[str, Any]:
    """ρ(xb, yb) − ρ(xa, ya) for two runs on the same heads, with a paired percentile bootstrap CI.

    Both runs are resampled with the same head indices, so Δρ*_b = ρ_B(i_b) − ρ_A(i_b).
    """
    arrays = [np.asarray(v, float) for v in (xa, ya, xb, yb)]
    keep = np.logical_and.reduce([np.isfinite(v) for v in arrays])
    xa, ya, xb, yb = (v[keep] for v in arrays)
    if len(xa) < 3:
        return {"diff": None, "ci_low": None, "ci_high": None}
    diff = spearman(xb, yb)[0] - spearman(xa, ya)[0]
    replicates = bootstrap_spearman(xb, yb, n_resamples, seed) - bootstrap_spearman(xa, ya, n_resamples, seed)
    low, high = percentile_ci(replicates, level)
    return {"diff": float(diff), "ci_low": low, "ci_high": high}


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
