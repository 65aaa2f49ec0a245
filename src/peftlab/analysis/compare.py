"""`peftlab compare RUN_A RUN_B`: two methods on the same task, seed and model, head by head.

Writes `<out>/COMPARE/<TASK>/seed<S>/<A>_vs_<B>/` (one folder per pair, so that FFT vs LoRA_r4 and
FFT vs LoRA_r8 of one seed do not overwrite each other):
    compare_I_vs_U.png, compare_stats.png, compare_update_dist.png, compare_headwise.png,
    compare_metrics.json, compare_summary.txt
Runs without `analysis/` are analysed first.

Decision rule for findings: the heads are the same in both runs, so the two correlations are compared
by the paired bootstrap of their difference Δρ = ρ_B − ρ_A (heads resampled jointly: one index row
for both runs). A difference is claimed only when its 95 % percentile CI excludes 0 (the two-sided
bootstrap p is reported with it); otherwise the summary says "not distinguishable". Comparing two
separate CIs for overlap would ignore that pairing and miss differences the paired test sees. A
correlation within one run is called positive/negative only when its CI excludes 0.

Only like is compared with like: a pair is compared when both runs report it under the same key, so
a run with exact I is never compared with a run that has only Taylor scores (key `taylor_pre~U`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftlab.analysis.analyze import load_analysis
from peftlab.analysis.compare_figures import (fig_compare_I_vs_U, fig_compare_stats, fig_headwise,
                                              fig_update_dist)
from peftlab.analysis.figures import DEFAULT_DPI
from peftlab.analysis.stats import format_rho, intervals_overlap, paired_difference, spearman_with_ci
from peftlab.analysis.tables import load_heads, loss_unit, read_run_meta
from peftlab.errors import PeftlabError
from peftlab.io import atomic_write_json, atomic_write_text

FINDING_PAIRS = ("I_pre~U", "I_pre~Urel", "I_pre~G", "I_post~U",
                 "taylor_pre~U", "taylor_pre~Urel", "taylor_pre~G", "taylor_post~U")
HEADWISE_COLUMNS = ("U", "Urel", "I_post", "I_pre", "G")


def check_comparable(meta_a, meta_b, stats_a: dict, stats_b: dict) -> None:
    """One-line PeftlabError when the runs differ in task, model or head grid (or are the same run)."""
    if meta_a.run_dir.resolve() == meta_b.run_dir.resolve():
        raise PeftlabError(f"both arguments are the same run '{meta_a.run_dir}'; pass two different run directories")
    if meta_a.task != meta_b.task:
        raise PeftlabError(f"cannot compare runs of different tasks: '{meta_a.run_dir}' is {meta_a.task}, "
                           f"'{meta_b.run_dir}' is {meta_b.task}; pass two runs of the same task")
    if (meta_a.model or None) != (meta_b.model or None):
        raise PeftlabError(f"cannot compare runs of different models: {meta_a.model_name} vs {meta_b.model_name}; "
                           f"pass two runs fine-tuned from the same model")
    grid_a, grid_b = (stats_a["n_layers"], stats_a["n_heads"]), (stats_b["n_layers"], stats_b["n_heads"])
    if grid_a != grid_b:
        raise PeftlabError(f"cannot compare runs with different head counts: {grid_a[0]}×{grid_a[1]} vs "
                           f"{grid_b[0]}×{grid_b[1]} (layers × heads); pass two runs of the same model")


def display_labels(meta_a, meta_b) -> tuple[str, str]:
    """Method labels, with the seed appended when both runs have the same label."""
    if meta_a.label == meta_b.label:
        return f"{meta_a.label}_seed{meta_a.seed}", f"{meta_b.label}_seed{meta_b.seed}"
    return meta_a.label, meta_b.label


def compare_dir_for(out: str | Path, meta_a, meta_b) -> Path:
    """`<out>/COMPARE/<TASK>/seed<S>/<A>_vs_<B>` (`seed<SA>-seed<SB>` when the seeds differ)."""
    seed = f"seed{meta_a.seed}" if meta_a.seed == meta_b.seed else f"seed{meta_a.seed}-seed{meta_b.seed}"
    label_a, label_b = display_labels(meta_a, meta_b)
    from peftlab.runs import safe_output_path

    # Names come from run files (data): validated, and the result must lie under `out`.
    return safe_output_path(out, "COMPARE", meta_a.task, seed, f"{label_a}_vs_{label_b}")


def verdict(diff: dict, label_a: str, label_b: str) -> tuple[bool | None, str]:
    """(distinguishable?, text) from the paired bootstrap of Δρ = ρ_B − ρ_A.

    'not distinguishable (paired 95 % CI of Δρ contains 0)' or 'higher in <label> (paired 95 % CI of Δρ
    excludes 0, p = …)'.
    """
    if diff.get("diff") is None or diff.get("ci_low") is None:
        return None, "n/a (paired difference undefined)"
    if diff["ci_low"] <= 0.0 <= diff["ci_high"]:
        return False, "not distinguishable (paired 95 % CI of ρ_B − ρ_A contains 0)"
    higher = label_b if diff["diff"] > 0 else label_a
    return True, f"higher in {higher} (paired 95 % CI of ρ_B − ρ_A excludes 0, p = {diff['p']:.2g})"


def sign_phrase(entry: dict) -> str:
    """'positive' / 'negative' when the CI excludes 0, else 'not distinguishable from 0'."""
    if entry.get("ci_low") is None:
        return "without a CI"
    if entry["ci_low"] > 0:
        return "positive"
    if entry["ci_high"] < 0:
        return "negative"
    return "not distinguishable from 0"


def _fmt_diff(diff: dict) -> str:
    if diff.get("diff") is None:
        return "n/a"
    p = "" if diff.get("p") is None else f", p={diff['p']:.2g}"
    return f"{diff['diff']:+.2f} [{diff['ci_low']:+.2f}, {diff['ci_high']:+.2f}]{p}"


def build_metrics(labels: tuple[str, str], metas, analyses, headwise: dict, n_resamples: int, seed: int) -> dict:
    """compare_metrics.json: both runs' statistics side by side with paired differences and verdicts."""
    (label_a, label_b), (meta_a, meta_b) = labels, metas
    (heads_a, stats_a, cases_a), (heads_b, stats_b, cases_b) = analyses
    aligned = heads_a.merge(heads_b, on=["layer", "head"], suffixes=("_a", "_b"))
    spearman: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    keys = list(dict.fromkeys([*stats_a["spearman"], *stats_b["spearman"]]))
    for key in keys:
        entry_a, entry_b = stats_a["spearman"].get(key), stats_b["spearman"].get(key)
        if not entry_a or not entry_b:
            missing = label_b if entry_a else label_a
            skipped[key] = f"not measured the same way in {missing} (only like is compared with like)"
            continue
        x, y = entry_a["x"], entry_a["y"]
        diff = paired_difference(aligned[f"{x}_a"], aligned[f"{y}_a"], aligned[f"{x}_b"], aligned[f"{y}_b"],
                                 n_resamples, seed)
        distinguishable, text = verdict(diff, label_a, label_b)
        spearman[key] = {"a": entry_a, "b": entry_b, "diff_b_minus_a": diff, "distinguishable": distinguishable,
                         "cis_overlap": intervals_overlap(entry_a, entry_b), "verdict": text}
    topk_a, topk_b = stats_a["topk"], stats_b["topk"]
    run_a = {"label": label_a, **stats_a["run"]}
    run_b = {"label": label_b, **stats_b["run"]}
    ce_a, ce_b = stats_a["counter_examples"], stats_b["counter_examples"]
    return {
        "task": meta_a.task, "model": meta_a.model_name, "seeds": [meta_a.seed, meta_b.seed],
        "n_layers": stats_a["n_layers"], "n_heads": stats_a["n_heads"], "a": run_a, "b": run_b,
        "synthetic": bool(run_a.get("synthetic") or run_b.get("synthetic")),
        "bootstrap": {"n_resamples": n_resamples, "seed": seed, "level": 0.95, "method": "percentile",
                      "paired": "both runs resampled with the same head indices"},
        "rule": "a difference is claimed only when the paired 95 % bootstrap CI of ρ_B − ρ_A excludes 0",
        "spearman": spearman,
        "skipped": skipped,
        "topk": {"k": topk_a["k"], "n": topk_a["n"],
                 "pairs": {p: {"a": topk_a["pairs"].get(p, {}).get("overlap"),
                               "b": topk_b["pairs"].get(p, {}).get("overlap"),
                               "chance_a": topk_a["pairs"].get(p, {}).get("chance"),
                               "chance_b": topk_b["pairs"].get(p, {}).get("chance")}
                           for p in dict.fromkeys([*topk_a["pairs"], *topk_b["pairs"]])}},
        "counter_examples": {"a": ce_a, "b": ce_b, "importance": {"a": ce_a.get("importance"),
                                                                   "b": ce_b.get("importance")}},
        "significance": {"a": stats_a.get("significance"), "b": stats_b.get("significance")},
        "headwise": headwise,
        "update_median": {side: {c: float(h[c].median()) for c in ("U", "Urel")}
                          for side, h in (("a", heads_a), ("b", heads_b))},
    }


