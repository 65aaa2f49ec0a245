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
from peftlab.analysis.stats import format_rho, pair_key
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
        "taylor_pre": "Taylor importance |∂L/∂g| on θ0",
        "taylor_post": "Taylor importance |∂L/∂g| on θ1",
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


def scatter_panel(ax, heads: pd.DataFrame, x: str, y: str, entry: dict | None = None,
                  highlights: dict[str, list[tuple[int, int]]] | None = None, unit: str = "nats, CE",
                  diagonal: bool = False, title: str | None = None) -> None:
    """Heads as points coloured by layer; counter-example heads ringed and labelled 'L{layer}H{head}'."""
    from matplotlib import colormaps

    n_layers = int(heads["layer"].max()) + 1
    cmap = colormaps["viridis"]
    colors = cmap(heads["layer"].to_numpy() / max(n_layers - 1, 1))
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
                diagonal: bool = False) -> Path:
    """One scatter panel per (x, y) pair, titled with that pair's ρ and CI from `stats`."""
    fig, axes = new_figure(len(panels))
    highlights = case_heads(cases) if cases else None
    for ax, (x, y) in zip(axes, panels):
        scatter_panel(ax, heads, x, y, stats["spearman"].get(pair_key(x, y)), highlights, unit, diagonal)
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


def topk_bars(ax, series: dict[str, dict], title: str | None = None) -> None:
    """Top-K overlap per pair (grouped by run) against the chance level K²/n; `series` = {label: stats['topk']}."""
    first = next(iter(series.values()))
    pairs = list(first["pairs"])
    width = 0.8 / max(len(series), 1)
    for s, (label, topk) in enumerate(series.items()):
        xs = [i + (s - (len(series) - 1) / 2) * width for i in range(len(pairs))]
        bars = ax.bar(xs, [topk["pairs"].get(p, {}).get("overlap", 0) for p in pairs], width=width, label=label,
                      alpha=0.8)
        ax.bar_label(bars, fontsize=7)  # a zero-height bar is otherwise invisible
    ax.axhline(first["expected_by_chance"], color="grey", linestyle="--",
               label=f"chance K²/n = {first['expected_by_chance']:.2f}")
    ax.set_xticks(range(len(pairs)), pairs, fontsize=8)
    ax.set_ylim(0, first["k"])
    ax.set_ylabel(f"heads in both top-{first['k']} sets (count)")
    ax.set_title(title or f"top-K overlap (K = {first['k']} of {first['n']} heads)", fontsize=9)
    ax.legend(fontsize=7)


def case_bars(ax, series: dict[str, dict], expected: float | None = None) -> None:
    """Counter-example counts per run; `series` = {label: stats['counter_examples']}."""
    names = ["important_static", "plastic_unimportant"]
    width = 0.8 / max(len(series), 1)
    for s, (label, counts) in enumerate(series.items()):
        xs = [i + (s - (len(series) - 1) / 2) * width for i in range(len(names))]
        bars = ax.bar(xs, [counts[n] for n in names], width=width, label=label, alpha=0.8)
        ax.bar_label(bars, fontsize=7)
    if expected is not None:
        ax.axhline(expected, color="grey", linestyle="--", label=f"expected if independent ≈ {expected:.1f}")
    counts = next(iter(series.values()))
    ax.set_xticks(range(len(names)), ["important but static", "plastic but unimportant"], fontsize=8)
    ax.set_ylabel("heads (count)")
    ax.set_title(f"counter-examples (q_hi = {counts['q_hi']}, q_lo = {counts['q_lo']})", fontsize=9)
    ax.legend(fontsize=7)


def fig_stats(stats: dict, cases: dict, path: str | Path, label: str, dpi: int = DEFAULT_DPI) -> Path:
    """Three panels: Spearman ρ with CIs, top-K overlap vs chance, counter-example counts."""
    fig, axes = new_figure(3, width=4.6)
    spearman_bars(axes[0], {label: stats["spearman"]})
    topk_bars(axes[1], {label: stats["topk"]})
    case_bars(axes[2], {label: stats["counter_examples"]}, cases.get("expected_by_chance"))
    fig.suptitle(f"{label}: statistics over heads ({stats['bootstrap']['n_resamples']} bootstrap resamples, "
                 f"seed {stats['bootstrap']['seed']})", fontsize=11)
    return save_figure(fig, path, dpi)


def fig_heatmaps(heads: pd.DataFrame, n_layers: int, n_heads: int, path: str | Path, unit: str, label: str,
                 dpi: int = DEFAULT_DPI) -> Path:
    """Layer × head maps of I_pre, G, U, I_post (those measured)."""
    columns = [c for c in ("I_pre", "G", "U", "I_post") if c in heads]
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


# figure file → (panels, needed columns, diagonal)
SCATTER_FIGURES: dict[str, tuple[tuple[tuple[str, str], ...], bool]] = {
    "fig_I_vs_U.png": ((("I_pre", "U"), ("I_pre", "Urel")), False),
    "fig_I_vs_G.png": ((("I_pre", "G"), ("G", "U")), False),
    "fig_Ipre_vs_Ipost.png": ((("I_pre", "I_post"),), True),
    "fig_Ipost_corrs.png": ((("I_post", "U"), ("I_post", "G")), False),
}
FIGURE_FILES = (*SCATTER_FIGURES, "fig_stats.png", "fig_heatmaps.png")


def run_figures(heads: pd.DataFrame, n_layers: int, n_heads: int, stats: dict, cases: dict, out_dir: str | Path,
                unit: str, label: str, dpi: int = DEFAULT_DPI) -> tuple[list[Path], list[str]]:
    """Draw every per-run figure whose columns exist; returns (written paths, notes on skipped figures)."""
    out_dir = Path(out_dir)
    written: list[Path] = []
    notes: list[str] = []
    for name, (panels, diagonal) in SCATTER_FIGURES.items():
        usable = [(x, y) for x, y in panels if x in heads and y in heads]
        if not usable:
            missing = sorted({c for p in panels for c in p if c not in heads})
            notes.append(f"{name} not drawn: {', '.join(missing)} not measured")
            continue
        title = f"{label}: " + ", ".join(f"{y} vs {x}" for x, y in usable)
        written.append(fig_scatter(heads, usable, stats, cases, out_dir / name, unit, title, dpi, diagonal))
    written.append(fig_stats(stats, cases, out_dir / "fig_stats.png", label, dpi))
    written.append(fig_heatmaps(heads, n_layers, n_heads, out_dir / "fig_heatmaps.png", unit, label, dpi))
    return written, notes

