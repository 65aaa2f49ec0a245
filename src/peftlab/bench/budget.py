"""Equal-budget view (issue 10 §2): the Houlsby adapter whose trainable parameters match LoRA at its best rank.

    adapter params (without classifier) P_A(b) = n_adapters · (2·d·b + b + d)     n_adapters = n_layers · sites
    matched b = argmin_{b ≥ 1} |P_A(b) − P_L|,  ties → the smaller b,
    P_L = trainable_params_without_classifier of the LoRA-family cell at its best rank (measured, from bench.csv)
The classifier is left out on both sides: it is the same for every method of one model, and for small models it
is larger than the low-rank update itself. `adapter_ln` adds LayerNorm parameters the formula leaves out;
the table shows the measured counts of both cells, so any gap is visible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ADAPTER = "adapter"


def adapter_budget(d: int, n_adapters: int, bottleneck: int) -> int:
    """P_A(b): trainable adapter parameters of a model with `n_adapters` adapters of width d."""
    from peftlab.methods.adapter import adapter_param_count

    return n_adapters * adapter_param_count(d, bottleneck)


def matched_bottleneck(target: int, d: int, n_adapters: int) -> int:
    """The b ≥ 1 whose P_A(b) is closest to `target` (ties → smaller b); see the module docstring."""
    per_b = n_adapters * (2 * d + 1)  # P_A(b) = per_b · b + n_adapters · d, linear in b
    guess = max(1, round((target - n_adapters * d) / per_b))
    candidates = sorted({max(1, guess - 1), guess, guess + 1})
    return min(candidates, key=lambda b: (abs(adapter_budget(d, n_adapters, b) - target), b))


def adapter_sites(run_dir: str | Path) -> tuple[int, int]:
    """(d, n_adapters) of the model a run was trained on, from ckpt_init/config.json and its ArchSpec."""
    from transformers import AutoConfig

    from peftlab.arch import get_arch, head_shape
    from peftlab.runs import CKPT_INIT

    config = AutoConfig.from_pretrained(Path(run_dir) / CKPT_INIT)
    shape = head_shape(config)
    return shape.hidden, shape.n_layers * len(get_arch(config).adapter_paths)


def equal_budget_rows(rows: list[dict[str, Any]], d: int, n_adapters: int) -> list[dict[str, Any]]:
    """One entry per best-rank low-rank cell (rows with targets): its matched adapter and that adapter's row if run.

    Also sets `equal_budget_for` on the adapter rows whose bottleneck is a matched one (the LoRA cells' labels).
    """
    out = []
    adapters = {int(r["rank"]): r for r in rows if r["method"] == ADAPTER and r.get("rank") not in (None, "")}
    for row in rows:
        row.setdefault("equal_budget_for", None)
    if not n_adapters:
        return out
    for row in rows:
        if not row.get("best_rank") or row["method"] == ADAPTER or not row.get("targets"):
            continue
        target = int(row["trainable_params_without_classifier"])
        b = matched_bottleneck(target, d, n_adapters)
        adapter = adapters.get(b)
        if adapter is not None:
            adapter["equal_budget_for"] = ",".join(filter(None, [adapter["equal_budget_for"], row["cell"]]))
        out.append({"cell": row["cell"], "method": row["method"], "rank": row["rank"], "targets": row["targets"],
                    "params": target, "score_mean": row["score_mean"], "score_std": row["score_std"],
                    "bottleneck": b, "adapter_params_formula": adapter_budget(d, n_adapters, b),
                    "adapter_params": None if adapter is None else adapter["trainable_params_without_classifier"],
                    "adapter_score_mean": None if adapter is None else adapter["score_mean"],
                    "adapter_score_std": None if adapter is None else adapter["score_std"],
                    "adapter_cell": None if adapter is None else adapter["cell"]})
    return out