def _same_theta0(aligned) -> bool:
    """True when both runs measured identical I_pre (and G): same seed, same θ0 and probe."""
    import numpy as np

    return all(np.allclose(aligned[f"{c}_a"], aligned[f"{c}_b"], equal_nan=True)
               for c in ("I_pre", "G") if f"{c}_a" in aligned and f"{c}_b" in aligned)


def findings(metrics: dict) -> list[str]:
    """Main findings, each stated with its CIs (see the module docstring for the rule)."""
    label_a, label_b = metrics["a"]["label"], metrics["b"]["label"]
    lines = []
    if metrics.get("theta0_shared"):
        lines.append("I_pre and G are identical in both runs (same θ0 and probe), so the I_pre~G row compares "
                     "a quantity with itself; only the U and I_post rows differ between methods.")
    for key in FINDING_PAIRS:
        entry = metrics["spearman"].get(key)
        if not entry:
            continue
        a, b = entry["a"], entry["b"]
        lines.append(f"{key}: {label_a} {format_rho(a)} ({sign_phrase(a)}), {label_b} {format_rho(b)} "
                     f"({sign_phrase(b)}); paired difference {label_b} − {label_a} = "
                     f"{_fmt_diff(entry['diff_b_minus_a'])}: {entry['verdict']}.")
    for side, label in (("a", label_a), ("b", label_b)):
        sig = metrics.get("significance", {}).get(side) or {}
        if sig.get("noise_level"):
            lines.append(f"{label}: {sig['message']}.")
    for key in metrics.get("skipped", {}):
        if key.startswith("I_") or key.startswith("taylor_"):
            lines.append(f"{key}: {metrics['skipped'][key]}.")
    for col in ("U", "I_post"):
        entry = metrics["headwise"].get(col)
        if entry and entry.get("rho") is not None:
            lines.append(f"same head, {col} under {label_a} vs {label_b}: {format_rho(entry)} ({sign_phrase(entry)}).")
    return lines


