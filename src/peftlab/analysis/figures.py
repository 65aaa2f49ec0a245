"""The per-run figures of `peftlab analyze`, drawn from a saved heads table (never a model).

Figures are built on `matplotlib.figure.Figure` objects (Agg canvas, no pyplot global state) and
written atomically. Every axis carries its unit; counter-example heads are annotated 'L{layer}H{head}';
scatter titles carry Spearman ρ with its 95 % bootstrap CI.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from peftlab.analysis.cases import case_heads
from peftlab.analysis.stats import format_rho, importance_column, measured, pair_key, resolve_pair
from peftlab.analysis.tables import head_label
from peftlab.io import atomic_write_bytes

DEFAULT_DPI = 150
CASE_STYLE = {  # counter-example set → (edge colour, legend text)
    "important_static": ("crimson", "important but static"),
    "plastic_unimportant": ("darkorange", "plastic but unimportant"),
}


def new_figure(n_panels: int, width: float = 5.2, height: float = 4.4, rows: int = 1):
    """A Figure with `n_panels` axes in `rows` rows (returns (fig, flat list of axes))."""
    from matplotlib.figure import Figure

    cols = int(np.ceil(n_panels / rows))
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def save_figure(fig, path: str | Path, dpi: int = DEFAULT_DPI) -> Path:
    """Render to PNG in memory, then write atomically (a half-written PNG is never visible)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return atomic_write_bytes(path, buffer.getvalue())


def axis_label(column: str, unit: str = "nats, CE") -> str:
    """Axis text with the quantity's definition and unit."""
    labels = {
        "I_pre": f"I_pre = ΔL when ablated, on θ0 ({unit})",
        "I_post": f"I_post = ΔL when ablated, on θ1 ({unit})",
        "G": "G = mean |∂L/∂g| over examples, on θ0",
        "F": "F = mean (∂L/∂g)² over examples, on θ0",
        "U": "U = ‖ΔW‖_F over the head's Q/K/V/O slices",
        "Urel": "Urel = ‖ΔW‖_F / ‖W0‖_F",
        "taylor_pre": "Taylor score |∂L/∂g| on θ0 (not exact I)",
        "taylor_post": "Taylor score |∂L/∂g| on θ1 (not exact I)",
        "dL_dgate_pre": "∂L/∂g at g = 1, on θ0",
        "dL_dgate_post": "∂L/∂g at g = 1, on θ1",
    }
    if column in labels:
        return labels[column]
    if column.startswith("U_"):
        return f"{column} = ‖ΔW_{column[2:]}‖_F of the head's slice"
    return column


def rho_title(x: str, y: str, entry: dict | None) -> str:
    """'U vs I_pre: ρ = 0.31 [0.12, 0.48] (95 % CI), p = 0.002, n = 72'."""
    if not entry or entry.get("rho") is None:
        return f"{y} vs {x}: ρ = n/a"
    return f"{y} vs {x}: {format_rho(entry)} (95 % CI)\np = {entry['p']:.2g}, n = {entry['n']}"


def _ci_whiskers(heads: pd.DataFrame, col: str) -> np.ndarray | None:
    """[2, n] lower/upper whisker lengths from `<col>_ci_low/_ci_high` (None when not measured)."""
    low, high = f"{col}_ci_low", f"{col}_ci_high"
    if not (measured(heads, low) and measured(heads, high)):
        return None
    values = heads[col].to_numpy(float)
    return np.nan_to_num(np.vstack([values - heads[low].to_numpy(float), heads[high].to_numpy(float) - values]))


