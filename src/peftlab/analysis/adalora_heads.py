"""AdaLoRA's final ranks next to the per-head measurements: does the allocation follow importance or plasticity?

For an AdaLoRA run, each layer's attention matrices q, k, v, o got a final rank r(layer, module) from the
rank-allocation signal. The heads of that layer were measured separately (I_pre, G, U, I_post). Per module
(layer, module) the head measurements are summed over the layer's heads:

    agg_X(layer, module) = Σ_h X(layer, h)        X ∈ {I_pre, G, U, I_post}

where for U the module's own slice is used when measured: U_q for q, U_k for k, U_v for v, U_o for o (the
head's rows of W_q/W_k/W_v, columns of W_o), else the whole-head U. A layer with a head whose value is
missing gets no aggregate (NaN), never a partial sum. I_pre, G and I_post are per-head quantities, so the four
modules of one layer share one value (tied x); only U differs per module.

Then Spearman ρ(r, agg_X) over modules with a percentile bootstrap CI (modules resampled with replacement;
`stats.spearman_with_ci`, the same numpy bootstrap as every other ρ of `peftlab analyze`, so n_resamples and
seed are shared and recorded), per module type (n = n_layers) and pooled over q, k, v, o (n = 4·n_layers).
The verdict is in plain words: too few modules, ranks all equal, "not distinguishable from no relation"
(CI holds 0), or a positive / negative relation. Modules of one layer share inputs and the ranks come from
one global budget, so modules are not independent: the CI describes this set of modules, not other runs.

Where the ranks come from (saved files only, never a model): final_summary.json `ranks`, else the `end` row
of rank_pattern.jsonl, else ckpt_final/adapter_config.json `rank_pattern` (count of kept triplets).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from peftlab.analysis.stats import DEFAULT_LEVEL, DEFAULT_RESAMPLES, DEFAULT_SEED, importance_column, spearman_with_ci
from peftlab.analysis.tables import measured
from peftlab.io import read_json, read_jsonl

MODULE_TYPES = ("q", "k", "v", "o")
AGGREGATES = ("I_pre", "G", "U", "I_post")
MODULE_RANKS_FILE = "module_ranks.csv"
FIGURE = "fig_adalora_rank_vs_heads.png"
MIN_MODULES = 3  # Spearman needs at least 3 pairs
FEW_MODULES = 8  # below this a percentile CI over modules is rough; the verdict says so


def read_final_ranks(run_dir: str | Path) -> tuple[dict[str, int], str] | None:
    """({HF module name: final rank}, source file) of an AdaLoRA run, or None when no file holds them."""
    run_dir = Path(run_dir)
    summary = run_dir / "final_summary.json"
    if summary.is_file() and isinstance(read_json(summary).get("ranks"), dict):
        return {k: int(v) for k, v in read_json(summary)["ranks"].items()}, "final_summary.json"
    log = run_dir / "rank_pattern.jsonl"
    if log.is_file():
        end = next((r for r in reversed(read_jsonl(log)) if r.get("kind") == "end"), None)
        if end is not None:
            return {k: int(v) for k, v in end["ranks"].items()}, "rank_pattern.jsonl"
    adapter = run_dir / "ckpt_final" / "adapter_config.json"
    if adapter.is_file() and read_json(adapter).get("rank_pattern"):
        from peftlab.methods.adalora_signals import module_of

        pattern = read_json(adapter)["rank_pattern"]
        return {module_of(k): int(sum(bool(x) for x in kept)) for k, kept in pattern.items()}, \
            "ckpt_final/adapter_config.json"
    return None


def module_kind(name: str, types: tuple[str, ...] = MODULE_TYPES) -> tuple[int, str] | None:
    """(layer, canonical type) of an HF module name for `types` (default q/k/v/o) in any known architecture, else None.

    Matches `<layers_suffix>.<layer>.<path>` at the end of the name, so BERT's `layer.3.output.dense` (FFN)
    is not taken for `layer.3.attention.output.dense` (o). A fused q/k/v module (GPT-2 `c_attn`) is "qkv".
    """
    from peftlab.arch import ARCH_SPECS

    for spec in ARCH_SPECS.values():
        kinds = [t for t in types for path in spec.paths.get(t, ())
                 if re.search(rf"(?:^|\.){re.escape(spec.layers_suffix)}\.(\d+)\.{re.escape(path)}$", name)]
        if kinds:
            layer = int(re.search(rf"(?:^|\.){re.escape(spec.layers_suffix)}\.(\d+)\.", name).group(1))
            return layer, "".join(dict.fromkeys(kinds))
    return None


def module_rank_table(heads: pd.DataFrame, ranks: dict[str, int]) -> pd.DataFrame:
    """One row per adapted q/k/v/o module: layer, module, hf_module, final_rank, n_heads, agg_I_pre, agg_G,
    agg_U, agg_I_post (+ the column each aggregate summed: I_pre may be `taylor_pre` when exact I was not measured).

    agg_X = Σ over the layer's heads of X (NaN if any of those heads lacks X, or X was not measured)."""
    sources = {"I_pre": importance_column(heads, "pre"), "G": "G" if measured(heads, "G") else None,
               "I_post": importance_column(heads, "post")}
    rows = []
    for hf_name, rank in ranks.items():
        kind = module_kind(hf_name)
        if kind is None:
            continue  # FFN and anything else without heads
        layer, module = kind
        layer_heads = heads[heads["layer"] == layer]
        u_col = f"U_{module}" if measured(heads, f"U_{module}") else ("U" if measured(heads, "U") else None)
        row: dict[str, Any] = {"layer": layer, "module": module, "hf_module": hf_name, "final_rank": rank,
                               "n_heads": int(len(layer_heads))}
        for name, column in (*sources.items(), ("U", u_col)):
            values = layer_heads[column].to_numpy(float) if column and len(layer_heads) else np.array([np.nan])
            row[f"agg_{name}"] = float(values.sum()) if np.all(np.isfinite(values)) else np.nan  # no partial sums
            row[f"agg_{name}_from"] = column
        rows.append(row)
    columns = ["layer", "module", "hf_module", "final_rank", "n_heads"] + \
        [c for name in AGGREGATES for c in (f"agg_{name}", f"agg_{name}_from")]
    table = pd.DataFrame(rows, columns=columns)
    order = {m: i for i, m in enumerate(MODULE_TYPES)}
    return table.sort_values(["layer", "module"], key=lambda s: s.map(order) if s.name == "module" else s,
                             kind="stable").reset_index(drop=True)


