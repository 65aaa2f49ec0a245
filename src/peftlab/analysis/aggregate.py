"""`peftlab aggregate --task RTE --methods FFT LoRA_r8 --seeds 1 2 3`: statistics across seeds.

Writes `<out>/MULTI_SEED/<TASK>/`: aggregate.json, aggregate.csv, fig_aggregate.png.

- Every scalar of each run's stats.json (Spearman ρ per pair, top-K overlap per pair, counter-example
  counts) and the dev score / training time, as mean, sample std (ddof = 1) and a 95 % Student-t
  interval across seeds: mean ± t_{0.975, n−1} · s / √n (n = number of seeds; None for n < 2).
  The t-interval treats seeds as independent draws and the per-seed values as roughly normal.
- Stability of each head's importance and update across seeds: for each column (I_pre, I_post, G,
  U, Urel, and the Taylor scores taylor_pre/taylor_post under their own names), the Spearman ρ between
  two seeds' per-head values, for every pair of seeds; reported as the mean (and min, max) over pairs.
  Exact and Taylor values are never pooled: a statistic keyed `taylor_pre~U` is aggregated apart from
  `I_pre~U`, over the seeds that have it (its `n` says how many).
Runs are analysed first when their `analysis/` is missing.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any

import pandas as pd

from peftlab.analysis.analyze import load_analysis
from peftlab.analysis.figures import DEFAULT_DPI, new_figure, save_figure, spearman_bars
from peftlab.analysis.stats import DEFAULT_LEVEL, spearman, t_interval
from peftlab.analysis.tables import canonical_task, parse_label, read_run_meta, run_dir_for_label, train_command
from peftlab.errors import PeftlabError
from peftlab.io import atomic_write_json, atomic_write_text

STABILITY_COLUMNS = ("I_pre", "I_post", "G", "U", "Urel", "taylor_pre", "taylor_post")
INTERVAL = "Student-t 95 % CI across seeds: mean ± t_{0.975, n-1} · s/√n, s = sample std (ddof = 1)"


def resolve_runs(task: str, labels: list[str], seeds: list[int], out: str | Path) -> dict[str, dict[int, Path]]:
    """{label: {seed: run dir}}; one PeftlabError naming the train commands of every missing run."""
    runs: dict[str, dict[int, Path]] = {}
    missing: list[str] = []
    for label in labels:
        dir_name, rank = parse_label(label)
        runs[label] = {}
        for seed in seeds:
            run_dir = run_dir_for_label(out, task, label, seed)
            if (run_dir / "run_config.json").is_file():
                runs[label][seed] = run_dir
            else:
                missing.append(train_command(task, run_dir.parent.parent.name, seed, rank, out))
    if missing:
        raise PeftlabError(f"{len(missing)} run(s) missing under {out}; create them with: " + " ; ".join(missing))
    return runs


def scalar_quantities(stats: dict, final: dict | None) -> dict[str, float | None]:
    """The numbers aggregated across seeds, flattened: 'rho:I_pre~U', 'topk:I_pre~U', 'cases:...', 'dev_score'."""
    values: dict[str, float | None] = {}
    for key, entry in stats["spearman"].items():
        values[f"rho:{key}"] = entry.get("rho")
    for key, entry in stats["topk"]["pairs"].items():
        values[f"topk:{key}"] = entry["overlap"]
    for name in ("important_static", "plastic_unimportant"):
        values[f"cases:{name}"] = stats["counter_examples"][name]
    for col in ("I_pre", "I_post"):  # heads whose exact importance differs from 0 (BH); absent → not measured
        entry = (stats.get("significance") or {}).get(col) or {}
        if entry.get("measured"):
            values[f"significant:{col}"] = entry["n_significant"]
    values["dev_score"] = None if not final else final.get("score")
    values["train_s"] = None if not final else (final.get("timing") or {}).get("train_s")
    return values


def seed_stability(heads_by_seed: dict[int, pd.DataFrame]) -> dict[str, Any]:
    """Per column: Spearman ρ between every two seeds' per-head values (heads aligned on (layer, head))."""
    out: dict[str, Any] = {}
    for col in STABILITY_COLUMNS:
        pairs = []
        for (seed_a, a), (seed_b, b) in combinations(heads_by_seed.items(), 2):
            if col not in a or col not in b:
                continue
            aligned = a[["layer", "head", col]].merge(b[["layer", "head", col]], on=["layer", "head"])
            aligned = aligned.dropna()
            if len(aligned) >= 3:
                pairs.append({"seeds": [seed_a, seed_b], "rho": spearman(aligned[f"{col}_x"], aligned[f"{col}_y"])[0]})
        if pairs:
            rhos = [p["rho"] for p in pairs]
            out[col] = {"mean": sum(rhos) / len(rhos), "min": min(rhos), "max": max(rhos), "pairs": pairs}
    return out


