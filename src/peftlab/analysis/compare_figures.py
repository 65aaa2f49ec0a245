"""The figures of `peftlab compare`: two runs of one task, seed and model, drawn from their saved tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from peftlab.analysis.cases import case_heads
from peftlab.analysis.figures import (DEFAULT_DPI, axis_label, case_bars, new_figure, rho_title, save_figure,
                                      scatter_panel, spearman_bars, topk_bars)
from peftlab.analysis.stats import format_rho



def is_post_pair(key: str) -> bool:
    """Pairs involving importance on θ1 (I_post or taylor_post) go to the post-training panel."""
    return "post" in key


def fig_compare_I_vs_U(runs: dict[str, tuple[pd.DataFrame, dict, dict]], path: str | Path, unit: str,
                       dpi: int = DEFAULT_DPI) -> Path:
    """U vs importance on θ0 side by side, one panel per run; `runs` = {label: (heads, stats, cases)}.

    Importance is exact I_pre, or — only where exact was not measured — taylor_pre, named as such.
    """
    fig, axes = new_figure(len(runs))
    names = []
    for ax, (label, (heads, stats, cases)) in zip(axes, runs.items()):
        imp = (stats.get("importance_columns") or {}).get("pre") or "I_pre"
        names.append(imp)
        entry = stats["spearman"].get(f"{imp}~U")
        scatter_panel(ax, heads, imp, "U", entry, case_heads(cases), unit,
                      title=f"{label} — {rho_title(imp, 'U', entry)}")
    fig.suptitle(f"U vs {' / '.join(dict.fromkeys(names))} per method (counter-example heads ringed)", fontsize=11)
    return save_figure(fig, path, dpi)


def fig_compare_stats(runs: dict[str, tuple[pd.DataFrame, dict, dict]], path: str | Path,
                      dpi: int = DEFAULT_DPI) -> Path:
    """Four panels: Spearman with CIs, top-K overlap, counter-example counts, post-importance correlations."""
    fig, axes = new_figure(4, width=5.4, height=4.2, rows=2)
    stats = {label: s for label, (_, s, _) in runs.items()}
    spearman_bars(axes[0], {label: {k: v for k, v in s["spearman"].items() if not is_post_pair(k)}
                            for label, s in stats.items()}, "importance vs plasticity/update: ρ, 95 % CI")
    topk_bars(axes[1], {label: s["topk"] for label, s in stats.items()})
    case_bars(axes[2], {label: s["counter_examples"] for label, s in stats.items()})
    post = {label: {k: v for k, v in s["spearman"].items() if is_post_pair(k)} for label, s in stats.items()}
    if any(post.values()):
        spearman_bars(axes[3], post, "post-training importance: ρ, 95 % CI")
    else:
        axes[3].text(0.5, 0.5, "I_post not measured\n(peftlab measure RUN --steps importance_post)",
                     ha="center", va="center", transform=axes[3].transAxes)
        axes[3].set_axis_off()
    fig.suptitle(" vs ".join(runs) + ": statistics over heads", fontsize=11)
    return save_figure(fig, path, dpi)


def _no_minor_labels(ax) -> None:
    """Log axes label minor ticks when a range spans < 1 decade; those labels collide, so drop them."""
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())


def _log10_positive(values: pd.Series) -> np.ndarray:
    values = values.to_numpy(float)
    return np.log10(values[np.isfinite(values) & (values > 0)])


def fig_update_dist(runs: dict[str, pd.DataFrame], path: str | Path, dpi: int = DEFAULT_DPI) -> Path:
    """Distribution of per-head update size: histograms of log10 U and log10 Urel, and median Urel per layer."""
    fig, axes = new_figure(3, width=4.8, height=4.0)
    for col, ax in zip(("U", "Urel"), axes[:2]):
        logs = {label: _log10_positive(heads[col]) for label, heads in runs.items()}
        finite = np.concatenate([v for v in logs.values() if v.size]) if any(v.size for v in logs.values()) else None
        bins = np.linspace(finite.min(), finite.max(), 25) if finite is not None and finite.size else 10
        for label, values in logs.items():
            ax.hist(values, bins=bins, alpha=0.55, label=f"{label} (median {10 ** np.median(values):.3g})")
        ax.set_xlabel(f"log10 {axis_label(col)}")
        ax.set_ylabel("heads (count)")
        ax.set_title(f"distribution of {col} over heads", fontsize=9)
        ax.legend(fontsize=7)
    for label, heads in runs.items():
        per_layer = heads.groupby("layer")["Urel"].median()
        axes[2].plot(per_layer.index, per_layer.to_numpy(), marker="o", label=label)
    axes[2].set_yscale("log")
    _no_minor_labels(axes[2])
    axes[2].set_xlabel("layer")
    axes[2].set_ylabel("median Urel = ‖ΔW‖_F / ‖W0‖_F (log scale)")
    axes[2].set_title("relative update by layer", fontsize=9)
    axes[2].legend(fontsize=7)
    fig.suptitle("how much each method moved the attention heads", fontsize=11)
    return save_figure(fig, path, dpi)


def fig_headwise(pair_heads: pd.DataFrame, labels: tuple[str, str], headwise: dict[str, dict], path: str | Path,
                 unit: str, dpi: int = DEFAULT_DPI) -> Path:
    """The same head under both methods: U_A vs U_B (log–log) and I_post_A vs I_post_B (with y = x).

    `pair_heads` holds `<col>_a`, `<col>_b` columns aligned on (layer, head).
    """
    columns = [c for c in ("U", "I_post") if f"{c}_a" in pair_heads and f"{c}_b" in pair_heads
               and pair_heads[f"{c}_a"].notna().any() and pair_heads[f"{c}_b"].notna().any()]
    fig, axes = new_figure(len(columns))
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    n_layers = int(pair_heads["layer"].max()) + 1
    colors = cmap(pair_heads["layer"].to_numpy() / max(n_layers - 1, 1))
    for ax, col in zip(axes, columns):
        x, y = pair_heads[f"{col}_a"], pair_heads[f"{col}_b"]
        ax.scatter(x, y, c=colors, s=22, alpha=0.85, linewidths=0)
        if col == "U" and (x > 0).all() and (y > 0).all():
            ax.set_xscale("log")
            ax.set_yscale("log")
            _no_minor_labels(ax)
        else:
            lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
            ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=0.8, label="y = x")
            ax.legend(fontsize=7)
        ax.set_xlabel(f"{labels[0]}: {axis_label(col, unit)}")
        ax.set_ylabel(f"{labels[1]}: {axis_label(col, unit)}")
        entry = headwise.get(col)
        ax.set_title(f"same head, {col}: {format_rho(entry)} (95 % CI)", fontsize=9)
        ax.grid(alpha=0.25)
    fig.suptitle(f"head by head: {labels[0]} vs {labels[1]} (colour = layer)", fontsize=11)
    return save_figure(fig, path, dpi)
