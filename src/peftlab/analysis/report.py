"""Self-contained HTML reports: figures embedded as base64 PNG, tables as HTML, no external assets.

`write_report(out_html, sections)` renders a list of `Section`s; `study_report(...)` builds the
sections of a study from saved files only (run configs, final metrics, analyses, comparisons,
aggregates, rank comparisons). The first section ("Read this first") states, per run, the dev score,
the θ0 probe's held-out score next to its chance level, which classifiers θ0 and the plasticity
gradients used, how many heads' importance differs from 0, the permutation chance levels, and every
warning (noise-level importance, a probe no better than chance, Taylor standing in for exact I,
synthetic data — the title then says SYNTHETIC).
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from peftlab.io import atomic_write_text, read_json

STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #bbb; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; } th { background: #f0f0f0; }
td:first-child, th:first-child { text-align: left; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.82em; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
.note { color: #666; font-size: 0.9em; }
.warn { background: #fff3cd; border: 1px solid #e0b400; padding: 0.5em 1em; margin: 0.8em 0; }
.warn li { margin: 0.2em 0; }
"""


class Raw(str):
    """Trusted HTML inserted verbatim (everything else is escaped)."""


class Pre(str):
    """Preformatted text (escaped, shown in a monospace block)."""


@dataclass
class Section:
    """One report section: a title and blocks (str paragraph, Raw, Pre, Path to a PNG, DataFrame, dict, list)."""

    title: str
    blocks: list[Any] = field(default_factory=list)
    level: int = 2  # <h2> by default; 3 for a subsection


def image_html(path: str | Path, alt: str | None = None) -> str:
    """<img> with the PNG embedded as a data: URI (a missing file becomes a note, never a broken link)."""
    path = Path(path)
    if not path.is_file():
        return f'<p class="note">figure {html.escape(path.name)} not found</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt or path.name)}" src="data:image/png;base64,{data}">'


def table_html(frame: pd.DataFrame) -> str:
    """A DataFrame as an escaped HTML table; floats with 4 significant digits."""
    return frame.to_html(index=False, escape=True, na_rep="–", border=0,
                         float_format=lambda v: f"{v:.4g}")


def block_html(block: Any) -> str:
    """Render one block by type (see `Section`)."""
    if isinstance(block, Raw):
        return str(block)
    if isinstance(block, Pre):
        return f"<pre>{html.escape(block)}</pre>"
    if isinstance(block, Path):
        return image_html(block)
    if isinstance(block, pd.DataFrame):
        return table_html(block)
    if isinstance(block, dict):
        rows = [{"key": k, "value": v if isinstance(v, (str, int, float, type(None))) else json.dumps(v)}
                for k, v in block.items()]
        return table_html(pd.DataFrame(rows))
    if isinstance(block, list):
        return table_html(pd.DataFrame(block)) if block and isinstance(block[0], dict) else \
            "<ul>" + "".join(f"<li>{html.escape(str(item))}</li>" for item in block) + "</ul>"
    return f"<p>{html.escape(str(block))}</p>"


def write_report(out_html: str | Path, sections: Iterable[Section | tuple], title: str = "peftlab report") -> Path:
    """Write a self-contained HTML file (atomically) and return its path. Sections may be (title, blocks) tuples."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for section in sections:
        if not isinstance(section, Section):
            section = Section(*section)
        parts.append(f"<h{section.level}>{html.escape(section.title)}</h{section.level}>")
        parts += [block_html(block) for block in section.blocks]
    parts.append("</body></html>\n")
    return atomic_write_text(out_html, "\n".join(parts))


# --- the study report ---------------------------------------------------------------------------

def _ci_text(entry: dict | None) -> str:
    if not entry or entry.get("rho") is None:
        return "n/a"
    if entry.get("ci_low") is None:
        return f"{entry['rho']:.3f}"
    return f"{entry['rho']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def _probe_text(probe: dict) -> str | None:
    """The probe's size and fit from probe.json, e.g. 'n = 256, train accuracy 0.52, subset loss 0.709'."""
    if not probe:
        return None
    parts = [f"n = {probe['n_examples']}" if "n_examples" in probe else None]
    metric_name = probe.get("subset_metric_name", "subset metric")
    for key, text in (("train_accuracy", "train accuracy"), ("train_loss", "train loss"),
                      ("subset_loss", "subset loss"), ("subset_metric", metric_name)):
        if isinstance(probe.get(key), (int, float)):
            parts.append(f"{text} {probe[key]:.3g}")
    return ", ".join(p for p in parts if p) or None


