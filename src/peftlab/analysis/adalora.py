"""AdaLoRA results: per-run figures from the allocation logs, and the signal comparison over seeds.

Reads only saved files (rank_pattern.jsonl, signal_scores.jsonl, final_summary.json), never a model.

    plot_run(run_dir) -> [RUN_DIR/analysis/rank_evolution.png, RUN_DIR/analysis/signal_heatmap.png]
    compare_signals(task, signals, seeds, out) -> <out>/ADALORA/<TASK>/compare/  (signals.csv, compare.json,
                                                                                 compare.png)

Comparison statistics (unit resampled: seeds; each seed is one independent training run):
  per signal  mean of the dev main metric, SE = sd(ddof 1)/√n, 95 % t-interval mean ± t_{.975,n−1}·SE
  vs baseline paired by seed: d_s = metric(signal, s) − metric(baseline_adalora, s); mean d, 95 % t-interval,
              p of the paired t-test (scipy.stats.ttest_rel); "not distinguishable" when the interval holds 0,
              "too few seeds" when fewer than 2 seeds are paired.
  vs LoRA     the same paired comparison against the equal-budget LoRA reference (PEFT LoRA, r = target_r, same
              targets, seeds and settings; trained by `peftlab adalora run --lora-reference` into
              <out>/ADALORA/<TASK>/lora_reference/PEFT-LoRA/<TASK>/seed<S>_r<R>/).
  overlap     of two signals' final rank patterns, per seed s with both runs, then averaged over seeds:
              shared_rank = Σ_m min(r_a(m), r_b(m)) / min(Σ_m r_a(m), Σ_m r_b(m))   (1 = same allocation)
              and Spearman ρ of the two rank vectors over modules.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from peftlab.errors import PeftlabError
from peftlab.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json, read_jsonl

BASELINE = "baseline_adalora"
LORA_REFERENCE_DIR = "lora_reference"


def lora_reference_root(out: str | Path, task: str) -> Path:
    """`--out` root of the equal-budget LoRA reference runs of one task (their run dirs lie below it)."""
    return Path(out) / "ADALORA" / task / LORA_REFERENCE_DIR


def _rows(path: Path, what: str) -> list[dict]:
    if not path.is_file():
        raise PeftlabError(f"{path} not found: {what}; pass the run directory of a finished `peftlab adalora run`")
    return read_jsonl(path)


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150)
    return atomic_write_bytes(path, buffer.getvalue())


def _short(module: str) -> str:
    """`bert.encoder.layer.3.attention.self.query` → `L3 query` (figure labels only)."""
    parts = module.split(".")
    layer = next((parts[i + 1] for i, p in enumerate(parts[:-1]) if p in ("layer", "layers", "h")), "?")
    if module.endswith("attention.output.dense"):
        tail = "attn.out"
    elif parts[-1] == "dense":
        tail = f"{parts[-2]}.dense"  # intermediate.dense / output.dense (the FFN)
    else:
        tail = parts[-1]
    return f"L{layer} {tail}"


def plot_run(run_dir: str | Path) -> list[Path]:
    """rank_evolution.png (total rank vs scheduled budget; rank per module type summed over layers; rank per
    module per allocation) and signal_heatmap.png (triplet scores of the last allocation, × = masked triplet;
    layer × module type mean triplet score)."""
    from matplotlib.figure import Figure

    from peftlab.analysis.adalora_heads import module_kind
    from peftlab.arch import CANONICAL_TARGETS

    run_dir = Path(run_dir)
    rows = _rows(run_dir / "rank_pattern.jsonl", "no AdaLoRA allocation log")
    allocations = [r for r in rows if r.get("kind") == "allocation"]
    if not allocations:
        raise PeftlabError(f"{run_dir} logged no AdaLoRA allocation (training ended before tinit?); nothing to plot")
    end = next((r for r in rows if r.get("kind") == "end"), None)
    out_dir = run_dir / "analysis"
    steps = [r["step"] for r in allocations]
    modules = list(allocations[-1]["ranks"])
    fig = Figure(figsize=(16, 4.8), layout="constrained")
    ax_total, ax_types, ax_modules = fig.subplots(1, 3, width_ratios=[1, 1, 1.4])
    ax_total.step(steps, [r["budget"] for r in allocations], where="post", label="scheduled budget")
    ax_total.plot(steps, [r["total_rank"] for r in allocations], "o", ms=3, label="total rank kept")
    if end is not None:
        ax_total.axhline(end["target_budget"], ls="--", c="grey", label=f"target budget {end['target_budget']}")
    ax_total.xaxis.get_major_locator().set_params(integer=True)
    ax_total.set(xlabel="optimizer step", ylabel="total rank (triplets)", title="AdaLoRA budget")
    ax_total.legend()
    kinds = {m: module_kind(m, CANONICAL_TARGETS) for m in modules}
    for kind in CANONICAL_TARGETS:  # rank summed over the layers, per module type
        members = [m for m, k in kinds.items() if k is not None and k[1] == kind]
        if members:
            ax_types.plot(steps, [sum(r["ranks"].get(m, 0) for m in members) for r in allocations], "o-", ms=3,
                          label=f"{kind} ({len(members)} matrices)")
    ax_types.xaxis.get_major_locator().set_params(integer=True)
    ax_types.set(xlabel="optimizer step", ylabel="rank summed over layers", title="rank per module type")
    ax_types.legend(fontsize=7)
    ranks = np.array([[r["ranks"].get(m, 0) for r in allocations] for m in modules])  # [module, allocation]
    image = ax_modules.imshow(ranks, aspect="auto", interpolation="nearest", cmap="viridis")
    ax_modules.set_yticks(range(len(modules)), [_short(m) for m in modules], fontsize=6)
    ticks = np.linspace(0, len(steps) - 1, min(len(steps), 8)).astype(int)
    ax_modules.set_xticks(ticks, [steps[i] for i in ticks])
    ax_modules.set(xlabel="allocation at optimizer step", title="rank per adapted matrix")
    fig.colorbar(image, ax=ax_modules, label="rank")
    paths = [_save(fig, out_dir / "rank_evolution.png")]

    scores = _rows(run_dir / "signal_scores.jsonl", "no AdaLoRA signal scores")
    if scores:
        last = scores[-1]
        names = list(last["scores"])
        width = max(len(v) for v in last["scores"].values())
        grid = np.full((len(names), width), np.nan)  # [module, triplet]
        for i, name in enumerate(names):
            grid[i, :len(last["scores"][name])] = last["scores"][name]
        fig = Figure(figsize=(12, max(3.5, 0.16 * len(names) + 1.5)), layout="constrained")
        ax, ax_layers = fig.subplots(1, 2, width_ratios=[1.4, 1])
        image = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="magma")
        for i, name in enumerate(names):
            for j, keep in enumerate((last.get("kept") or {}).get(name, [])):
                if not keep:
                    ax.text(j, i, "×", ha="center", va="center", color="cyan", fontsize=6)
        ax.set_yticks(range(len(names)), [_short(n) for n in names], fontsize=6)
        ax.set_xticks(range(width))
        ax.set(xlabel="triplet (rank-1 component) index",
               title=f"signal {last['signal']}: triplet scores at step {last['step']} (× = masked)")
        fig.colorbar(image, ax=ax, label="triplet score T")
        # layer × module type: mean triplet score of the matrix (the unit the budget is spent on)
        kinds = {n: module_kind(n, CANONICAL_TARGETS) for n in names}
        types = [t for t in CANONICAL_TARGETS if any(k is not None and k[1] == t for k in kinds.values())]
        n_layers = 1 + max((k[0] for k in kinds.values() if k is not None), default=-1)
        cells = np.full((max(n_layers, 1), max(len(types), 1)), np.nan)  # [layer, module type]
        for name, kind in kinds.items():
            if kind is not None:
                cells[kind[0], types.index(kind[1])] = float(np.mean(last["scores"][name]))
        image = ax_layers.imshow(cells, aspect="auto", interpolation="nearest", cmap="magma")
        ax_layers.set_xticks(range(len(types)), types)
        ax_layers.set_yticks(range(cells.shape[0]), [f"L{i}" for i in range(cells.shape[0])])
        ax_layers.set(xlabel="module type", ylabel="layer", title="mean triplet score per matrix")
        fig.colorbar(image, ax=ax_layers, label="mean T")
        paths.append(_save(fig, out_dir / "signal_heatmap.png"))
    return paths


def _mean_ci(values: list[float]) -> dict:
    from scipy import stats

    n = len(values)
    mean = float(np.mean(values)) if n else None
    if n < 2:
        return {"n": n, "mean": mean, "se": None, "ci_low": None, "ci_high": None}
    se = float(np.std(values, ddof=1) / math.sqrt(n))
    half = float(stats.t.ppf(0.975, n - 1)) * se
    return {"n": n, "mean": mean, "se": se, "ci_low": mean - half, "ci_high": mean + half}


def _paired(runs: dict[int, float], reference: dict[int, float], name: str) -> dict:
    """Mean paired difference runs − reference over shared seeds, 95 % t-interval, paired t-test, verdict."""
    from scipy import stats

    paired = sorted(set(runs) & set(reference))
    entry = {"seeds": paired, **_mean_ci([runs[s] - reference[s] for s in paired])}
    if len(paired) < 2:
        entry.update(p=None, verdict=f"too few seeds (need ≥ 2 paired with {name})")
        return entry
    entry["p"] = float(stats.ttest_rel([runs[s] for s in paired], [reference[s] for s in paired]).pvalue)
    holds_zero = entry["ci_low"] is None or math.isnan(entry["ci_low"]) or entry["ci_low"] <= 0 <= entry["ci_high"]
    entry["verdict"] = f"not distinguishable from {name}" if holds_zero else (
        f"better than {name}" if entry["mean"] > 0 else f"worse than {name}")
    return entry


def rank_overlap(a: dict[str, int], b: dict[str, int]) -> dict:
    """shared_rank = Σ_m min(a_m, b_m) / min(Σ a, Σ b) and Spearman ρ of the rank vectors over shared modules."""
    from scipy import stats

    modules = sorted(set(a) & set(b))
    x, y = np.array([a[m] for m in modules], float), np.array([b[m] for m in modules], float)  # [modules]
    denominator = min(x.sum(), y.sum())
    rho = float(stats.spearmanr(x, y).statistic) if len(modules) >= 3 and x.std() > 0 and y.std() > 0 else None
    return {"shared_rank": float(np.minimum(x, y).sum() / denominator) if denominator > 0 else None,
            "spearman": rho, "n_modules": len(modules)}


def _lora_reference(task: str, seeds: list[int], out, adalora_config: dict) -> tuple[dict, list[str]]:
    """Scores of the finished equal-budget LoRA reference runs, {seed: score}, and the commands of missing ones."""
    from peftlab.runs import read_final_metrics

    rank, targets = adalora_config.get("target_r"), adalora_config.get("targets")
    root = lora_reference_root(out, task)
    scores, missing = {}, []
    for seed in seeds:
        run = root / "PEFT-LoRA" / task / f"seed{seed}_r{rank}"
        final = read_final_metrics(run)
        config = (read_json(run / "run_config.json").get("config") or {}) if (run / "run_config.json").is_file() else {}
        if final and final.get("finished") and isinstance(final.get("score"), (int, float)) \
                and list(config.get("targets") or []) == list(targets or []):
            scores[seed] = float(final["score"])
        else:
            missing.append(f"peftlab adalora run --task {task} --signals {BASELINE} --seed {seed} --lora-reference "
                           f"--out {out}   (same KEY=VALUE settings as the AdaLoRA runs)")
    return {"method": "peft-lora", "rank": rank, "targets": targets, "root": str(root), "scores": scores}, missing


def compare_signals(task: str, signals: list[str], seeds: list[int], out: str | Path = "outputs") -> Path:
    """Table of every (signal, seed) AdaLoRA run's final_summary.json, the paired comparisons vs baseline and vs
    the equal-budget LoRA reference, the overlap of final rank patterns, and compare.png."""
    from peftlab.tasks import get_task

    task = get_task(task).name
    root = Path(out) / "ADALORA" / task
    per_signal: dict[str, dict[int, dict]] = {}
    missing = []
    config = {}
    for signal in signals:
        for seed in seeds:
            path = root / signal / f"seed{seed}" / "final_summary.json"
            if path.is_file():
                per_signal.setdefault(signal, {})[seed] = read_json(path)
                if not config and (path.parent / "run_config.json").is_file():
                    config = read_json(path.parent / "run_config.json").get("config") or {}
            else:
                missing.append(f"peftlab adalora run --task {task} --signal {signal} --seed {seed} --out {out}")
    if not per_signal:
        raise PeftlabError(f"no finished AdaLoRA run under {root}; run e.g. `{missing[0]}` first")
    lines = ["signal,seed,main_metric,score,total_rank,target_budget,budget_ok,trainable_params_end,train_s"]
    summary = {"task": task, "unit": "seeds", "confidence_level": 0.95, "signals": {}, "vs_baseline": {},
               "missing_runs": missing}
    for signal, runs in per_signal.items():
        for seed, s in sorted(runs.items()):
            lines.append(",".join(str(x) for x in (signal, seed, s.get("main_metric"), s.get("score"), s.get("total_rank"),
                                                   s.get("target_budget"), s.get("budget_ok"),
                                                   s.get("trainable_params_end"), s.get("train_s"))))
        scores = [s["score"] for s in runs.values() if isinstance(s.get("score"), (int, float))]
        summary["signals"][signal] = {**_mean_ci(scores), "std": float(np.std(scores, ddof=1)) if len(scores) > 1
                                      else None, "seeds": sorted(runs),
                                      "budget_ok_all": all(s.get("budget_ok") for s in runs.values()),
                                      "total_rank": sorted({s.get("total_rank") for s in runs.values()}, key=str),
                                      "train_s_mean": _mean_ci([s["train_s"] for s in runs.values()
                                                                if isinstance(s.get("train_s"), (int, float))])["mean"]}
    score_of = {signal: {seed: s["score"] for seed, s in runs.items() if isinstance(s.get("score"), (int, float))}
                for signal, runs in per_signal.items()}
    for signal in per_signal:
        if signal != BASELINE:
            summary["vs_baseline"][signal] = _paired(score_of[signal], score_of.get(BASELINE, {}), BASELINE)
    reference, missing_reference = _lora_reference(task, seeds, out, config)
    name = f"LoRA r={reference['rank']}"
    reference.update(_mean_ci(list(reference["scores"].values())))
    reference["vs_signal"] = {signal: _paired(score_of[signal], reference["scores"], name) for signal in per_signal}
    summary["lora_reference"] = reference
    summary["missing_lora_reference"] = missing_reference
    for seed, score in sorted(reference["scores"].items()):
        lines.append(",".join(str(x) for x in (f"lora_r{reference['rank']}", seed, None, score, None, None, None, None,
                                               None)))
    overlap = {}
    names = list(per_signal)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            per_seed = {seed: rank_overlap(per_signal[a][seed]["ranks"], per_signal[b][seed]["ranks"])
                        for seed in sorted(set(per_signal[a]) & set(per_signal[b]))}
            shared = [v["shared_rank"] for v in per_seed.values() if v["shared_rank"] is not None]
            rhos = [v["spearman"] for v in per_seed.values() if v["spearman"] is not None]
            overlap[f"{a}~{b}"] = {"per_seed": per_seed, "shared_rank_mean": float(np.mean(shared)) if shared else None,
                                   "spearman_mean": float(np.mean(rhos)) if rhos else None}
    summary["rank_overlap"] = overlap
    summary["rank_vs_heads"] = _rank_vs_heads(root, per_signal)
    out_dir = root / "compare"
    atomic_write_text(out_dir / "signals.csv", "\n".join(lines) + "\n")
    summary["figure"] = compare_figure(per_signal, summary, out_dir / "compare.png").name
    atomic_write_text(out_dir / "table.md", markdown_table(summary))
    atomic_write_json(out_dir / "compare.json", summary)
    return out_dir


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
    lines = [f"| {summary['task']} | seeds | dev score mean ± std [95 % t-CI] | final total rank | budget_ok | "
             f"train s (mean) | vs baseline_adalora | vs {lora} (equal budget) |", "|---" * 8 + "|"]
    for signal, entry in summary["signals"].items():
        versus = summary["vs_baseline"].get(signal, {}).get("verdict", "—")
        versus_lora = reference["vs_signal"].get(signal, {}).get("verdict", "—") if reference["scores"] else "not run"
        train = entry.get("train_s_mean")
        lines.append(f"| {signal} | {', '.join(str(s) for s in entry['seeds'])} | {pm(entry)} | "
                     f"{'/'.join(str(r) for r in entry['total_rank'])} | {entry['budget_ok_all']} | "
                     f"{'n/a' if train is None else f'{train:.0f}'} | {versus} | {versus_lora} |")
    if reference["scores"]:
        values = list(reference["scores"].values())
        std = float(np.std(values, ddof=1)) if len(values) > 1 else None
        lines.append(f"| {lora} on {','.join(reference['targets'] or [])} | {', '.join(str(s) for s in reference['scores'])} | "
                     f"{pm({**reference, 'std': std})} | — | — | — | — | — |")
    return "\n".join(lines) + "\n"


def _rank_vs_heads(root: Path, per_signal: dict[str, dict[int, dict]]) -> dict:
    """Per signal, the pooled ρ(final rank, Σ heads' X) of each analysed run (`peftlab analyze`, stats.json
    `adalora_ranks`) and their mean over seeds; signals without an analysed run are left out."""
    out = {}
    for signal, runs in per_signal.items():
        per_seed = {}
        for seed in runs:
            stats = root / signal / f"seed{seed}" / "analysis" / "stats.json"
            block = read_json(stats).get("adalora_ranks") if stats.is_file() else None
            if block:
                per_seed[seed] = {name: entry for name, entry in block["spearman"]["pooled"].items()}
        if per_seed:
            names = list(next(iter(per_seed.values())))
            out[signal] = {"per_seed": per_seed, "mean_rho": {
                name: (float(np.mean(rhos)) if (rhos := [v[name]["rho"] for v in per_seed.values()
                                                         if v[name]["rho"] is not None]) else None)
                for name in names}}
    return out


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


__all__ = ["plot_run", "compare_signals", "compare_figure", "rank_overlap", "lora_reference_root"]
