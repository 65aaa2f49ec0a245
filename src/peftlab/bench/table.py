"""Per-run rows → one row per cell: mean ± std over seeds, parameters, time, memory, latency; best rank.

    score_mean = mean over seeds of the dev main metric; score_std = sample std (ddof 1) over seeds,
                 empty with one seed (no spread can be estimated from one run)
    pct_of_fft_params = 100 · trainable_params / (all parameters of θ0)   (θ0 = what FFT trains)
    best_rank: per (method, targets), the rank with the highest score_mean; ties → fewer trainable params.
               With one seed (or overlapping ± std) the "best" may not be distinguishable — bench.md says so.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from typing import Any

from peftlab.analysis.dev_chance import chance_caption

CELL_COLUMNS = ["method", "rank", "targets", "n_seeds", "seeds", "metric", "score_mean", "score_std", "vs_chance",
                "trainable_params", "trainable_params_without_classifier", "pct_of_fft_params",
                "train_s_mean", "train_s_std", "peak_memory_mb", "peak_memory_kind"]
RUN_COLUMNS = ["method", "rank", "targets", "seed", "metric", "score", "trainable_params",
               "trainable_params_without_classifier", "train_s", "forward_s", "backward_s", "optimizer_s",
               "peak_memory_mb", "peak_memory_kind", "run_dir"]


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return statistics.fmean(values) if values else None


def _std(values: list[float]) -> float | None:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return statistics.stdev(values) if len(values) >= 2 else None


def cell_rows(runs: list[dict[str, Any]], fft_params: int, latency: dict[str, dict]) -> list[dict[str, Any]]:
    """Aggregate run rows (RUN_COLUMNS + "cell") into one row per cell, in first-seen order."""
    cells: dict[str, list[dict]] = {}
    for run in runs:
        cells.setdefault(run["cell"], []).append(run)
    rows = []
    for label, group in cells.items():
        first = group[0]
        scores = [r["score"] for r in group]
        train = [r["train_s"] for r in group]
        row = {
            "method": first["method"], "rank": first["rank"], "targets": first["targets"],
            "n_seeds": len(group), "seeds": " ".join(str(r["seed"]) for r in group), "metric": first["metric"],
            "score_mean": _mean(scores), "score_std": _std(scores),
            "trainable_params": first["trainable_params"],
            "trainable_params_without_classifier": first["trainable_params_without_classifier"],
            "pct_of_fft_params": 100.0 * first["trainable_params"] / fft_params if fft_params else None,
            "train_s_mean": _mean(train), "train_s_std": _std(train),
            "peak_memory_mb": max((r["peak_memory_mb"] for r in group if r["peak_memory_mb"] is not None),
                                  default=None),
            "peak_memory_kind": first["peak_memory_kind"],
            **latency.get(label, {}),
            "cell": label,
        }
        rows.append(row)
    mark_best_rank(rows)
    return rows


def mark_best_rank(rows: list[dict[str, Any]]) -> None:
    """Set `best_rank` True on the best row of each (method, targets) group that has a rank (see module doc)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        row["best_rank"] = None
        if row["rank"] not in (None, "") and row["score_mean"] is not None:
            groups.setdefault((row["method"], row["targets"]), []).append(row)
    for group in groups.values():
        best = max(group, key=lambda r: (r["score_mean"], -r["trainable_params"]))
        for row in group:
            row["best_rank"] = row is best


def latency_columns(batches: list[int]) -> list[str]:
    cols = []
    for batch in batches:
        cols += [f"latency_b{batch}_ms", f"latency_b{batch}_merged_ms"]
    return cols + ["merge_note"]