def _chance_text(chance: dict | None) -> str:
    if not chance:
        return "n/a"
    return f"chance {chance['expected']:.1f} [{chance['ci_low']:.0f}, {chance['ci_high']:.0f}], p = {chance['p']:.2g}"


def _count_with_chance(count, chance: dict | None) -> str:
    if count is None:
        return "not defined (no U)"
    return f"{count} ({_chance_text(chance)})"


def _probe_heldout(stats: dict) -> str:
    probe = stats.get("probe") or {}
    if stats.get("theta0") != "probe":
        return "no probe (θ0 classifier = random init)"
    if not probe.get("measured"):
        return f"not measured ({probe.get('why', 'no held-out score')})"
    metric = probe.get("metric_name") or "metric"
    fmt = lambda v: f"{v:.3f}" if isinstance(v, (int, float)) else "n/a"  # noqa: E731
    text = f"{metric} {fmt(probe['heldout_metric'])} vs chance {fmt(probe.get('chance_metric'))}"
    if probe.get("n_heldout"):
        text += f" (n = {probe['n_heldout']} held-out rows)"
    if probe.get("better_than_chance") is False:
        text += " — NOT better than chance"
    return text


def _sig_text(stats: dict, col: str) -> str:
    entry = (stats.get("significance") or {}).get(col)
    if entry is None:
        return "not measured"
    if not entry.get("measured"):
        return f"not measured ({entry.get('why')})"
    text = f"{entry['n_positive']} > 0, {entry['n_negative']} < 0 of {entry['n_tested']}"
    return text + (" — NOISE LEVEL" if entry["noise_level"] else "")


def _noise_text(stats: dict) -> str:
    sig = stats.get("significance") or {}
    measured = [c for c in ("I_pre", "I_post") if (sig.get(c) or {}).get("measured")]
    if not measured:
        return "not measured (no I_se)"
    flagged = sig.get("noise_level_phases") or []
    return f"YES ({', '.join(flagged)})" if flagged else f"no ({', '.join(measured)} tested)"


def run_warnings(stats: dict) -> list[str]:
    """Plain-language warnings about one run's numbers (shown first in the report)."""
    name = f"{stats['run']['label']} seed {stats['run']['seed']}"
    out = []
    if stats["run"].get("synthetic"):
        out.append(f"{name}: SYNTHETIC run — these numbers are not measurements.")
    sig = stats.get("significance") or {}
    for col in sig.get("noise_level_phases", []):
        out.append(f"{name}, {col}: {sig[col]['message']} (only {sig[col]['n_significant']} of "
                   f"{sig[col]['n_tested']} heads differ from 0 after Benjamini–Hochberg).")
    probe = stats.get("probe") or {}
    if probe.get("measured") and probe.get("better_than_chance") is False:
        out.append(f"{name}: the θ0 probe does not beat chance on held-out rows ({_probe_heldout(stats)}); "
                   f"I_pre and G measured with it may carry little signal.")
    update = stats.get("update") or {}
    if update.get("defined") is False:
        out.append(f"{name}: update not defined for {update.get('method')} ({update.get('why')}); U-based "
                   f"statistics and counter-examples are left empty.")
    for phase, col in (stats.get("importance_columns") or {}).items():
        if col and not col.startswith("I_"):
            out.append(f"{name}: exact importance on {phase} was not measured; statistics keyed '{col}~…' use the "
                       f"first-order Taylor score |∂L/∂g|, not I.")
    return out


