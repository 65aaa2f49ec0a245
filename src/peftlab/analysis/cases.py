"""Counter-example heads: important-but-static and plastic-but-unimportant (`cases.json`).

With Q_X(q) the q-quantile of column X over all heads of the run (numpy's default "linear"
interpolation, Hyndman–Fan type 7):
    important_static     : I_pre ≥ Q_I(q_hi)  and  U ≤ Q_U(q_lo)
    plastic_unimportant  : (U ≥ Q_U(q_hi)  or  G ≥ Q_G(q_hi))  and  I_pre ≤ Q_I(q_lo)
Defaults q_hi = 0.75, q_lo = 0.25: the top and bottom quarter of heads. Under independence of I and
U each set is expected to hold about (1 − q_hi)·q_lo·n heads (≈ 4.5 of 72). When G was not measured
the plastic rule uses U alone (recorded in `rule`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

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


def find_cases(heads: pd.DataFrame, q_hi: float = Q_HI, q_lo: float = Q_LO) -> dict[str, Any]:
    """The two counter-example sets with their exact thresholds (quantile levels and values)."""
    if not (0.0 <= q_lo < q_hi <= 1.0):
        raise PeftlabError(f"quantile levels must satisfy 0 ≤ q_lo < q_hi ≤ 1, got q_lo={q_lo}, q_hi={q_hi}; "
                           f"e.g. --q-lo 0.25 --q-hi 0.75")
    columns = [c for c in ("I_pre", "U", "G") if c in heads]
    thresholds = {c: {"hi": quantile_threshold(heads[c], q_hi), "lo": quantile_threshold(heads[c], q_lo)}
                  for c in columns}
    i_pre, update = heads["I_pre"], heads["U"]
    static = (i_pre >= thresholds["I_pre"]["hi"]) & (update <= thresholds["U"]["lo"])

    plastic_by_u = update >= thresholds["U"]["hi"]
    if "G" in heads:
        plastic_by_g = heads["G"] >= thresholds["G"]["hi"]
        plastic_rule = "(U >= Q_U(q_hi) or G >= Q_G(q_hi)) and I_pre <= Q_I(q_lo)"
    else:
        plastic_by_g = pd.Series(False, index=heads.index)
        plastic_rule = "U >= Q_U(q_hi) and I_pre <= Q_I(q_lo)   (G not measured)"
    unimportant = i_pre <= thresholds["I_pre"]["lo"]
    plastic = (plastic_by_u | plastic_by_g) & unimportant

    plastic_rows = _head_rows(heads, plastic, columns)
    for entry, by_u, by_g in zip(plastic_rows, plastic_by_u[plastic], plastic_by_g[plastic]):
        entry["by"] = [name for name, hit in (("U", by_u), ("G", by_g)) if hit]
    n = len(heads)
    return {
        "q_hi": q_hi,
        "q_lo": q_lo,
        "quantile_method": QUANTILE_METHOD,
        "n_heads_total": n,
        "thresholds": thresholds,
        "expected_by_chance": (1 - q_hi) * q_lo * n,
        "important_static": {"rule": "I_pre >= Q_I(q_hi) and U <= Q_U(q_lo)", "count": int(static.sum()),
                             "heads": _head_rows(heads, static, columns)},
        "plastic_unimportant": {"rule": plastic_rule, "count": int(plastic.sum()), "heads": plastic_rows},
    }


def case_heads(cases: dict[str, Any]) -> dict[str, list[tuple[int, int]]]:
    """{'important_static': [(layer, head), ...], 'plastic_unimportant': [...]} for figure annotations."""
    return {name: [(h["layer"], h["head"]) for h in cases[name]["heads"]]
            for name in ("important_static", "plastic_unimportant")}
