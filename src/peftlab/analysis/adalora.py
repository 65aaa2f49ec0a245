"""AdaLoRA results: per-run figures from the allocation logs, and the signal comparison over seeds.

Reads only saved files (rank_pattern.jsonl, signal_scores.jsonl, final_summary.json), never a model.

    plot_run(run_dir) -> [RUN_DIR/analysis/rank_evolution.png, RUN_DIR/analysis/signal_heatmap.png]
    compare_signals(task, signals, seeds, out) -> <out>/ADALORA/<TASK>/compare/  (signals.csv, compare.json)

Comparison statistics (unit resampled: seeds; each seed is one independent training run):
  per signal  mean of the dev main metric, SE = sd(ddof 1)/√n, 95 % t-interval mean ± t_{.975,n−1}·SE
  vs baseline paired by seed: d_s = metric(signal, s) − metric(baseline_adalora, s); mean d, 95 % t-interval,
              p of the paired t-test (scipy.stats.ttest_rel); "not distinguishable" when the interval holds 0,
              "too few seeds" when fewer than 2 seeds are paired.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from peftlab.errors import PeftlabError
from peftlab.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json, read_jsonl

BASELINE = "baseline_adalora"


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
    """rank_evolution.png (total rank vs scheduled budget; rank per module per allocation) and
    signal_heatmap.png (triplet scores of the last allocation, × = masked triplet)."""
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    rows = _rows(run_dir / "rank_pattern.jsonl", "no AdaLoRA allocation log")
    allocations = [r for r in rows if r.get("kind") == "allocation"]
    if not allocations:
        raise PeftlabError(f"{run_dir} logged no AdaLoRA allocation (training ended before tinit?); nothing to plot")
    end = next((r for r in rows if r.get("kind") == "end"), None)
    out_dir = run_dir / "analysis"
    steps = [r["step"] for r in allocations]
    modules = list(allocations[-1]["ranks"])

    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax_total, ax_modules = fig.subplots(1, 2, width_ratios=[1, 1.4])
    ax_total.step(steps, [r["budget"] for r in allocations], where="post", label="scheduled budget")
    ax_total.plot(steps, [r["total_rank"] for r in allocations], "o", ms=3, label="total rank kept")
    if end is not None:
        ax_total.axhline(end["target_budget"], ls="--", c="grey", label=f"target budget {end['target_budget']}")
    ax_total.xaxis.get_major_locator().set_params(integer=True)
    ax_total.set(xlabel="optimizer step", ylabel="total rank (triplets)", title="AdaLoRA budget")
    ax_total.legend()
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
        fig = Figure(figsize=(7, max(3.5, 0.16 * len(names) + 1.5)), layout="constrained")
        ax = fig.subplots()
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


def compare_signals(task: str, signals: list[str], seeds: list[int], out: str | Path = "outputs") -> Path:
    """Table of every (signal, seed) AdaLoRA run's final_summary.json and the paired comparison vs baseline."""
    from scipy import stats

    from peftlab.tasks import get_task

    task = get_task(task).name
    root = Path(out) / "ADALORA" / task
    per_signal: dict[str, dict[int, dict]] = {}
    missing = []
    for signal in signals:
        for seed in seeds:
            path = root / signal / f"seed{seed}" / "final_summary.json"
            if path.is_file():
                per_signal.setdefault(signal, {})[seed] = read_json(path)
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
        summary["signals"][signal] = {**_mean_ci(scores), "seeds": sorted(runs),
                                      "budget_ok_all": all(s.get("budget_ok") for s in runs.values())}
    base = per_signal.get(BASELINE, {})
    for signal, runs in per_signal.items():
        if signal == BASELINE:
            continue
        paired = sorted(set(runs) & set(base))
        diffs = [runs[s]["score"] - base[s]["score"] for s in paired]
        entry = {"seeds": paired, **_mean_ci(diffs)}
        if len(paired) < 2:
            entry.update(p=None, verdict="too few seeds (need ≥ 2 paired with baseline_adalora)")
        else:
            entry["p"] = float(stats.ttest_rel([runs[s]["score"] for s in paired],
                                               [base[s]["score"] for s in paired]).pvalue)
            holds_zero = entry["ci_low"] is None or math.isnan(entry["ci_low"]) or entry["ci_low"] <= 0 <= entry["ci_high"]
            entry["verdict"] = "not distinguishable from baseline_adalora" if holds_zero else (
                "better than baseline_adalora" if entry["mean"] > 0 else "worse than baseline_adalora")
        summary["vs_baseline"][signal] = entry
    out_dir = root / "compare"
    atomic_write_text(out_dir / "signals.csv", "\n".join(lines) + "\n")
    atomic_write_json(out_dir / "compare.json", summary)
    return out_dir


__all__ = ["plot_run", "compare_signals"]