def aggregate(task: str, methods: list[str], seeds: list[int], out: str | Path = "outputs", *,
              dpi: int = DEFAULT_DPI, level: float = DEFAULT_LEVEL, **analyze_kwargs) -> Path:
    """Aggregate the analyses of `methods` × `seeds` of one task; returns `<out>/MULTI_SEED/<TASK>`."""
    if not methods:
        raise PeftlabError("no methods given; pass e.g. --methods FFT LoRA_r8")
    if not seeds:
        raise PeftlabError("no seeds given; pass e.g. --seeds 1 2 3")
    task = canonical_task(task)
    seeds = sorted(dict.fromkeys(int(s) for s in seeds))
    runs = resolve_runs(task, list(methods), seeds, out)

    quantities: dict[str, dict[str, Any]] = {}
    stability: dict[str, Any] = {}
    rows = []
    for label, by_seed in runs.items():
        per_seed: dict[int, dict[str, float | None]] = {}
        heads_by_seed: dict[int, pd.DataFrame] = {}
        for seed, run_dir in by_seed.items():
            heads, stats, _ = load_analysis(run_dir, dpi=dpi, **analyze_kwargs)
            per_seed[seed] = scalar_quantities(stats, read_run_meta(run_dir).final)
            heads_by_seed[seed] = heads
        names = list(dict.fromkeys(name for values in per_seed.values() for name in values))
        quantities[label] = {}
        for name in names:
            values = {seed: per_seed[seed].get(name) for seed in seeds}
            summary = {**t_interval(list(values.values()), level), "values": values}
            quantities[label][name] = summary
            rows.append({"method": label, "quantity": name, **{k: summary[k] for k in ("n", "mean", "std",
                                                                                         "ci_low", "ci_high")},
                         **{f"seed{s}": v for s, v in values.items()}})
        stability[label] = seed_stability(heads_by_seed)
        for col, entry in stability[label].items():
            rows.append({"method": label, "quantity": f"stability:{col}", "n": len(entry["pairs"]),
                         "mean": entry["mean"], "std": None, "ci_low": entry["min"], "ci_high": entry["max"]})

    from peftlab.runs import safe_output_path

    out_dir = safe_output_path(out, "MULTI_SEED", task)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "task": task, "methods": list(methods), "seeds": seeds, "interval": INTERVAL, "level": level,
        "runs": {label: {seed: str(p) for seed, p in by_seed.items()} for label, by_seed in runs.items()},
        "quantities": quantities,
        "dev": {label: {k: q["dev_score"][k] for k in ("n", "mean", "std", "ci_low", "ci_high")}
                for label, q in quantities.items()},
        "stability": stability,
        "stability_note": "mean (min, max) over seed pairs of Spearman ρ between the seeds' per-head values; "
                          "in aggregate.csv the stability rows hold min/max in ci_low/ci_high",
        "notes": [] if len(seeds) >= 2 else ["one seed only: std, CIs and stability need at least 2 seeds"],
    }
    fig_aggregate(result, out_dir / "fig_aggregate.png", dpi)
    atomic_write_text(out_dir / "aggregate.csv", pd.DataFrame(rows).to_csv(index=False))
    atomic_write_json(out_dir / "aggregate.json", result)  # last: its presence means complete
    return out_dir


def fig_aggregate(result: dict, path: str | Path, dpi: int = DEFAULT_DPI) -> Path:
    """Three panels: mean ρ per pair with t-CIs, dev score (mean ± std, seeds as dots), seed stability."""
    fig, axes = new_figure(3, width=5.0, height=4.4)
    series = {}
    for label, q in result["quantities"].items():
        series[label] = {name.split(":", 1)[1]: {"rho": v["mean"], "ci_low": v["ci_low"], "ci_high": v["ci_high"]}
                         for name, v in q.items() if name.startswith("rho:") and v["mean"] is not None}
    spearman_bars(axes[0], series, f"mean ρ over seeds, 95 % t-interval (n = {len(result['seeds'])} seeds)")

    labels = list(result["quantities"])
    for i, label in enumerate(labels):
        dev = result["quantities"][label]["dev_score"]
        if dev["mean"] is None:
            continue
        axes[1].bar(i, dev["mean"], yerr=dev["std"] or 0.0, capsize=4, alpha=0.7)
        seed_values = [v for v in dev["values"].values() if v is not None]
        axes[1].scatter([i] * len(seed_values), seed_values, color="black", s=12, zorder=3)
    axes[1].set_xticks(range(len(labels)), labels, fontsize=8)
    axes[1].set_ylabel("dev score (main metric)")
    axes[1].set_title("dev score: mean ± std across seeds (dots = seeds)", fontsize=9)
    low = min((v for q in result["quantities"].values() for v in q["dev_score"]["values"].values() if v is not None),
              default=0.0)
    axes[1].set_ylim(max(0.0, low - 0.1), None)

    width = 0.8 / max(len(labels), 1)
    for s, label in enumerate(labels):
        stab = result["stability"][label]
        xs = [i + (s - (len(labels) - 1) / 2) * width for i in range(len(stab))]
        axes[2].bar(xs, [e["mean"] for e in stab.values()], width=width, label=label, alpha=0.8)
        axes[2].set_xticks(range(len(stab)), list(stab), fontsize=8)
    axes[2].set_ylim(-1, 1)
    axes[2].axhline(0, color="black", linewidth=0.8)
    axes[2].set_ylabel("mean Spearman ρ between two seeds' per-head values")
    axes[2].set_title("seed stability of per-head quantities", fontsize=9)
    if not any(result["stability"].values()):
        axes[2].text(0.5, 0.5, "needs ≥ 2 seeds", ha="center", va="center", transform=axes[2].transAxes)
    elif len(labels) > 1:
        axes[2].legend(fontsize=7)
    fig.suptitle(f"{result['task']}: {', '.join(labels)} across seeds {result['seeds']}", fontsize=11)
    return save_figure(fig, path, dpi)
