"""Counter-example heads: important-but-static and plastic-but-unimportant (`cases.json`).

With Q_X(q) the q-quantile of column X over all heads of the run (numpy's default "linear"
interpolation, Hyndman–Fan type 7):
    important_static     : I_pre ≥ Q_I(q_hi)  and  U ≤ Q_U(q_lo)
    plastic_unimportant  : (U ≥ Q_U(q_hi)  or  G ≥ Q_G(q_hi))  and  I_pre ≤ Q_I(q_lo)
Defaults q_hi = 0.75, q_lo = 0.25: the top and bottom quarter of heads. When G was not measured
the plastic rule uses U alone (recorded in `rule`).

Chance level of each count: a permutation null. The importance column is shuffled over heads against
(U, G), which keep their joint structure; thresholds are quantiles and do not change under the shuffle.
The analytic (1 − q_hi)·q_lo·n (4.5 of 72) is right only for the single-condition rule; for the OR rule
the expectation is q_lo·|{U ≥ Q_U} ∪ {G ≥ Q_G}|, ≈ 7.9 of 72 when U and G are independent, so only the
permutation value is reported. Importance means exact I_pre; when only Taylor was measured the rules use
`taylor_pre` and say so (`importance` field and rule text), never calling it I_pre.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from peftlab.analysis.stats import (DEFAULT_LEVEL, DEFAULT_PERMUTATIONS, DEFAULT_SEED, check_permutations,
                                    importance_column, permutation_indices, permutation_summary)
from peftlab.analysis.tables import head_label
from peftlab.errors import PeftlabError

Q_HI = 0.75
Q_LO = 0.25
QUANTILE_METHOD = "linear (numpy default, Hyndman-Fan type 7)"


def quantile_threshold(values, q: float) -> float:
    """Q(q) of the finite values: numpy.quantile with linear interpolation."""
    values = np.asarray(values, float)
    return float(np.quantile(values[np.isfinite(values)], q))


def _head_rows(heads: pd.DataFrame, mask, columns: list[str]) -> list[dict[str, Any]]:
    rows = []
    for _, row in heads.loc[mask].iterrows():
        entry = {"layer": int(row["layer"]), "head": int(row["head"]), "label": head_label(row["layer"], row["head"])}
        entry.update({c: float(row[c]) for c in columns if c in heads})
        rows.append(entry)
    return rows


def find_cases(heads: pd.DataFrame, q_hi: float = Q_HI, q_lo: float = Q_LO, *,
               n_permutations: int = DEFAULT_PERMUTATIONS, seed: int = DEFAULT_SEED,
               level: float = DEFAULT_LEVEL) -> dict[str, Any]:
    """The two counter-example sets with their exact thresholds and permutation chance levels."""
    if not (0.0 <= q_lo < q_hi <= 1.0):
        raise PeftlabError(f"quantile levels must satisfy 0 ≤ q_lo < q_hi ≤ 1, got q_lo={q_lo}, q_hi={q_hi}; "
                           f"e.g. --q-lo 0.25 --q-hi 0.75")
    check_permutations(n_permutations)
    imp = importance_column(heads, "pre")
    if imp is None:
        raise PeftlabError("no importance on θ0 measured (neither exact I_pre nor taylor_pre); run "
                           "peftlab measure RUN --steps importance_pre --importance both")
    has_g = "G" in heads and heads["G"].notna().any()
    columns = [c for c in (imp, "U", "G") if c in heads and heads[c].notna().any()]
    thresholds = {c: {"hi": quantile_threshold(heads[c], q_hi), "lo": quantile_threshold(heads[c], q_lo)}
                  for c in columns}
    importance = heads[imp].to_numpy(float)
    has_u = "U" in thresholds  # False when the method has no ΔW of attention weights (U empty by design)
    important = importance >= thresholds[imp]["hi"]  # [n] (NaN compares False)
    unimportant = importance <= thresholds[imp]["lo"]  # [n]
    if has_u:
        update = heads["U"].to_numpy(float)
        static_u = update <= thresholds["U"]["lo"]
        plastic_by_u = update >= thresholds["U"]["hi"]
    else:
        static_u = plastic_by_u = np.zeros(len(heads), bool)
    if has_g:
        plastic_by_g = heads["G"].to_numpy(float) >= thresholds["G"]["hi"]
        plastic_rule = (f"(U >= Q_U(q_hi) or G >= Q_G(q_hi)) and {imp} <= Q_{imp}(q_lo)" if has_u else
                        f"G >= Q_G(q_hi) and {imp} <= Q_{imp}(q_lo)   (U not defined)")
    else:
        plastic_by_g = np.zeros(len(heads), bool)
        plastic_rule = f"U >= Q_U(q_hi) and {imp} <= Q_{imp}(q_lo)   (G not measured)"
    plastic_side = plastic_by_u | plastic_by_g
    static = important & static_u
    plastic = plastic_side & unimportant

    # permutation null: importance shuffled over heads; (U, G) stay paired with each other
    perms = permutation_indices(len(heads), n_permutations, seed)  # [B, n]
    null_static = (important[perms] & static_u).sum(axis=1)  # [B]
    null_plastic = (unimportant[perms] & plastic_side).sum(axis=1)  # [B]
    what = f"{imp} shuffled over heads against (U, G)"

    static_mask, plastic_mask = pd.Series(static, index=heads.index), pd.Series(plastic, index=heads.index)
    plastic_rows = _head_rows(heads, plastic_mask, columns)
    for entry, by_u, by_g in zip(plastic_rows, plastic_by_u[plastic], plastic_by_g[plastic]):
        entry["by"] = [name for name, hit in (("U", by_u), ("G", by_g)) if hit]
    n = len(heads)
    static_entry = {"rule": f"{imp} >= Q_{imp}(q_hi) and U <= Q_U(q_lo)", "count": int(static.sum()),
                    "chance": permutation_summary(int(static.sum()), null_static, seed, level, what),
                    "heads": _head_rows(heads, static_mask, columns)}
    plastic_entry = {"rule": plastic_rule, "count": int(plastic.sum()),
                     "chance": permutation_summary(int(plastic.sum()), null_plastic, seed, level, what),
                     "heads": plastic_rows}
    if not has_u:  # a count of 0 would read as "no such heads"; the set is undefined without U
        static_entry = {"rule": static_entry["rule"], "count": None, "chance": None, "heads": [], "measured": False,
                        "why": "U not defined for this run (no ΔW of attention weights)"}
        if not has_g:
            plastic_entry = {"rule": "U or G >= Q(q_hi)", "count": None, "chance": None, "heads": [],
                             "measured": False, "why": "neither U (not defined) nor G (not measured)"}
    return {
        "q_hi": q_hi,
        "q_lo": q_lo,
        "quantile_method": QUANTILE_METHOD,
        "n_heads_total": n,
        "importance": imp,
        "importance_kind": "exact" if imp.startswith("I_") else "taylor (exact I_pre not measured)",
        "thresholds": thresholds,
        "important_static": static_entry,
        "plastic_unimportant": plastic_entry,
    }


def case_heads(cases: dict[str, Any]) -> dict[str, list[tuple[int, int]]]:
    """{'important_static': [(layer, head), ...], 'plastic_unimportant': [...]} for figure annotations."""
    return {name: [(h["layer"], h["head"]) for h in cases[name]["heads"]]
            for name in ("important_static", "plastic_unimportant")}
