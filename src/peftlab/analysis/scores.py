"""`peftlab scores`: every finished run's dev scores in one table, and mean ± std across seeds.

Reads only `run_config.json` and `final_metrics.json` of the runs under `<out>/<METHOD>/<TASK>/seed<S>[_r<R>]/`
and writes `<out>/SCORES/`:

- `scores_runs.csv`: one row per finished run (task, label, seed, rank, every dev metric, epochs,
  training seconds, trainable parameters, run_dir);
- `scores_summary.csv`: per (task, label): n_seeds, and for the main metric and every other dev metric
  the mean and the sample standard deviation  s = sqrt(Σ(x − x̄)² / (n − 1))  (empty when n = 1);
- `scores.md`: the summary as a Markdown table, in percent, as the README shows it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from peftlab.errors import PeftlabError

RUN_COLUMNS = ("task", "label", "method", "seed", "rank", "main_metric", "score", "epochs", "train_s",
               "trainable_params", "total_params", "run_dir")


def collect_runs(out: str | Path, tasks: list[str] | None = None) -> pd.DataFrame:
    """One row per finished run under `out` (unfinished runs are skipped: their scores do not exist yet)."""
    from peftlab.io import read_json
    from peftlab.tasks import get_task

    out = Path(out)
    wanted = {get_task(t).name for t in tasks} if tasks else None
    from peftlab.methods import METHODS

    rows: list[dict[str, Any]] = []
    for final_path in sorted(out.glob("*/*/seed*/final_metrics.json")):
        run_dir = final_path.parent
        try:
            final = read_json(final_path)
            run_config = read_json(run_dir / "run_config.json")
        except (OSError, ValueError):
            continue  # a run being written right now; it will be listed once finished
        if not (isinstance(final, dict) and isinstance(run_config, dict)) or final.get("finished") is not True:
            continue
        # task, method and rank are read from the run's files, never from its directory names
        config = run_config.get("config") or {}

        def field(key):  # run_config.json first (written at the start), then final_metrics.json
            return run_config.get(key, config.get(key, final.get(key)))

        task, method_name = field("task"), field("method")
        method = METHODS.get(method_name)
        if method is None or not isinstance(task, str) or (wanted and task not in wanted):
            continue  # a foreign or newer-version run this peftlab cannot label
        rank = config.get("rank", final.get("rank")) if getattr(method, "low_rank", False) else None
        row = {
            "task": task, "label": method.dir_name if rank is None else f"{method.dir_name}_r{rank}",
            "method": method_name, "seed": config.get("seed", final.get("seed")), "rank": rank,
            "main_metric": final["main_metric"], "score": final["score"], "epochs": config.get("epochs"),
            "train_s": final.get("timing", {}).get("train_s"), "trainable_params": final.get("trainable_params"),
            "total_params": final.get("total_params"), "run_dir": str(run_dir),
        }
        for name, value in (final.get("dev") or {}).items():
            if name != "loss" and isinstance(value, (int, float)):
                row[f"dev_{name}"] = value
        rows.append(row)
    if not rows:
        raise PeftlabError(f"no finished runs under '{out}'; train some first, e.g. scripts/scores.sh or "
                           f"peftlab train --task rte --method fft --out {out}")
    frame = pd.DataFrame(rows)
    metric_columns = sorted(c for c in frame.columns if c.startswith("dev_"))
    return frame[list(RUN_COLUMNS) + metric_columns].sort_values(["task", "label", "seed"]).reset_index(drop=True)


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (task, label): n_seeds, seeds, and mean / sample std of `score` and of every `dev_*` column."""
    value_columns = ["score"] + [c for c in runs.columns if c.startswith("dev_")]
    rows = []
    for (task, label), group in runs.groupby(["task", "label"], sort=True):
        row: dict[str, Any] = {"task": task, "label": label, "main_metric": group["main_metric"].iloc[0],
                               "n_seeds": len(group), "seeds": " ".join(str(s) for s in sorted(group["seed"]))}
        for column in value_columns:
            values = group[column].dropna()
            row[f"{column}_mean"] = float(values.mean()) if len(values) else None
            row[f"{column}_std"] = float(values.std(ddof=1)) if len(values) > 1 else None
        row["train_s_mean"] = float(group["train_s"].mean())
        row["trainable_params"] = int(group["trainable_params"].iloc[0])
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table: main metric in percent, mean ± std over seeds."""
    lines = ["| task | method | metric | dev score (%) | seeds | train time (s, mean) | trainable params |",
             "|---|---|---|---|---|---|---|"]
    for row in summary.itertuples(index=False):
        mean, std = row.score_mean, row.score_std
        if mean is None or (isinstance(mean, float) and math.isnan(mean)):
            score = "n/a (no finite score)"  # a diverged run's score is null in final_metrics.json
        else:
            score = f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None and not math.isnan(std) else "")
        lines.append(f"| {row.task} | {row.label} | {row.main_metric} | {score} | {row.seeds} | "
                     f"{row.train_s_mean:.0f} | {row.trainable_params:,} |")
    return "\n".join(lines) + "\n"


def write_scores(out: str | Path = "outputs", tasks: list[str] | None = None) -> Path:
    """Write `<out>/SCORES/{scores_runs.csv, scores_summary.csv, scores.md}`; returns the directory."""
    from peftlab.io import atomic_write_text

    runs = collect_runs(out, tasks)
    summary = summarise(runs)
    scores_dir = Path(out) / "SCORES"
    scores_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(scores_dir / "scores_runs.csv", runs.to_csv(index=False))
    atomic_write_text(scores_dir / "scores_summary.csv", summary.to_csv(index=False))
    atomic_write_text(scores_dir / "scores.md", markdown_table(summary))
    return scores_dir