def summary_section(runs: list[tuple[Path, dict, dict]]) -> Section:
    """The first screen: score, probe vs chance, classifiers, significant heads, chance levels, warnings."""
    rows, warnings = [], []
    for _, stats, cases in runs:
        run = stats["run"]
        topk = stats["topk"]["pairs"]
        imp = (stats.get("importance_columns") or {}).get("pre") or "I_pre"
        top = topk.get(f"{imp}~U")
        ce = stats["counter_examples"]
        chance = ce.get("chance") or {}
        rows.append({
            "run": f"{run['label']} seed {run['seed']}" + (" (SYNTHETIC)" if run.get("synthetic") else ""),
            f"dev {run.get('main_metric') or 'score'}": "n/a" if run.get("score") is None else f"{run['score']:.4f}",
            "θ0 classifier": stats.get("theta0") or "not recorded",
            "θ0 probe, held-out vs chance": _probe_heldout(stats),
            "plasticity classifier (G, F)": stats.get("plasticity_classifier") or "not recorded",
            "heads with I_pre ≠ 0 (BH q=.05)": _sig_text(stats, "I_pre"),
            "heads with I_post ≠ 0": _sig_text(stats, "I_post"),
            "importance at noise level?": _noise_text(stats),
            f"top-{stats['topk']['k']} overlap {imp}~U": "n/a" if not top else _count_with_chance(top["overlap"],
                                                                                              top.get("chance")),
            "important but static": _count_with_chance(ce["important_static"], chance.get("important_static")),
            "plastic but unimportant": _count_with_chance(ce["plastic_unimportant"], chance.get("plastic_unimportant")),
        })
        warnings += run_warnings(stats)
    blocks: list[Any] = []
    if warnings:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
        blocks.append(Raw(f'<div class="warn"><b>Warnings</b><ul>{items}</ul></div>'))
    else:
        blocks.append("No warnings: importance is above noise level in every measured phase and the θ0 probe beats "
                      "chance where it was evaluated.")
    perm = runs[0][1].get("permutation", {}) if runs else {}
    blocks += [pd.DataFrame(rows),
               Raw('<p class="note">' + html.escape(
                   "Significance: t = I/I_se over the evaluation examples, two-sided, Benjamini–Hochberg over heads "
                   "at q = 0.05; fewer than 10 % significant heads = importance at noise level. Chance levels: the "
                   f"importance column shuffled over heads {perm.get('n_permutations')} times (seed "
                   f"{perm.get('seed')}); mean [95 % interval] and one-sided p = (1 + #null ≥ observed)/(B + 1).")
                   + "</p>")]
    return Section("Read this first", blocks)


def measure_times(run_dir: Path) -> dict[str, Any]:
    """Seconds of the measurement steps from `measure_manifest.json` (`steps.<step>.parts`, bookkeeping.StepTimer).

    exact sweeps (with their impl), Taylor (one forward + backward per batch; only with --importance
    taylor|both) and G, F (gradfisher_pre, per-example gate gradients) side by side; "reused" when a step was
    copied from a sibling run, "not run" when the manifest has no such step or part.
    """
    path = run_dir / "measure_manifest.json"
    steps = (read_json(path).get("steps") or {}) if path.is_file() else {}

    def part(step: str, name: str) -> Any:
        entry = steps.get(step) or {}
        if entry.get("reused_from"):
            return "reused"
        value = (entry.get("parts") or {}).get(name)
        return "not run" if value is None else round(float(value), 1)

    row: dict[str, Any] = {}
    for phase in ("pre", "post"):
        impl = ((steps.get(f"importance_{phase}") or {}).get("settings") or {}).get("impl")
        row[f"exact I_{phase} s" + (f" ({impl})" if impl else "")] = part(f"importance_{phase}", "exact")
        row[f"Taylor {phase} s"] = part(f"importance_{phase}", "taylor")
    row["G, F s"] = part("gradfisher_pre", "gradfisher")
    return row


def _rho_or_why(entry: dict | None) -> str:
    if not entry:
        return "not measured"
    if entry.get("rho") is None:
        return f"not measured ({entry['why']})" if entry.get("why") else "n/a"
    return _ci_text(entry)