def verdict(entry: dict[str, Any], ranks_constant: bool) -> str:
    """Plain words for one ρ entry (what the data can and cannot say)."""
    n = entry.get("n", 0)
    if n < MIN_MODULES:
        return f"too few modules (n = {n}) for a correlation"
    if ranks_constant:
        return "every module has the same final rank: no relation can be measured"
    if entry.get("rho") is None:
        return "aggregate is constant over these modules: no relation can be measured"
    if entry.get("ci_low") is None:
        return "no interval (every resample tied)"
    few = f" (only {n} modules: the interval is rough)" if n < FEW_MODULES else ""
    if entry["ci_low"] <= 0 <= entry["ci_high"]:
        return "not distinguishable from no relation" + few
    return ("higher rank where the aggregate is higher" if entry["rho"] > 0
            else "higher rank where the aggregate is lower") + few


def rank_vs_heads_stats(table: pd.DataFrame, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                        level: float = DEFAULT_LEVEL) -> dict[str, Any]:
    """{group: {aggregate: {rho, p, ci_low, ci_high, n, n_degenerate, x_from, verdict}}} for group in q, k, v, o,
    pooled. ρ = Spearman(final_rank, agg_X) over the group's modules (rows with a NaN aggregate dropped)."""
    groups = {m: table[table["module"] == m] for m in dict.fromkeys(table["module"])}
    groups["pooled"] = table
    out: dict[str, Any] = {}
    for group, rows in groups.items():
        out[group] = {}
        for name in AGGREGATES:
            column = f"agg_{name}"
            keep = rows[np.isfinite(rows[column].to_numpy(float))]
            entry = spearman_with_ci(keep["final_rank"], keep[column], n_resamples, seed, level)
            entry["from"] = next((c for c in keep[f"{column}_from"] if c), None) if len(keep) else None
            if len(keep) == 0:
                entry["why"] = f"{name} not measured"
            entry["verdict"] = verdict(entry, keep["final_rank"].nunique() <= 1)
            out[group][name] = entry
    return out