def scatter_panel(ax, heads: pd.DataFrame, x: str, y: str, entry: dict | None = None,
                  highlights: dict[str, list[tuple[int, int]]] | None = None, unit: str = "nats, CE",
                  diagonal: bool = False, title: str | None = None, error_bars: bool = False) -> None:
    """Heads as points coloured by layer; counter-example heads ringed and labelled 'L{layer}H{head}'.

    `error_bars`: draw each head's 95 % t-interval over examples (`<col>_ci_low/_ci_high`) where measured.
    """
    from matplotlib import colormaps

    n_layers = int(heads["layer"].max()) + 1
    cmap = colormaps["viridis"]
    colors = cmap(heads["layer"].to_numpy() / max(n_layers - 1, 1))
    if error_bars:
        xerr, yerr = _ci_whiskers(heads, x), _ci_whiskers(heads, y)
        if xerr is not None or yerr is not None:
            ax.errorbar(heads[x], heads[y], xerr=xerr, yerr=yerr, fmt="none", ecolor="grey", elinewidth=0.6,
                        alpha=0.5, label="per-head 95 % CI over examples")
    ax.scatter(heads[x], heads[y], c=colors, s=22, alpha=0.85, linewidths=0)
    for name, keys in (highlights or {}).items():
        color, text = CASE_STYLE[name]
        picked = heads.set_index(["layer", "head"]).loc[keys] if keys else None
        if picked is None or picked.empty:
            continue
        ax.scatter(picked[x], picked[y], s=70, facecolors="none", edgecolors=color, linewidths=1.4,
                   label=f"{text} ({len(keys)})")
        for (layer, head), row in picked.iterrows():
            ax.annotate(head_label(layer, head), (row[x], row[y]), fontsize=7, color=color,
                        xytext=(3, 3), textcoords="offset points")
    if diagonal:
        lo = float(np.nanmin([heads[x].min(), heads[y].min()]))
        hi = float(np.nanmax([heads[x].max(), heads[y].max()]))
        ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=0.8, label="y = x")
    ax.set_xlabel(axis_label(x, unit))
    ax.set_ylabel(axis_label(y, unit))
    ax.set_title(title or rho_title(x, y, entry), fontsize=9)
    ax.grid(alpha=0.25)
    # a layer key without pyplot: one invisible point per layer gives a compact legend
    for layer in range(n_layers):
        ax.scatter([], [], color=cmap(layer / max(n_layers - 1, 1)), s=14, label=f"layer {layer}")
    ax.legend(fontsize=6, ncol=2, loc="best", framealpha=0.7)


def fig_scatter(heads: pd.DataFrame, panels: Sequence[tuple[str, str]], stats: dict, cases: dict | None,
                path: str | Path, unit: str, suptitle: str, dpi: int = DEFAULT_DPI,
                diagonal: bool = False, error_bars: bool = False) -> Path:
    """One scatter panel per (x, y) pair, titled with that pair's ρ and CI from `stats`."""
    fig, axes = new_figure(len(panels))
    highlights = case_heads(cases) if cases else None
    for ax, (x, y) in zip(axes, panels):
        scatter_panel(ax, heads, x, y, stats["spearman"].get(pair_key(x, y)), highlights, unit, diagonal,
                      error_bars=error_bars)
    fig.suptitle(suptitle, fontsize=11)
    return save_figure(fig, path, dpi)