def _chance_text(chance: dict | None) -> str:
    if not chance:
        return "n/a"
    return f"{chance['expected']:.1f} [{chance['ci_low']:.0f}, {chance['ci_high']:.0f}] p={chance['p']:.2g}"


def _significance_text(sig: dict | None, col: str) -> str:
    entry = (sig or {}).get(col) or {}
    if not entry.get("measured"):
        return "not measured"
    flag = " NOISE LEVEL" if entry["noise_level"] else ""
    return f"{entry['n_positive']} > 0, {entry['n_negative']} < 0 of {entry['n_tested']}{flag}"


def summary_text(metrics: dict) -> str:
    """compare_summary.txt: header, significance, Spearman with paired differences, top-K and counter-examples
    against their permutation chance levels, main findings."""
    a, b = metrics["a"], metrics["b"]
    la, lb = a["label"], b["label"]
    boot = metrics["bootstrap"]
    synthetic = "SYNTHETIC DATA — not measurements. " if metrics.get("synthetic") else ""
    out = [
        f"{synthetic}COMPARISON {la} vs {lb} — task {metrics['task']}, model {metrics['model']}, "
        f"{metrics['n_layers']} layers × {metrics['n_heads']} heads",
        f"A = {la}: {a['run_dir']}",
        f"B = {lb}: {b['run_dir']}",
        f"dev {a.get('main_metric') or 'score'}: {la} {_num(a.get('score'))}, {lb} {_num(b.get('score'))}",
        "",
        "== Heads whose exact importance differs from 0 (t-test over examples, Benjamini–Hochberg q = 0.05) ==",
        f"{'':<10}{la:<34}{lb:<34}",
    ]
    sig = metrics.get("significance", {})
    for col in ("I_pre", "I_post"):
        out.append(f"{col:<10}{_significance_text(sig.get('a'), col):<34}{_significance_text(sig.get('b'), col):<34}")
    out += [
        "",
        f"== Spearman correlations over heads (95 % percentile bootstrap CI, {boot['n_resamples']} resamples "
        f"of heads, seed {boot['seed']}; B − A by the paired bootstrap, heads resampled jointly) ==",
        f"{'pair':<18}{la:<28}{lb:<28}{'B − A, paired 95 % CI, p':<34}verdict",
    ]
    for key, entry in metrics["spearman"].items():
        out.append(f"{key:<18}{format_rho(entry['a']):<28}{format_rho(entry['b']):<28}"
                   f"{_fmt_diff(entry['diff_b_minus_a']):<34}{entry['verdict']}")
    for key, why in metrics.get("skipped", {}).items():
        out.append(f"{key:<18}{why}")
    topk = metrics["topk"]
    out += ["", f"== Top-K overlap (K = {topk['k']} of {topk['n']} heads; chance = permutation mean "
                f"[95 % interval] and one-sided p, importance shuffled over heads) ==",
            f"{'pair':<18}{la:<8}{'chance':<26}{lb:<8}{'chance':<26}"]
    out += [f"{key:<18}{str(v['a']):<8}{_chance_text(v.get('chance_a')):<26}{str(v['b']):<8}"
            f"{_chance_text(v.get('chance_b')):<26}" for key, v in topk["pairs"].items()]
    ce = metrics["counter_examples"]
    out += ["", f"== Counter-examples (q_hi = {ce['a']['q_hi']}, q_lo = {ce['a']['q_lo']}; importance = "
                f"{ce['importance']['a']} / {ce['importance']['b']}; chance = permutation mean [95 % interval], p) ==",
            f"{'set':<24}{la:<8}{'chance':<26}{lb:<8}{'chance':<26}"]
    for name in ("important_static", "plastic_unimportant"):
        ca, cb = ((ce[side].get("chance") or {}).get(name) for side in ("a", "b"))
        out.append(f"{name:<24}{ce['a'][name]:<8}{_chance_text(ca):<26}{ce['b'][name]:<8}{_chance_text(cb):<26}")
    out += ["", "== Main findings ==", f"(rule: {metrics['rule']}; a within-run correlation is called positive or "
                                        f"negative only when its CI excludes 0)"]
    out += [f"- {line}" for line in metrics["findings"]] or ["- none"]
    return "\n".join(out) + "\n"