def to_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buffer.getvalue()


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or value == "":
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def to_markdown(rows: list[dict[str, Any]], meta: dict[str, Any], batches: list[int]) -> str:
    """bench.md: a header saying what was measured and how, the table, best ranks, and caveats."""
    metric = rows[0]["metric"] if rows else "score"
    lines = [f"# Method benchmark — {meta['task']} ({meta['name']})", "",
             f"Model: `{meta['model']}`; profile `{meta['profile']}`; seeds {meta['seeds']}; "
             f"dev metric: **{metric}** (mean ± sample std over seeds, ddof 1; n/a with one seed).", "",
             f"Latency: median of {meta['latency_iters']} forward passes after {meta['latency_warmup']} warm-up, "
             f"batch B × {meta['seq_len']} tokens, {meta['latency_device']}, {meta['torch_threads']} torch threads. "
             "Merged = update folded into the base weights; adapters and prompt tuning cannot be merged.", "",
             "Train time = `timing.train_s` of final_metrics.json (optimizer steps only: no eval, no saving). "
             f"Peak memory: {', '.join(sorted({str(r['peak_memory_kind']) for r in rows}))}; "
             f"{meta.get('peak_memory_note', '')}.", ""]
    header = ["method", "rank", "targets", metric, "vs chance", "params (with clf)", "params (no clf)", "% FFT", "train s",
              "peak MB"] + [f"b{b} ms" for b in batches] + [f"b{b} merged ms" for b in batches] + ["best rank"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        score = _fmt(r["score_mean"]) + (f" ± {_fmt(r['score_std'], 2)}" if r["score_std"] is not None else "")
        cells = [r["method"], _fmt(r["rank"]), r["targets"] or "—", score, r.get("vs_chance") or "n/a",
                 _fmt(r["trainable_params"]),
                 _fmt(r["trainable_params_without_classifier"]), _fmt(r["pct_of_fft_params"], 3),
                 _fmt(r["train_s_mean"], 3), _fmt(r["peak_memory_mb"], 4)]
        cells += [_fmt(r.get(f"latency_b{b}_ms"), 3) for b in batches]
        cells += [_fmt(r.get(f"latency_b{b}_merged_ms"), 3) if r.get(f"latency_b{b}_merged_ms") is not None
                  else ("not mergeable" if str(r.get("merge_note", "")).startswith("not mergeable")
                        else "nothing to merge") for b in batches]
        cells.append(_fmt(r["best_rank"]) if r["best_rank"] is not None else "")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", chance_caption(meta.get("chance") or {})]
    best = [r for r in rows if r["best_rank"]]
    if best:
        lines += ["", "## Best rank per targets set", ""]
        for r in best:
            tied = [o for o in rows if o["method"] == r["method"] and o["targets"] == r["targets"] and o is not r
                    and r["score_std"] is not None and o["score_mean"] is not None
                    and abs(o["score_mean"] - r["score_mean"]) <= r["score_std"]]
            n_ranks = sum(1 for o in rows if o["method"] == r["method"] and o["targets"] == r["targets"])
            note = ("only one rank was run" if n_ranks == 1 else
                    "one seed: no spread, the ordering may be noise" if r["score_std"] is None else
                    f"within one std of rank(s) {', '.join(str(o['rank']) for o in tied)}: not clearly better"
                    if tied else "more than one std above the other ranks")
            lines.append(f"- {r['method']} on {r['targets'] or 'its fixed sites'}: rank {r['rank']} "
                         f"({metric} {_fmt(r['score_mean'])}; {note})")
    lines += equal_budget_markdown(meta.get("equal_budget") or {}, metric)
    lines += ["", "Figures (drawn from bench.csv only): " + ", ".join(meta.get("figures", [])) or "none", ""]
    return "\n".join(lines)


def equal_budget_markdown(block: dict[str, Any], metric: str) -> list[str]:
    """bench.md section: each LoRA-family cell at its best rank beside the adapter with matched parameters."""
    rows = block.get("rows") or []
    if not rows:
        return []
    lines = ["", "## Equal budget: adapter vs low-rank method at its best rank", "",
             f"Adapter bottleneck b chosen so that its trainable parameters without the classifier match the low-rank "
             f"cell's ({block.get('n_adapters')} adapters of width d = {block.get('d')}: P_A(b) = n·(2·d·b + b + d); "
             f"closest b, ties → smaller).", "",
             f"| low-rank cell | params (no clf) | {metric} | matched adapter | adapter params (no clf) | "
             f"adapter {metric} |", "|---|---|---|---|---|---|"]
    for e in rows:
        score = _fmt(e["score_mean"]) + (f" ± {_fmt(e['score_std'], 2)}" if e["score_std"] is not None else "")
        if e["adapter_cell"] is None:
            adapter = ("not run (pass --equal-budget, or add it: --methods adapter --ranks "
                       f"{e['bottleneck']})")
            params = f"{_fmt(e['adapter_params_formula'])} (formula)"
        else:
            adapter = _fmt(e["adapter_score_mean"]) + (f" ± {_fmt(e['adapter_score_std'], 2)}"
                                                       if e["adapter_score_std"] is not None else "")
            params = _fmt(e["adapter_params"])
        lines.append(f"| {e['cell']} | {_fmt(e['params'])} | {score} | b = {e['bottleneck']} | {params} | {adapter} |")
    return lines