def spearman_bars(ax, series: dict[str, dict[str, dict]], title: str = "Spearman ρ with 95 % bootstrap CI") -> None:
    """Horizontal bars of ρ with CI whiskers; `series` = {run label: {pair_key: entry}} (grouped bars)."""
    pairs = list(dict.fromkeys(k for entries in series.values() for k in entries))
    n_series = max(len(series), 1)
    height = 0.8 / n_series
    for s, (label, entries) in enumerate(series.items()):
        ys, rhos, err = [], [], []
        for i, key in enumerate(pairs):
            entry = entries.get(key)
            if not entry or entry.get("rho") is None:
                continue
            ys.append(i + (s - (n_series - 1) / 2) * height)
            rhos.append(entry["rho"])
            low = entry.get("ci_low", entry["rho"]) if entry.get("ci_low") is not None else entry["rho"]
            high = entry.get("ci_high", entry["rho"]) if entry.get("ci_high") is not None else entry["rho"]
            err.append((entry["rho"] - low, high - entry["rho"]))
        err_array = np.array(err, float).T if err else None  # [2, n_pairs]: lower, upper whisker lengths
        ax.barh(ys, rhos, height=height, xerr=err_array, capsize=3, label=label, alpha=0.8)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(pairs)), pairs, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(-1, 1)
    ax.set_xlabel("Spearman ρ over heads (−1 … 1)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.25)
    if len(series) > 1:
        ax.legend(fontsize=7)


def _chance_marks(ax, xs: list[float], chances: list[dict | None], label: str | None) -> None:
    """Permutation chance level per bar: a black diamond at the null mean, whiskers = its 95 % interval."""
    points = [(x, c) for x, c in zip(xs, chances) if c]
    if not points:
        return
    xs_, cs = zip(*points)
    mean = np.array([c["expected"] for c in cs])
    err = np.array([[c["expected"] - c["ci_low"] for c in cs], [c["ci_high"] - c["expected"] for c in cs]])  # [2, m]
    ax.errorbar(xs_, mean, yerr=err, fmt="D", color="black", markersize=4, capsize=3, label=label)


def _chance_label(chance: dict | None) -> str | None:
    if not chance:
        return None
    return (f"chance: permutation mean, {chance['level']:.0%} interval "
            f"({chance['n_permutations']} shuffles, seed {chance['seed']})")


def topk_bars(ax, series: dict[str, dict], title: str | None = None) -> None:
    """Top-K overlap per pair (grouped by run) against its permutation chance level; `series` = {label: stats['topk']}."""
    first = next(iter(series.values()))
    pairs = list(dict.fromkeys(p for topk in series.values() for p in topk["pairs"]))
    width = 0.8 / max(len(series), 1)
    label = None
    for s, (name, topk) in enumerate(series.items()):
        xs = [i + (s - (len(series) - 1) / 2) * width for i in range(len(pairs))]
        bars = ax.bar(xs, [topk["pairs"].get(p, {}).get("overlap", 0) for p in pairs], width=width, label=name,
                      alpha=0.8)
        ax.bar_label(bars, fontsize=7)  # a zero-height bar is otherwise invisible
        chances = [topk["pairs"].get(p, {}).get("chance") for p in pairs]
        label = label or _chance_label(next((c for c in chances if c), None))
        _chance_marks(ax, xs, chances, label if s == 0 else None)
    ax.set_xticks(range(len(pairs)), pairs, fontsize=8)
    ax.set_ylim(0, first["k"])
    ax.set_ylabel(f"heads in both top-{first['k']} sets (count)")
    ax.set_title(title or f"top-K overlap (K = {first['k']} of {first['n']} heads)", fontsize=9)
    ax.legend(fontsize=6)


def case_bars(ax, series: dict[str, dict]) -> None:
    """Counter-example counts per run against their permutation chance; `series` = {label: stats['counter_examples']}."""
    names = ["important_static", "plastic_unimportant"]
    width = 0.8 / max(len(series), 1)
    for s, (label, counts) in enumerate(series.items()):
        xs = [i + (s - (len(series) - 1) / 2) * width for i in range(len(names))]
        values = [counts[n] for n in names]  # None: the set is not defined for this run (no U)
        bars = ax.bar(xs, [0 if v is None else v for v in values], width=width, label=label, alpha=0.8)
        ax.bar_label(bars, labels=["n/a" if v is None else str(v) for v in values], fontsize=7)
        chances = [(counts.get("chance") or {}).get(n) for n in names]
        _chance_marks(ax, xs, chances, _chance_label(chances[0]) if s == 0 else None)
    counts = next(iter(series.values()))
    imp = counts.get("importance", "I_pre")
    ax.set_xticks(range(len(names)), ["important but static", "plastic but unimportant"], fontsize=8)
    ax.set_ylabel("heads (count)")
    ax.set_title(f"counter-examples by {imp} (q_hi = {counts['q_hi']}, q_lo = {counts['q_lo']})", fontsize=9)
    ax.legend(fontsize=6)


def fig_stats(stats: dict, cases: dict, path: str | Path, label: str, dpi: int = DEFAULT_DPI) -> Path:
    """Three panels: Spearman ρ with CIs, top-K overlap vs chance, counter-example counts vs chance."""
    fig, axes = new_figure(3, width=4.6)
    spearman_bars(axes[0], {label: stats["spearman"]})
    topk_bars(axes[1], {label: stats["topk"]})
    case_bars(axes[2], {label: stats["counter_examples"]})
    fig.suptitle(f"{label}: statistics over heads ({stats['bootstrap']['n_resamples']} bootstrap resamples, "
                 f"seed {stats['bootstrap']['seed']})", fontsize=11)
    return save_figure(fig, path, dpi)


def fig_importance_ci(heads: pd.DataFrame, stats: dict, path: str | Path, unit: str, label: str,
                      dpi: int = DEFAULT_DPI) -> Path:
    """Per-head exact importance with its 95 % t-interval over examples, one panel per measured phase.

    Heads in (layer, head) order on the x axis; heads whose I differs from 0 after Benjamini–Hochberg
    are drawn in colour (red > 0, blue < 0), the rest grey.
    """
    phases = [p for p in ("pre", "post") if measured(heads, f"I_{p}") and measured(heads, f"I_{p}_ci_low")]
    fig, axes = new_figure(len(phases), width=7.5, height=3.6, rows=len(phases))
    position = np.arange(len(heads))
    labels = [head_label(layer, head) for layer, head in zip(heads["layer"], heads["head"])]
    for ax, phase in zip(axes, phases):
        col = f"I_{phase}"
        sig = stats.get("significance", {}).get(col, {})
        pos, neg = set(sig.get("positive_heads", [])), set(sig.get("negative_heads", []))
        colors = ["crimson" if lab in pos else "royalblue" if lab in neg else "grey" for lab in labels]
        err = _ci_whiskers(heads, col)  # [2, n]
        for color in dict.fromkeys(colors):
            keep = np.array([c == color for c in colors])
            ax.errorbar(position[keep], heads[col].to_numpy(float)[keep], yerr=err[:, keep], fmt="o", markersize=3,
                        color=color, elinewidth=0.8, capsize=1.5,
                        label={"crimson": "significantly > 0", "royalblue": "significantly < 0",
                               "grey": "not distinguishable from 0"}[color])
        ax.axhline(0, color="black", linewidth=0.8)
        n_heads = int(heads["head"].max()) + 1
        for boundary in range(n_heads, len(heads), n_heads):
            ax.axvline(boundary - 0.5, color="lightgrey", linewidth=0.6)
        ax.set_xticks(position[::n_heads], [f"L{layer}" for layer in heads["layer"].to_numpy()[::n_heads]],
                      fontsize=7)
        ax.set_xlabel("head, in (layer, head) order")
        ax.set_ylabel(axis_label(col, unit), fontsize=7)
        text = sig.get("message", "significance not computed")
        ax.set_title(f"{col} ± 95 % t-interval over {sig.get('n_examples', '?')} examples — {text}", fontsize=8)
        ax.legend(fontsize=6)
    fig.suptitle(f"{label}: per-head exact importance with uncertainty", fontsize=11)
    return save_figure(fig, path, dpi)


def fig_heatmaps(heads: pd.DataFrame, n_layers: int, n_heads: int, path: str | Path, unit: str, label: str,
                 dpi: int = DEFAULT_DPI) -> Path:
    """Layer × head maps of importance (pre), G, U, importance (post): exact I, or the Taylor column by name."""
    columns = [c for c in (importance_column(heads, "pre"), "G", "U", importance_column(heads, "post"))
               if c is not None and measured(heads, c)]
    fig, axes = new_figure(len(columns), width=5.0, height=3.6, rows=2 if len(columns) > 2 else 1)
    ordered = heads.sort_values(["layer", "head"])
    for ax, col in zip(axes, columns):
        grid = ordered[col].to_numpy().reshape(n_layers, n_heads)  # [n_layers, n_heads]
        diverging = col.startswith("I_") and np.nanmin(grid) < 0  # ΔL can be negative: centre on 0
        if diverging:
            bound = float(np.nanmax(np.abs(grid)))
            image = ax.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound)
        else:
            image = ax.imshow(grid, aspect="auto", cmap="magma")
        fig.colorbar(image, ax=ax, shrink=0.85).set_label(axis_label(col, unit), fontsize=7)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(n_heads))
        ax.set_yticks(range(n_layers))
        ax.tick_params(labelsize=7)
        ax.set_title(col, fontsize=10)
    fig.suptitle(f"{label}: per-head maps (layer × head)", fontsize=11)
    return save_figure(fig, path, dpi)