def _num(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def compare_runs(run_a: str | Path, run_b: str | Path, out: str | Path = "outputs", *, dpi: int = DEFAULT_DPI,
                 **analyze_kwargs) -> Path:
    """Compare two analysed runs (analysing them first when needed); returns the comparison directory."""
    meta_a, meta_b = read_run_meta(run_a), read_run_meta(run_b)
    # check on the raw tables first: a bad pair fails in a fraction of a second, before any analysis
    grids = [load_heads(run) for run in (run_a, run_b)]
    check_comparable(meta_a, meta_b, *({"n_layers": g.n_layers, "n_heads": g.n_heads} for g in grids))
    analysis_a = load_analysis(run_a, dpi=dpi, **analyze_kwargs)
    analysis_b = load_analysis(run_b, dpi=dpi, **analyze_kwargs)
    label_a, label_b = display_labels(meta_a, meta_b)
    boot = analysis_a[1]["bootstrap"]
    n_resamples, seed = boot["n_resamples"], boot["seed"]

    heads_a, heads_b = analysis_a[0], analysis_b[0]
    aligned = heads_a.merge(heads_b, on=["layer", "head"], suffixes=("_a", "_b"))  # [n_heads_total] rows
    headwise = {col: spearman_with_ci(aligned[f"{col}_a"], aligned[f"{col}_b"], n_resamples, seed)
                for col in HEADWISE_COLUMNS if col in heads_a and col in heads_b}
    metrics = build_metrics((label_a, label_b), (meta_a, meta_b), (analysis_a, analysis_b), headwise,
                            n_resamples, seed)
    metrics["theta0_shared"] = _same_theta0(aligned)
    metrics["findings"] = findings(metrics)

    out_dir = compare_dir_for(out, meta_a, meta_b)
    out_dir.mkdir(parents=True, exist_ok=True)
    unit = loss_unit(meta_a.task)
    runs = {label_a: analysis_a, label_b: analysis_b}
    fig_compare_I_vs_U(runs, out_dir / "compare_I_vs_U.png", unit, dpi)
    fig_compare_stats(runs, out_dir / "compare_stats.png", dpi)
    fig_update_dist({label_a: heads_a, label_b: heads_b}, out_dir / "compare_update_dist.png", dpi)
    fig_headwise(aligned, (label_a, label_b), headwise, out_dir / "compare_headwise.png", unit, dpi)
    atomic_write_text(out_dir / "compare_summary.txt", summary_text(metrics))
    atomic_write_json(out_dir / "compare_metrics.json", metrics)  # last: its presence means complete
    return out_dir

