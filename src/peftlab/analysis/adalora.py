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


def _reference_targets(run_dir: Path) -> list | None:
    """The `targets` a run was trained with (its run_config.json), or None when it has none."""
    path = Path(run_dir) / "run_config.json"
    return list((read_json(path).get("config") or {}).get("targets") or []) if path.is_file() else None


def _lora_reference(task: str, seeds: list[int], out, adalora_config: dict) -> tuple[dict, list[str]]:
    """Scores of the finished equal-budget LoRA reference runs, {seed: score}, and the commands of missing ones."""
    from peftlab.runs import read_final_metrics

    rank, targets = adalora_config.get("target_r"), adalora_config.get("targets")
    root = lora_reference_root(out, task)
    scores, missing = {}, []
    for seed in seeds:
        # the reference's non-default options (targets, alpha) name its directory too (runs.run_dir_for):
        # seed<S>_r<R>[__<option>-<value>...]; the targets check below picks the one matching these runs
        base = f"seed{seed}_r{rank}"
        found = [d for d in sorted((root / "PEFT-LoRA" / task).glob(base + "*"))
                 if d.name == base or d.name.startswith(base + "__")]
        run = next((d for d in found if _reference_targets(d) == list(targets or [])), root / "PEFT-LoRA" / task / base)
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
    from peftlab.analysis.dev_chance import chance_verdict, dev_chance

    chance = dev_chance(config) if config else {"reason": "no run_config.json next to the runs"}
    summary["chance"] = chance
    for entry in summary["signals"].values():
        entry["vs_chance"] = chance_verdict(entry.get("mean"), chance)
    reference, missing_reference = _lora_reference(task, seeds, out, config)
    name = f"LoRA r={reference['rank']}"
    reference.update(_mean_ci(list(reference["scores"].values())))
    reference["vs_signal"] = {signal: _paired(score_of[signal], reference["scores"], name) for signal in per_signal}
    reference["vs_chance"] = chance_verdict(reference.get("mean"), chance)
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
    from peftlab.analysis.adalora_view import compare_figure, markdown_table

    summary["figure"] = compare_figure(per_signal, summary, out_dir / "compare.png").name
    atomic_write_text(out_dir / "table.md", markdown_table(summary))
    atomic_write_json(out_dir / "compare.json", summary)
    return out_dir


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


__all__ = ["plot_run", "compare_signals", "rank_overlap", "lora_reference_root"]