# figure file → (panels, diagonal, per-head error bars). I_pre / I_post stand for the importance column
# actually measured (exact, else Taylor under its own name: see stats.resolve_pair).
SCATTER_FIGURES: dict[str, tuple[tuple[tuple[str, str], ...], bool, bool]] = {
    "fig_I_vs_U.png": ((("I_pre", "U"), ("I_pre", "Urel")), False, False),
    "fig_I_vs_G.png": ((("I_pre", "G"), ("G", "U")), False, False),
    "fig_Ipre_vs_Ipost.png": ((("I_pre", "I_post"),), True, True),
    "fig_Ipost_corrs.png": ((("I_post", "U"), ("I_post", "G")), False, False),
}
FIGURE_FILES = (*SCATTER_FIGURES, "fig_stats.png", "fig_heatmaps.png", "fig_importance_ci.png")


def run_figures(heads: pd.DataFrame, n_layers: int, n_heads: int, stats: dict, cases: dict, out_dir: str | Path,
                unit: str, label: str, dpi: int = DEFAULT_DPI) -> tuple[list[Path], list[str]]:
    """Draw every per-run figure whose columns exist; returns (written paths, notes on skipped figures)."""
    out_dir = Path(out_dir)
    written: list[Path] = []
    notes: list[str] = []
    for name, (panels, diagonal, error_bars) in SCATTER_FIGURES.items():
        resolved = [resolve_pair(heads, x, y) for x, y in panels]
        usable = [(x, y) for x, y, why in resolved if not why]
        if not usable:
            notes.append(f"{name} not drawn: " + "; ".join(why for _, _, why in resolved if why))
            continue
        title = f"{label}: " + ", ".join(f"{y} vs {x}" for x, y in usable)
        written.append(fig_scatter(heads, usable, stats, cases, out_dir / name, unit, title, dpi, diagonal,
                                   error_bars))
    written.append(fig_stats(stats, cases, out_dir / "fig_stats.png", label, dpi))
    written.append(fig_heatmaps(heads, n_layers, n_heads, out_dir / "fig_heatmaps.png", unit, label, dpi))
    if any(measured(heads, f"I_{p}") and measured(heads, f"I_{p}_ci_low") for p in ("pre", "post")):
        written.append(fig_importance_ci(heads, stats, out_dir / "fig_importance_ci.png", unit, label, dpi))
    else:
        notes.append("fig_importance_ci.png not drawn: no per-head confidence interval of exact I measured "
                     "(older measurement files)")
    return written, notes

