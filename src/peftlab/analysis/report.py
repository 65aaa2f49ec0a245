"""Self-contained HTML reports: figures embedded as base64 PNG, tables as HTML, no external assets.

`write_report(out_html, sections)` renders a list of `Section`s; `study_report(...)` builds the
sections of a study from saved files only (run configs, final metrics, analyses, comparisons,
aggregates, rank comparisons).
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


def _run_sections(runs: list[tuple[Path, dict, dict]]) -> list[Section]:
    """Configs, dev scores, θ0 and Taylor agreement, statistics, counter-examples, figures."""
    configs, scores, theta0, stat_rows, topk_rows, case_rows = [], [], [], [], [], []
    for run_dir, stats, cases in runs:
        label, run = stats["run"]["label"], stats["run"]
        cfg = (read_json(run_dir / "run_config.json").get("config") or {})
        configs.append({"run": f"{label} seed {run['seed']}", "task": run["task"], "method": run["method"],
                        "rank": run["rank"], "alpha": cfg.get("alpha") if run["rank"] else None,
                        "lr": cfg.get("lr"), "epochs": cfg.get("epochs"), "max_steps": cfg.get("max_steps"),
                        "batch_size": cfg.get("batch_size"), "model": run["model"], "dir": str(run_dir)})
        final = read_json(run_dir / "final_metrics.json") if (run_dir / "final_metrics.json").is_file() else {}
        scores.append({"run": f"{label} seed {run['seed']}", "metric": final.get("main_metric"),
                       "dev score": final.get("score"), "train s": (final.get("timing") or {}).get("train_s"),
                       "trainable params": final.get("trainable_params"),
                       "peak memory MB": final.get("peak_memory_mb")})
        taylor = stats.get("taylor_vs_exact") or {}
        probe = read_json(run_dir / "probe.json") if (run_dir / "probe.json").is_file() else {}
        theta0.append({"run": f"{label} seed {run['seed']}", "θ0 head": stats.get("theta0"),
                       "probe": _probe_text(probe),
                       "Taylor vs exact, pre (ρ)": (taylor.get("pre") or {}).get("spearman"),
                       "Taylor vs exact, post (ρ)": (taylor.get("post") or {}).get("spearman")})
        stat_rows.append({"run": f"{label} seed {run['seed']}",
                          **{key: _ci_text(entry) for key, entry in stats["spearman"].items()}})
        topk = stats["topk"]
        topk_rows.append({"run": f"{label} seed {run['seed']}", "K": topk["k"],
                          "chance K²/n": topk["expected_by_chance"],
                          **{key: v["overlap"] for key, v in topk["pairs"].items()}})
        for name in ("important_static", "plastic_unimportant"):
            case_rows.append({"run": f"{label} seed {run['seed']}", "set": name, "rule": cases[name]["rule"],
                              "count": cases[name]["count"],
                              "heads": ", ".join(h["label"] for h in cases[name]["heads"]) or "none"})
    boot = runs[0][1]["bootstrap"] if runs else {}
    sections = [
        Section("Runs", [pd.DataFrame(configs)]),
        Section("Dev scores and cost", [pd.DataFrame(scores)]),
        Section("θ0 for the pre-training measurements; Taylor vs exact importance", [
            "θ0 head 'probe' = classifier trained on the frozen θ0 body before measuring I_pre and G; 'init' = the "
            "random classifier initialisation (importances then are near zero). Taylor agreement is Spearman ρ "
            "between |∂L/∂g| and the exact ablation ΔL over heads.", pd.DataFrame(theta0)]),
        Section("Statistics over heads", [
            f"Spearman ρ with a 95 % percentile bootstrap CI (heads resampled with replacement, "
            f"{boot.get('n_resamples')} resamples, seed {boot.get('seed')}).", pd.DataFrame(stat_rows),
            "Top-K overlap (count of heads in both top-K sets):", pd.DataFrame(topk_rows)]),
        Section("Counter-example heads", [
            "Thresholds are quantiles over the run's heads (q_hi = "
            f"{runs[0][2]['q_hi'] if runs else ''}, q_lo = {runs[0][2]['q_lo'] if runs else ''}); exact values in "
            "each run's analysis/cases.json.", pd.DataFrame(case_rows)]),
    ]
    for run_dir, stats, _ in runs:
        folder = run_dir / "analysis"
        sections.append(Section(f"Figures: {stats['run']['label']} seed {stats['run']['seed']}",
                                [folder / "fig_I_vs_U.png", folder / "fig_stats.png", folder / "fig_heatmaps.png"],
                                level=3))
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
    return write_report(study_dir / "report.html", sections, title or f"peftlab study report — {task}")
