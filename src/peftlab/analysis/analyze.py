"""`peftlab analyze RUN_DIR`: heads.csv, stats.json, cases.json and the per-run figures in RUN_DIR/analysis/.

For an AdaLoRA run also module_ranks.csv, stats.json `adalora_ranks` and fig_adalora_rank_vs_heads.png
(final rank of each q/k/v/o module vs the summed head measurements; see `adalora_heads.py`).

Reads only the saved measurement tables (see `tables.py`); a figure can be redrawn without a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftlab.analysis.cases import Q_HI, Q_LO, find_cases
from peftlab.analysis.figures import DEFAULT_DPI, run_figures
from peftlab.analysis.stats import DEFAULT_LEVEL, DEFAULT_PERMUTATIONS, DEFAULT_RESAMPLES, DEFAULT_SEED, compute_stats
from peftlab.analysis.tables import SOURCES, load_heads, loss_unit, read_probe, read_run_meta
from peftlab.io import atomic_write_json, atomic_write_text, read_json

ANALYSIS_DIR = "analysis"
# stats.json layout version: an analysis written by an older peftlab (e.g. Taylor still in I_post, analytic
# chance levels) is redone rather than reused.
STATS_FORMAT = 2
TAYLOR_FILE = "importance_taylor_vs_exact.json"


def run_summary(meta) -> dict[str, Any]:
    """The `run` block of stats.json."""
    return {"run_dir": str(meta.run_dir), "label": meta.label, "task": meta.task, "method": meta.method,
            "seed": meta.seed, "rank": meta.rank, "model": meta.model_name, "main_metric": meta.main_metric,
            "score": meta.score, "finished": bool(meta.final and meta.final.get("finished") is True),
            "synthetic": meta.synthetic}


def analyze_run(
    run_dir: str | Path,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = DEFAULT_LEVEL,
    q_hi: float = Q_HI,
    q_lo: float = Q_LO,
    top_k: int | None = None,
    n_permutations: int = DEFAULT_PERMUTATIONS,
    dpi: int = DEFAULT_DPI,
    figures: bool = True,
) -> Path:
    """Analyse one run and return `RUN_DIR/analysis` (heads.csv, stats.json, cases.json, fig_*.png).

    stats.json is written last: its presence means the analysis is complete. Bootstrap and permutation
    draws both use `seed` (recorded in stats.json).
    """
    run_dir = Path(run_dir)
    meta = read_run_meta(run_dir)
    table = load_heads(run_dir)
    heads = table.heads
    out_dir = run_dir / ANALYSIS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)

    cases = find_cases(heads, q_hi=q_hi, q_lo=q_lo, n_permutations=n_permutations, seed=seed, level=level)
    stats = compute_stats(heads, n_resamples=n_resamples, seed=seed, level=level, k=top_k, cases=cases,
                          n_examples=table.n_examples, n_permutations=n_permutations)
    unit = loss_unit(meta.task)
    notes = list(table.notes)
    if not (meta.final and meta.final.get("finished") is True):
        notes.append("final_metrics.json missing or not finished: dev score unknown")
    if meta.synthetic:
        notes.insert(0, "SYNTHETIC run (run_config.json says so): these numbers are not measurements")
    probe = read_probe(run_dir)
    if probe.get("measured") and probe.get("better_than_chance") is False:
        notes.append(f"θ0 probe is not better than chance on held-out rows ({probe.get('metric_name')} "
                     f"{probe.get('heldout_metric')} vs chance {probe.get('chance_metric')}): I_pre and G "
                     f"measured with it may carry little signal")
    if stats["significance"].get("noise_level"):
        notes.append(stats["significance"]["message"])
    stats = {
        "format": STATS_FORMAT,
        "run": run_summary(meta),
        "n_layers": table.n_layers,
        "n_heads": table.n_heads,
        "loss_unit": unit,
        "theta0": table.theta0,
        "theta0_classifier": table.theta0,
        "plasticity_classifier": table.plasticity_classifier,
        "n_examples": table.n_examples,
        "update": ({"defined": False, "method": meta.method, "why": table.update_reason}
                   if table.update_reason else {"defined": True}),
        "probe": probe,
        **stats,
        "taylor_vs_exact_file": read_json(run_dir / TAYLOR_FILE) if (run_dir / TAYLOR_FILE).is_file() else None,
        "inputs": [s.file for s in SOURCES.values() if (run_dir / s.file).is_file()],
    }
    atomic_write_text(out_dir / "heads.csv", heads.to_csv(index=False))
    atomic_write_json(out_dir / "cases.json", cases)
    if meta.method == "adalora":  # issue 9 §5: final rank of each q/k/v/o module next to the layer's heads
        from peftlab.analysis.adalora_heads import analyze_adalora

        signal = ((read_json(run_dir / "run_config.json").get("config") or {}).get("signal")
                  if (run_dir / "run_config.json").is_file() else None)
        stats["adalora_ranks"], adalora_notes = analyze_adalora(
            run_dir, heads, out_dir, signal=signal, n_resamples=n_resamples, seed=seed, level=level, dpi=dpi,
            figures=figures)
        notes += adalora_notes
    if figures:
        written, figure_notes = run_figures(heads, table.n_layers, table.n_heads, stats, cases, out_dir, unit,
                                            meta.label, dpi)
        notes += figure_notes
        stats["figures"] = [p.name for p in written]
        if (stats.get("adalora_ranks") or {}).get("figure"):
            stats["figures"].append(stats["adalora_ranks"]["figure"])
    stats["notes"] = notes
    atomic_write_json(out_dir / "stats.json", stats)
    return out_dir


def _newest_input(run_dir: Path) -> float:
    files = [run_dir / s.file for s in SOURCES.values()] + [run_dir / "final_metrics.json", run_dir / TAYLOR_FILE,
                                                            run_dir / "probe.json", run_dir / "final_summary.json"]
    return max((f.stat().st_mtime for f in files if f.is_file()), default=0.0)


def _stats_format(path: Path) -> int | None:
    try:
        stats = read_json(path)
    except ValueError:  # a corrupt file is redone
        return None
    if (path.parent.parent / "final_summary.json").is_file() and "adalora_ranks" not in stats:
        return None  # an AdaLoRA run analysed before the rank-vs-heads block existed is redone
    return stats.get("format")


def ensure_analysis(run_dir: str | Path, **kwargs) -> Path:
    """`RUN_DIR/analysis`, analysing the run first when stats.json is absent or older than a measurement file."""
    run_dir = Path(run_dir)
    stats_path = run_dir / ANALYSIS_DIR / "stats.json"
    if stats_path.is_file() and (run_dir / ANALYSIS_DIR / "heads.csv").is_file() \
            and stats_path.stat().st_mtime >= _newest_input(run_dir) and _stats_format(stats_path) == STATS_FORMAT:
        return stats_path.parent
    return analyze_run(run_dir, **kwargs)


def load_analysis(run_dir: str | Path, **kwargs):
    """(heads DataFrame, stats dict, cases dict) of a run, analysing it first when needed."""
    import pandas as pd

    out_dir = ensure_analysis(run_dir, **kwargs)
    return pd.read_csv(out_dir / "heads.csv"), read_json(out_dir / "stats.json"), read_json(out_dir / "cases.json")
