"""`peftlab compare RUN_A RUN_B`: two methods on the same task, seed and model, head by head.

Writes `<out>/COMPARE/<TASK>/seed<S>/<A>_vs_<B>/` (one folder per pair, so that FFT vs LoRA_r4 and
FFT vs LoRA_r8 of one seed do not overwrite each other):
    compare_I_vs_U.png, compare_stats.png, compare_update_dist.png, compare_headwise.png,
    compare_metrics.json, compare_summary.txt
Runs without `analysis/` are analysed first.

Decision rule for findings: a difference between the methods is claimed only when the two 95 %
bootstrap CIs of ρ do not overlap; otherwise the summary says "not distinguishable". A correlation
within one run is called positive/negative only when its CI excludes 0. The paired bootstrap CI of
the difference ρ_B − ρ_A (same head resamples in both runs) is reported alongside; the overlap rule
is the more conservative of the two.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftlab.analysis.analyze import load_analysis
from peftlab.analysis.compare_figures import (MAIN_PAIRS, POST_PAIRS, fig_compare_I_vs_U, fig_compare_stats,
                                              fig_headwise, fig_update_dist)
from peftlab.analysis.figures import DEFAULT_DPI
from peftlab.analysis.stats import format_rho, intervals_overlap, paired_difference, spearman_with_ci
from peftlab.analysis.tables import load_heads, loss_unit, read_run_meta
from peftlab.errors import PeftlabError
from peftlab.io import atomic_write_json, atomic_write_text

FINDING_PAIRS = ("I_pre~U", "I_pre~Urel", "I_pre~G", "I_post~U")
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
    return Path(out) / "COMPARE" / meta_a.task / seed / f"{label_a}_vs_{label_b}"


def verdict(entry_a: dict, entry_b: dict, label_a: str, label_b: str) -> tuple[bool | None, str]:
    """(CIs overlap?, text): 'not distinguishable (CIs overlap)' or 'higher in <label> (CIs do not overlap)'."""
    overlap = intervals_overlap(entry_a, entry_b)
    if overlap is None:
        return None, "n/a (a CI is missing)"
    if overlap:
        return True, "not distinguishable (CIs overlap)"
    higher = label_a if entry_a["rho"] > entry_b["rho"] else label_b
    return False, f"higher in {higher} (CIs do not overlap)"


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
    return f"{diff['diff']:+.2f} [{diff['ci_low']:+.2f}, {diff['ci_high']:+.2f}]"


def build_metrics(labels: tuple[str, str], metas, analyses, headwise: dict, n_resamples: int, seed: int) -> dict:
    """compare_metrics.json: both runs' statistics side by side with differences and verdicts."""
    (label_a, label_b), (meta_a, meta_b) = labels, metas
    (heads_a, stats_a, cases_a), (heads_b, stats_b, _) = analyses
    aligned = heads_a.merge(heads_b, on=["layer", "head"], suffixes=("_a", "_b"))
    spearman: dict[str, Any] = {}
    for key in (*MAIN_PAIRS, *POST_PAIRS):
        entry_a, entry_b = stats_a["spearman"].get(key), stats_b["spearman"].get(key)
        if not entry_a or not entry_b:
            continue
        x, y = entry_a["x"], entry_a["y"]
        diff = paired_difference(aligned[f"{x}_a"], aligned[f"{y}_a"], aligned[f"{x}_b"], aligned[f"{y}_b"],
                                 n_resamples, seed)
        overlap, text = verdict(entry_a, entry_b, label_a, label_b)
        spearman[key] = {"a": entry_a, "b": entry_b, "diff_b_minus_a": diff, "cis_overlap": overlap, "verdict": text}
    topk_a, topk_b = stats_a["topk"], stats_b["topk"]
    run_a = {"label": label_a, **stats_a["run"]}
    run_b = {"label": label_b, **stats_b["run"]}
    return {
        "task": meta_a.task, "model": meta_a.model_name, "seeds": [meta_a.seed, meta_b.seed],
        "n_layers": stats_a["n_layers"], "n_heads": stats_a["n_heads"], "a": run_a, "b": run_b,
        "bootstrap": {"n_resamples": n_resamples, "seed": seed, "level": 0.95, "method": "percentile",
                      "paired": "both runs resampled with the same head indices"},
        "rule": "a difference is claimed only when the two 95 % CIs do not overlap",
        "spearman": spearman,
        "topk": {"k": topk_a["k"], "n": topk_a["n"], "expected_by_chance": topk_a["expected_by_chance"],
                 "pairs": {p: {"a": topk_a["pairs"][p]["overlap"], "b": topk_b["pairs"].get(p, {}).get("overlap")}
                           for p in topk_a["pairs"]}},
        "counter_examples": {"a": stats_a["counter_examples"], "b": stats_b["counter_examples"],
                             "expected_by_chance": cases_a.get("expected_by_chance")},
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
                     f"({sign_phrase(b)}); between methods: {entry['verdict']}; "
                     f"paired difference {label_b} − {label_a} = {_fmt_diff(entry['diff_b_minus_a'])}.")
    for col in ("U", "I_post"):
        entry = metrics["headwise"].get(col)
        if entry and entry.get("rho") is not None:
            lines.append(f"same head, {col} under {label_a} vs {label_b}: {format_rho(entry)} ({sign_phrase(entry)}).")
    return lines


def summary_text(metrics: dict) -> str:
    """compare_summary.txt: header, Spearman with differences, top-K overlap, counter-examples, main findings."""
    a, b = metrics["a"], metrics["b"]
    la, lb = a["label"], b["label"]
    boot = metrics["bootstrap"]
    out = [
        f"COMPARISON {la} vs {lb} — task {metrics['task']}, model {metrics['model']}, "
        f"{metrics['n_layers']} layers × {metrics['n_heads']} heads",
        f"A = {la}: {a['run_dir']}",
        f"B = {lb}: {b['run_dir']}",
        f"dev {a.get('main_metric') or 'score'}: {la} {_num(a.get('score'))}, {lb} {_num(b.get('score'))}",
        "",
        f"== Spearman correlations over heads (95 % percentile bootstrap CI, {boot['n_resamples']} resamples "
        f"of heads, seed {boot['seed']}) ==",
        f"{'pair':<14}{la:<28}{lb:<28}{'B − A, paired 95 % CI':<26}verdict",
    ]
    for key, entry in metrics["spearman"].items():
        out.append(f"{key:<14}{format_rho(entry['a']):<28}{format_rho(entry['b']):<28}"
                   f"{_fmt_diff(entry['diff_b_minus_a']):<26}{entry['verdict']}")
    topk = metrics["topk"]
    out += ["", f"== Top-K overlap (K = {topk['k']} of {topk['n']} heads; expected by chance K²/n = "
                f"{topk['expected_by_chance']:.2f}) ==",
            f"{'pair':<14}{la:<12}{lb:<12}"]
    out += [f"{key:<14}{str(v['a']):<12}{str(v['b']):<12}" for key, v in topk["pairs"].items()]
    ce = metrics["counter_examples"]
    out += ["", f"== Counter-examples (q_hi = {ce['a']['q_hi']}, q_lo = {ce['a']['q_lo']}; expected if independent "
                f"≈ {_num(ce.get('expected_by_chance'), 1)}) ==",
            f"{'set':<24}{la:<12}{lb:<12}"]
    for name in ("important_static", "plastic_unimportant"):
        out.append(f"{name:<24}{ce['a'][name]:<12}{ce['b'][name]:<12}")
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