def analyze_adalora(run_dir: str | Path, heads: pd.DataFrame, out_dir: str | Path, *, signal: str | None,
                    n_resamples: int, seed: int, level: float, dpi: int, figures: bool) -> tuple[dict | None, list[str]]:
    """Write module_ranks.csv (+ the figure) and return (the `adalora_ranks` block of stats.json, notes)."""
    from peftlab.io import atomic_write_text

    found = read_final_ranks(run_dir)
    if found is None:
        return None, ["AdaLoRA run without a saved final rank pattern (final_summary.json, rank_pattern.jsonl or "
                      "ckpt_final/adapter_config.json): rank vs head measurements not computed; re-run it with --force"]
    ranks, source = found
    table = module_rank_table(heads, ranks)
    if table.empty:
        return None, ["AdaLoRA run adapted no q/k/v/o matrix: no rank to set next to the heads"]
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / MODULE_RANKS_FILE, table.to_csv(index=False))
    result = {
        "signal": signal, "ranks_from": source, "file": MODULE_RANKS_FILE,
        "n_modules": int(len(table)), "module_types": list(dict.fromkeys(table["module"])),
        "aggregate": "sum over the layer's heads; U uses U_q/U_k/U_v/U_o of the matching module where measured",
        "bootstrap": {"unit": "modules", "n_resamples": n_resamples, "seed": seed, "level": level,
                      "method": "percentile"},
        "spearman": rank_vs_heads_stats(table, n_resamples, seed, level),
    }
    notes = []
    if figures:
        result["figure"] = fig_rank_vs_heads(table, result, out_dir / FIGURE, dpi).name
    return result, notes


def fig_rank_vs_heads(table: pd.DataFrame, result: dict, path: str | Path, dpi: int) -> Path:
    """One panel per aggregate: final rank (y) vs the module's summed head measurement (x), coloured by
    module type, with the pooled ρ [CI] and its verdict in the title."""
    from peftlab.analysis.figures import new_figure, save_figure

    present = [a for a in AGGREGATES if np.isfinite(table[f"agg_{a}"].to_numpy(float)).any()]
    fig, axes = new_figure(max(1, len(present)), width=4.4, height=4.0)
    colors = dict(zip(MODULE_TYPES, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    jitter = (table.groupby("final_rank").cumcount().to_numpy() % 5 - 2) * 0.06  # separate equal ranks a little
    for ax, name in zip(axes, present):
        pooled = result["spearman"]["pooled"][name]
        for module in dict.fromkeys(table["module"]):
            rows = table["module"] == module
            ax.scatter(table.loc[rows, f"agg_{name}"], table.loc[rows, "final_rank"] + jitter[rows.to_numpy()],
                       s=22, color=colors.get(module, "grey"), label=module, alpha=0.8)
        rho = "n/a" if pooled["rho"] is None else f"{pooled['rho']:.2f}"
        ci = "" if pooled.get("ci_low") is None else f" [{pooled['ci_low']:.2f}, {pooled['ci_high']:.2f}]"
        ax.set_title(f"pooled ρ = {rho}{ci}\n{pooled['verdict']}", fontsize=8)
        source = pooled.get("from") or name
        if name == "U" and source.startswith("U_"):
            source = "U_<module> (the module's own slice)"
        ax.set_xlabel(f"Σ over the layer's heads of {source}", fontsize=8)
        ax.set_ylabel("final AdaLoRA rank")
        ax.legend(fontsize=7, title="module", title_fontsize=7)
    if not present:
        axes[0].text(0.5, 0.5, "no head measurement to compare with", ha="center", va="center")
    boot = result["bootstrap"]
    fig.suptitle(f"AdaLoRA signal {result.get('signal')}: final rank of q/k/v/o vs head measurements "
                 f"(ρ over {result['n_modules']} modules, 95 % CI: {boot['n_resamples']} resamples of modules, "
                 f"seed {boot['seed']})", fontsize=9)
    return save_figure(fig, path, dpi)


__all__ = ["read_final_ranks", "module_kind", "module_rank_table", "rank_vs_heads_stats", "analyze_adalora",
           "fig_rank_vs_heads", "MODULE_RANKS_FILE", "FIGURE"]
