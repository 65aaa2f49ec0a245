"""What `peftlab adalora compare` shows: the README table (`table.md`) and `compare.png`, from the summary dict.

Reads only the comparison summary and the runs' final_summary.json contents, never a model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from peftlab.analysis.adalora import _save
from peftlab.analysis.dev_chance import chance_caption


def markdown_table(summary: dict) -> str:
    """The README table: per signal (and the LoRA reference) dev score mean ± std over seeds with the 95 % t-CI,
    final total rank, budget_ok on every seed, mean train seconds, and the paired verdicts."""
    def pm(entry):
        if entry.get("mean") is None:
            return "n/a"
        std = entry.get("std")
        text = f"{entry['mean']:.4f}" + (f" ± {std:.4f}" if std is not None else "")
        return text + (f" [{entry['ci_low']:.4f}, {entry['ci_high']:.4f}]" if entry.get("ci_low") is not None else "")

    reference = summary["lora_reference"]
    lora = f"LoRA r={reference['rank']}"
    lines = [f"| {summary['task']} | seeds | dev score mean ± std [95 % t-CI] | vs chance | final total rank | "
             f"budget_ok | train s (mean) | vs baseline_adalora | vs {lora} (equal budget) |", "|---" * 9 + "|"]
    for signal, entry in summary["signals"].items():
        versus = summary["vs_baseline"].get(signal, {}).get("verdict", "—")
        versus_lora = reference["vs_signal"].get(signal, {}).get("verdict", "—") if reference["scores"] else "not run"
        train = entry.get("train_s_mean")
        lines.append(f"| {signal} | {', '.join(str(s) for s in entry['seeds'])} | {pm(entry)} | "
                     f"{entry.get('vs_chance', 'n/a')} | "
                     f"{'/'.join(str(r) for r in entry['total_rank'])} | {entry['budget_ok_all']} | "
                     f"{'n/a' if train is None else f'{train:.0f}'} | {versus} | {versus_lora} |")
    if reference["scores"]:
        values = list(reference["scores"].values())
        std = float(np.std(values, ddof=1)) if len(values) > 1 else None
        lines.append(f"| {lora} on {','.join(reference['targets'] or [])} | {', '.join(str(s) for s in reference['scores'])} | "
                     f"{pm({**reference, 'std': std})} | {reference.get('vs_chance', 'n/a')} | — | — | — | — | — |")
    return "\n".join(lines) + "\n\n" + chance_caption(summary.get("chance") or {}) + "\n"


def compare_figure(per_signal: dict[str, dict[int, dict]], summary: dict, path: Path) -> Path:
    """One heatmap per signal (final rank per layer × module type, mean over seeds), the dev score per signal
    (mean ± 95 % t-CI over seeds, seeds as dots, LoRA reference last) and the pairwise shared-rank overlap."""
    from matplotlib.figure import Figure

    from peftlab.analysis.adalora_heads import module_kind
    from peftlab.arch import CANONICAL_TARGETS

    names = list(per_signal)
    fig = Figure(figsize=(3.2 * len(names) + 9, 4.2), layout="constrained")
    axes = fig.subplots(1, len(names) + 2, width_ratios=[1] * len(names) + [1.6, 1.3])
    grids = {}
    for signal, runs in per_signal.items():
        cells: dict[tuple[int, str], list[int]] = {}
        for summary_of_run in runs.values():
            for module, rank in summary_of_run["ranks"].items():
                kind = module_kind(module, CANONICAL_TARGETS)
                if kind is not None:
                    cells.setdefault(kind, []).append(rank)
        types = [t for t in CANONICAL_TARGETS if any(k[1] == t for k in cells)]
        n_layers = 1 + max((k[0] for k in cells), default=-1)
        grid = np.full((n_layers, len(types)), np.nan)  # [layer, module type]
        for (layer, kind), values in cells.items():
            grid[layer, types.index(kind)] = float(np.mean(values))
        grids[signal] = (grid, types)
    vmax = max((np.nanmax(g) for g, _ in grids.values() if np.isfinite(g).any()), default=1.0)
    for ax, signal in zip(axes, names):
        grid, types = grids[signal]
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=vmax)
        for (i, j), value in np.ndenumerate(grid):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=6, color="white")
        ax.set_xticks(range(len(types)), types, fontsize=7)
        ax.set_yticks(range(grid.shape[0]), [f"L{i}" for i in range(grid.shape[0])], fontsize=7)
        ax.set_title(f"{signal}\nfinal rank (mean over {len(per_signal[signal])} seeds)", fontsize=8)
    fig.colorbar(image, ax=axes[len(names) - 1], label="rank")
    ax = axes[len(names)]
    labels = names + ([f"LoRA r={summary['lora_reference']['rank']}"] if summary["lora_reference"]["scores"] else [])
    for i, label in enumerate(labels):
        entry = summary["signals"][label] if label in summary["signals"] else summary["lora_reference"]
        values = ([s["score"] for s in per_signal[label].values()] if label in per_signal
                  else list(summary["lora_reference"]["scores"].values()))
        ax.plot([i] * len(values), values, "o", color="grey", ms=3, alpha=0.7)
        if entry.get("ci_low") is not None:
            ax.errorbar([i], [entry["mean"]], yerr=[[entry["mean"] - entry["ci_low"]], [entry["ci_high"] - entry["mean"]]],
                        fmt="s", color="black", capsize=4)
        elif entry.get("mean") is not None:
            ax.plot([i], [entry["mean"]], "s", color="black")
    chance = summary.get("chance") or {}
    if chance.get("chance") is not None:  # the computed chance level (analysis/dev_chance.py) and its 95 % band
        ax.axhline(chance["chance"], color="tab:red", lw=1, ls="--",
                   label=f"chance: constant predictor {chance['chance']:.3f}")
        if chance.get("above_chance_threshold") is not None:
            ax.axhline(chance["above_chance_threshold"], color="tab:red", lw=0.8, ls=":",
                       label=f"above chance beyond {chance['above_chance_threshold']:.3f} (95 %)")
        ax.legend(fontsize=6, loc="best")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="dev score (main metric)", title="dev score: mean ± 95 % t-CI over seeds (dots = seeds)")
    ax.title.set_fontsize(8)
    ax = axes[len(names) + 1]
    matrix = np.full((len(names), len(names)), np.nan)  # [signal, signal]
    for key, entry in summary["rank_overlap"].items():
        a, b = key.split("~")
        matrix[names.index(a), names.index(b)] = matrix[names.index(b), names.index(a)] = \
            np.nan if entry["shared_rank_mean"] is None else entry["shared_rank_mean"]
    np.fill_diagonal(matrix, 1.0)
    ax.imshow(matrix, vmin=0, vmax=1, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        if np.isfinite(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value > 0.6 else "black")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_title("shared final rank between signals\nΣ min(r_a, r_b) / budget, mean over seeds", fontsize=8)
    fig.suptitle(f"AdaLoRA signals on {summary['task']}", fontsize=10)
    return _save(fig, path)


__all__ = ["markdown_table", "compare_figure"]