def adalora_section(runs: list[tuple[Path, dict, dict]]) -> Section | None:
    """AdaLoRA runs only: Spearman ρ between each q/k/v/o module's final rank and its layer's summed head
    measurements (stats.json `adalora_ranks`), per module type and pooled, with the verdict in words."""
    rows, figures, boot = [], [], None
    for run_dir, stats, _ in runs:
        block = stats.get("adalora_ranks")
        if not block:
            continue
        boot = block["bootstrap"]
        name = f"{stats['run']['label']} seed {stats['run']['seed']}"
        for group, entries in block["spearman"].items():
            for aggregate, entry in entries.items():
                rows.append({"run": name, "signal": block.get("signal"), "modules": group,
                             "aggregate": f"Σ {entry.get('from') or aggregate}", "n": entry.get("n"),
                             "ρ [95 % CI]": _rho_or_why(entry), "reading": entry.get("verdict")})
        if block.get("figure"):
            figures.append(run_dir / "analysis" / block["figure"])
    if not rows:
        return None
    return Section("AdaLoRA: does the final rank follow importance or plasticity?", [
        "For each AdaLoRA run, the final rank of every layer's q, k, v, o matrix (from the saved rank pattern) "
        "against the sum over that layer's heads of I_pre, G, U (the module's own U_q/U_k/U_v/U_o slice) and I_post. "
        f"Spearman ρ over modules with a 95 % percentile bootstrap CI (modules resampled, {boot['n_resamples']} "
        f"resamples, seed {boot['seed']}); per module type n = number of layers, pooled n = 4 × layers. "
        "I_pre, G and I_post are per head, so the four modules of a layer share one sum (only U is per module). "
        "Modules of one layer and one budget are not independent: read the CIs as describing this run's modules. "
        "Per-module values in each run's analysis/module_ranks.csv.", pd.DataFrame(rows), *figures])


def _run_sections(runs: list[tuple[Path, dict, dict]]) -> list[Section]:
    """Summary, configs, dev scores, θ0 and Taylor agreement, statistics, counter-examples, figures."""
    configs, scores, theta0, stat_rows, topk_rows, case_rows = [], [], [], [], [], []
    for run_dir, stats, cases in runs:
        label, run = stats["run"]["label"], stats["run"]
        name = f"{label} seed {run['seed']}"
        cfg = (read_json(run_dir / "run_config.json").get("config") or {})
        configs.append({"run": name, "task": run["task"], "method": run["method"],
                        "rank": run["rank"], "alpha": cfg.get("alpha") if run["rank"] else None,
                        "lr": cfg.get("lr"), "epochs": cfg.get("epochs"), "max_steps": cfg.get("max_steps"),
                        "batch_size": cfg.get("batch_size"), "model": run["model"],
                        # what the classifier reads (peftlab.pooling); a run_config without the key is [CLS]
                        "pooling": cfg.get("pooling") or "cls", "dir": str(run_dir)})
        final = read_json(run_dir / "final_metrics.json") if (run_dir / "final_metrics.json").is_file() else {}
        scores.append({"run": name, "metric": final.get("main_metric"),
                       "dev score": final.get("score"), "train s": (final.get("timing") or {}).get("train_s"),
                       "trainable params": final.get("trainable_params"),
                       "peak memory MB": final.get("peak_memory_mb"), **measure_times(run_dir)})
        taylor = stats.get("taylor_vs_exact") or {}
        probe = read_json(run_dir / "probe.json") if (run_dir / "probe.json").is_file() else {}
        row = {"run": name, "θ0 classifier": stats.get("theta0"),
               "plasticity classifier": stats.get("plasticity_classifier") or "not recorded",
               "probe (training)": _probe_text(probe), "probe held-out vs chance": _probe_heldout(stats)}
        for phase in ("pre", "post"):
            entry = taylor.get(phase) or {}
            row[f"ρ(−∂L/∂g, I_{phase})"] = _rho_or_why(entry.get("-dL_dgate~I")) if entry.get("measured") else \
                f"not measured ({entry.get('why', 'no Taylor')})"
            row[f"ρ(|∂L/∂g|, |I_{phase}|)"] = _rho_or_why(entry.get("|dL_dgate|~|I|")) if entry.get("measured") \
                else "not measured"
        theta0.append(row)
        stat_rows.append({"run": name, **{key: _ci_text(entry) for key, entry in stats["spearman"].items()}})
        topk = stats["topk"]
        topk_rows.append({"run": name, "K": topk["k"],
                          **{key: _count_with_chance(v["overlap"], v.get("chance")) for key, v in topk["pairs"].items()}})
        for set_name in ("important_static", "plastic_unimportant"):
            case_rows.append({"run": name, "set": set_name, "rule": cases[set_name]["rule"],
                              "count": ("not defined" if cases[set_name]["count"] is None
                                        else cases[set_name]["count"]), "chance (permutation)": _chance_text(
                                  cases[set_name].get("chance")),
                              "heads": ", ".join(h["label"] for h in cases[set_name]["heads"]) or "none"})
    boot = runs[0][1]["bootstrap"] if runs else {}
    sections = [
        summary_section(runs),
        Section("Runs", [pd.DataFrame(configs)]),
        Section("Dev scores and cost", [pd.DataFrame(scores)]),
        Section("θ0 for the pre-training measurements; Taylor vs exact importance", [
            "θ0 classifier 'probe' = classifier trained on the frozen θ0 body before measuring I_pre; 'init' = the "
            "random classifier initialisation (importances then are near zero). The plasticity classifier is the "
            "one the gate gradients G, F were taken with. Taylor agreement: Spearman ρ over heads, with a 95 % "
            "bootstrap CI, between the first-order estimate −∂L/∂g (signed) or |∂L/∂g| and the exact ablation ΔL "
            "(or |ΔL|).", pd.DataFrame(theta0)]),
        Section("Statistics over heads", [
            f"Spearman ρ with a 95 % percentile bootstrap CI (heads resampled with replacement, "
            f"{boot.get('n_resamples')} resamples, seed {boot.get('seed')}).", pd.DataFrame(stat_rows),
            "Top-K overlap (count of heads in both top-K sets) with its permutation chance level:",
            pd.DataFrame(topk_rows)]),
        Section("Counter-example heads", [
            "Thresholds are quantiles over the run's heads (q_hi = "
            f"{runs[0][2]['q_hi'] if runs else ''}, q_lo = {runs[0][2]['q_lo'] if runs else ''}); exact values in "
            "each run's analysis/cases.json. Chance = permutation null (importance shuffled against U and G).",
            pd.DataFrame(case_rows)]),
    ]
    adalora = adalora_section(runs)
    if adalora is not None:
        sections.append(adalora)
    for run_dir, stats, _ in runs:
        folder = run_dir / "analysis"
        figures = [folder / "fig_I_vs_U.png", folder / "fig_stats.png", folder / "fig_heatmaps.png"]
        if (folder / "fig_importance_ci.png").is_file():
            figures.append(folder / "fig_importance_ci.png")
        sections.append(Section(f"Figures: {stats['run']['label']} seed {stats['run']['seed']}", figures, level=3))
    return sections


