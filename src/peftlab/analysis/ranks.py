"""`peftlab compare-ranks --task RTE --seed 1 --ranks 4 8 16 32`: score, cost and head statistics vs LoRA rank.

Writes `<out>/RANK_COMPARISON/<TASK>/seed<S>/` (`seed<S>_<METHOD>` for a method other than LoRA):
rank_comparison.json, rank_comparison.csv, fig_rank_comparison.png. Per rank: the dev score,
trainable parameters and training time (from final_metrics.json: `score`, `trainable_params`,
`timing.train_s`), and the key Spearman correlations with their 95 % bootstrap CIs and top-K overlaps
(from each run's stats.json). The FFT run of the same seed, when present, is included as a reference
row (rank = None) and drawn as dashed lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from peftlab.analysis.analyze import load_analysis
from peftlab.analysis.figures import DEFAULT_DPI, new_figure, save_figure
from peftlab.analysis.tables import canonical_task, read_run_meta, run_dir_for_label, train_command
from peftlab.errors import PeftlabError
from peftlab.io import atomic_write_json, atomic_write_text

KEY_PAIRS = ("I_pre~U", "I_pre~Urel", "I_pre~G", "I_post~U")


def rank_row(run_dir: Path, rank: int | None, **analyze_kwargs) -> dict[str, Any]:
    """One row of the rank table from a run's final_metrics.json and stats.json."""
    _, stats, _ = load_analysis(run_dir, **analyze_kwargs)
    final = read_run_meta(run_dir).final or {}
    row: dict[str, Any] = {"rank": rank, "label": stats["run"]["label"], "run_dir": str(run_dir),
                           "score": final.get("score"), "main_metric": final.get("main_metric"),
                           "trainable_params": final.get("trainable_params"),
                           "train_s": (final.get("timing") or {}).get("train_s")}
    for key in KEY_PAIRS:
        entry = stats["spearman"].get(key) or {}
        row[f"rho:{key}"] = entry.get("rho")
        row[f"ci_low:{key}"] = entry.get("ci_low")
        row[f"ci_high:{key}"] = entry.get("ci_high")
    for key, entry in stats["topk"]["pairs"].items():
        row[f"topk:{key}"] = entry["overlap"]
    row["topk_k"] = stats["topk"]["k"]
    row["cases:important_static"] = stats["counter_examples"]["important_static"]
    row["cases:plastic_unimportant"] = stats["counter_examples"]["plastic_unimportant"]
    return row


def compare_ranks(task: str, seed: int, ranks: list[int], out: str | Path = "outputs", *, method: str = "LoRA",
                  dpi: int = DEFAULT_DPI, **analyze_kwargs) -> Path:
    """Tabulate and plot one low-rank method across ranks; returns the output directory."""
    if not ranks:
        raise PeftlabError("no ranks given; pass e.g. --ranks 4 8 16 32")
    task = canonical_task(task)
    ranks = sorted(dict.fromkeys(int(r) for r in ranks))
    run_dirs = {r: run_dir_for_label(out, task, f"{method}_r{r}", seed) for r in ranks}
    missing = [train_command(task, d.parent.parent.name, seed, r, out) for r, d in run_dirs.items()
               if not (d / "run_config.json").is_file()]
    if missing:
        raise PeftlabError(f"{len(missing)} run(s) missing under {out}; create them with: " + " ; ".join(missing))
    rows = [rank_row(d, r, dpi=dpi, **analyze_kwargs) for r, d in run_dirs.items()]
    reference = None
    fft_dir = run_dir_for_label(out, task, "FFT", seed)
    if (fft_dir / "run_config.json").is_file() and (fft_dir / "importance_pre.jsonl").is_file():
        reference = rank_row(fft_dir, None, dpi=dpi, **analyze_kwargs)

    name = f"seed{seed}" if method.lower() == "lora" else f"seed{seed}_{method}"
    from peftlab.runs import safe_output_path

    out_dir = safe_output_path(out, "RANK_COMPARISON", task, name)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows + ([reference] if reference else []))
    table["rank"] = table["rank"].astype("Int64")  # the FFT reference row has no rank: keep ints, not floats
    result = {"task": task, "seed": seed, "method": method, "ranks": ranks, "rows": rows, "reference": reference,
              "ci": "95 % percentile bootstrap over heads (from each run's stats.json)"}
    fig_rank_comparison(rows, reference, out_dir / "fig_rank_comparison.png", f"{task}, seed {seed}, {method}", dpi)
    atomic_write_text(out_dir / "rank_comparison.csv", table.to_csv(index=False))
    atomic_write_json(out_dir / "rank_comparison.json", result)  # last: its presence means complete
    return out_dir


def fig_rank_comparison(rows: list[dict], reference: dict | None, path: str | Path, title: str,
                        dpi: int = DEFAULT_DPI) -> Path:
    """Four panels against rank (log2 axis): dev score, trainable parameters, training time, key ρ with CIs."""
    fig, axes = new_figure(4, width=4.6, height=3.8, rows=2)
    ranks = [r["rank"] for r in rows]
    panels = (("score", f"dev {rows[0].get('main_metric') or 'score'}"),
              ("trainable_params", "trainable parameters (count)"), ("train_s", "training time (s)"))
    for ax, (key, ylabel) in zip(axes, panels):
        ax.plot(ranks, [r[key] for r in rows], marker="o", label=rows[0]["label"].rsplit("_r", 1)[0])
        if reference and reference.get(key) is not None:
            ax.axhline(reference[key], color="grey", linestyle="--", label=f"{reference['label']} (reference)")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    axes[1].set_yscale("log")
    for i, key in enumerate(("I_pre~U", "I_pre~Urel", "I_post~U")):
        shift = 2 ** (0.06 * (i - 1))  # a small sideways offset on the log2 axis keeps the CI bars apart
        points = [(r["rank"] * shift, r[f"rho:{key}"], r[f"ci_low:{key}"], r[f"ci_high:{key}"]) for r in rows
                  if r.get(f"rho:{key}") is not None]
        if not points:
            continue
        xs, rho, low, high = zip(*points)
        yerr = [[p - (lo if lo is not None else p) for p, lo in zip(rho, low)],
                [(hi if hi is not None else p) - p for p, hi in zip(rho, high)]]  # [2, n_ranks]
        axes[3].errorbar(xs, rho, yerr=yerr, marker="o", capsize=3, label=key)
    axes[3].axhline(0, color="black", linewidth=0.8)
    axes[3].set_ylim(-1, 1)
    axes[3].set_ylabel("Spearman ρ over heads, 95 % CI")
    axes[3].legend(fontsize=7)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [str(r) for r in ranks])
        ax.set_xlabel("LoRA rank r")
        ax.grid(alpha=0.25)
    fig.suptitle(f"rank comparison: {title}", fontsize=11)
    return save_figure(fig, path, dpi)