def study_report(study_dir: str | Path, runs: list[Path], compare_dirs: list[Path] | None = None,
                 aggregate_dir: str | Path | None = None, ranks_dir: str | Path | None = None,
                 title: str | None = None) -> Path:
    """Render `<study_dir>/report.html` from saved files; runs are analysed first when needed."""
    from peftlab.analysis.analyze import load_analysis

    study_dir = Path(study_dir)
    loaded = []
    for run_dir in runs:
        _, stats, cases = load_analysis(run_dir)
        loaded.append((Path(run_dir), stats, cases))
    sections = _run_sections(loaded)
    for compare_dir in compare_dirs or []:
        compare_dir = Path(compare_dir)
        summary = compare_dir / "compare_summary.txt"
        sections.append(Section(f"Comparison: {compare_dir.name}", [
            Pre(summary.read_text(encoding="utf-8")) if summary.is_file() else "compare_summary.txt not found",
            compare_dir / "compare_stats.png", compare_dir / "compare_I_vs_U.png",
            compare_dir / "compare_headwise.png", compare_dir / "compare_update_dist.png"]))
    if aggregate_dir is not None:
        aggregate_dir = Path(aggregate_dir)
        table = pd.read_csv(aggregate_dir / "aggregate.csv")
        result = read_json(aggregate_dir / "aggregate.json")
        sections.append(Section("Across seeds", [
            f"{result['interval']}. Seeds: {result['seeds']}.", table, aggregate_dir / "fig_aggregate.png"]))
    if ranks_dir is not None:
        ranks_dir = Path(ranks_dir)
        table = pd.read_csv(ranks_dir / "rank_comparison.csv").drop(columns=["run_dir"], errors="ignore")
        sections.append(Section("Across LoRA ranks", [table, ranks_dir / "fig_rank_comparison.png"]))
    task = loaded[0][1]["run"]["task"] if loaded else ""
    title = title or f"peftlab study report — {task}"
    if any(stats["run"].get("synthetic") for _, stats, _ in loaded):
        title = f"SYNTHETIC — {title} (synthetic test data, not measurements)"
    return write_report(study_dir / "report.html", sections, title)
