"""Learning-rate / epoch search: finished sweeps → search table, selection, presets.

    python -m peftlab.sweep.search outputs/SWEEP/search-rte-fft outputs/SWEEP/search-rte-lora [--out DIR]

The search sweeps (`configs/sweeps/search-<task>-<method>.yaml`) train every (lr, seed) for E epochs and
evaluate on the dev split at the end of every epoch (`eval_each_epoch`), so one run gives the dev score
after 1, 2, …, E epochs. They train with `lr_scheduler: constant_with_warmup`: the learning rate at a
step does not depend on E (only the warmup does, see `preset_for`), so the model after epoch k of an
E-epoch search run is the model a k-epoch run with the preset below trains — the data order is a pure
function of (seed, epoch) (`training/data.py`). A linear decay to 0 would make "epoch k of E" a schedule
nobody could re-run, so for such runs (SST-2's one-epoch search uses `linear`) only epoch E enters the table.

Outputs (under `--out`, default `<first sweep's parent>/../SEARCH`):
  search.csv      one row per (task, method, lr, epoch, seed): every dev metric after that epoch and the
                  train time up to it (`train_s` × k / E; every epoch has the same number of steps);
  search.md       the same as a table per (task, method): lr × epoch, mean (± std) over seeds, choice in bold;
  selection.csv   per (task, method): the chosen (lr, epoch), its mean ± sample std over seeds;
  selection.json  the same plus the rule, the metric and the whole (lr, epoch) mean table;
  presets/<task>-<method>.yaml   the chosen settings, usable as `peftlab train --config FILE`.

Selection rule: per (task, method) the (lr, epoch) with the highest mean dev metric over seeds (the task's
main metric unless `--metric`); ties → fewer epochs, then the smaller lr. A point missing a seed that
other points have is not eligible (its mean would be over fewer seeds).

Honesty note (written into selection.json): GLUE has no labelled test split, so the choice and the score
reported for it come from the same dev split and the same runs; the selected score is therefore biased
upward (max over the grid). The whole search table is published with it so the spread can be judged.
Splitting dev in two would remove the bias but halve RTE's 277 and MRPC's 408 rows, doubling the variance
of both the choice and the reported number.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import statistics
from pathlib import Path
from typing import Any

from peftlab.errors import PeftlabError

SELECTION_RULE = ("highest mean dev metric over seeds; ties -> fewer epochs, then smaller lr; points missing a seed "
                  "are not eligible")
DEV_NOTE = ("selection and reported scores both use the GLUE dev split (GLUE has no labelled test split): the "
            "selected score is the maximum over the grid and so biased upward; see the search table for the spread")
# Schedules whose lr at a step does not depend on the run's length (so epoch k of an E-epoch run = a k-epoch run).
CONSTANT_SCHEDULERS = ("constant", "constant_with_warmup")
# Settings a preset copies from the search runs (the rest are TrainConfig defaults).
PRESET_KEYS = ("task", "method", "rank", "alpha", "dropout", "targets", "max_len", "batch_size", "weight_decay",
               "max_grad_norm", "grad_accum", "lr_scheduler", "max_train_samples")


def _eval_epochs(run_dir: Path, metric_names: list[str]) -> dict[int, dict[str, float]]:
    """{epoch k: {metric: value}} from the run's per-epoch dev evaluations in metrics.jsonl."""
    from peftlab.io import read_jsonl

    out: dict[int, dict[str, float]] = {}
    for line in read_jsonl(run_dir / "metrics.jsonl"):
        if line.get("kind") != "eval" or line.get("epoch") is None:
            continue
        epoch = float(line["epoch"])
        if abs(epoch - round(epoch)) > 1e-6:
            continue  # a mid-epoch evaluation (not written by the search specs)
        out[int(round(epoch))] = {m: line.get(f"eval_{m}") for m in metric_names}
    return out


def search_rows(sweep_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """One row per (run, epoch) of the finished runs listed in each sweep's sweep.csv."""
    from peftlab.runs import read_final_metrics, read_run_config
    from peftlab.tasks import get_task

    rows = []
    for sweep_dir in map(Path, sweep_dirs):
        table = sweep_dir / "sweep.csv"
        if not table.is_file():
            raise PeftlabError(f"{table} does not exist; run `peftlab sweep SPEC` first (or pass the sweep's directory "
                               "<out>/SWEEP/<name>)")
        with table.open(newline="", encoding="utf-8") as handle:
            runs = list(csv.DictReader(handle))
        for run in runs:
            run_dir = Path(run["run_dir"])
            final = read_final_metrics(run_dir)
            if not final or not final.get("finished"):
                continue  # failed or unfinished: not part of the search table (sweep.csv says why)
            config = read_run_config(run_dir)["config"]
            spec = get_task(config["task"])
            epochs = float(config["epochs"])
            train_s = (final.get("timing") or {}).get("train_s")
            evals = _eval_epochs(run_dir, list(spec.metric_names))
            if config.get("lr_scheduler") not in CONSTANT_SCHEDULERS:
                # A decaying schedule (e.g. linear to 0 over E epochs): the model after epoch k < E was trained
                # at rates no k-epoch run reproduces, so only the last epoch is a point a preset can re-run.
                evals = {k: v for k, v in evals.items() if k == round(epochs)}
            for epoch, metrics in sorted(evals.items()):
                rows.append({
                    "task": spec.name, "method": config["method"],
                    "rank": config.get("rank") if config["method"] != "fft" else None,
                    "lr": float(config["lr"] if config.get("lr") is not None else final["lr"]), "epoch": epoch, "seed": int(config["seed"]),
                    "main_metric": spec.main_metric, **{f"dev_{m}": v for m, v in metrics.items()},
                    "train_s": None if train_s is None else round(train_s * epoch / epochs, 1),
                    "epochs_scheduled": epochs, "steps_per_epoch": final.get("global_step", 0) / epochs,
                    "run_dir": str(run_dir), "sweep": sweep_dir.name,
                    "config": config,
                })
    if not rows:
        raise PeftlabError(f"no finished run with per-epoch dev evaluations in {', '.join(map(str, sweep_dirs))}; "
                           "let the sweeps finish (peftlab sweep SPEC resumes them)")
    return rows


def select(rows: list[dict[str, Any]], metric: str | None = None) -> list[dict[str, Any]]:
    """Per (task, method): the (lr, epoch) chosen by SELECTION_RULE, with its mean ± std over seeds.

    mean = Σ_s m_s / S over the seeds s of a point; std = sample std (ddof 1; None for one seed).
    """
    groups: dict[tuple, dict[tuple, dict[int, float]]] = {}
    for row in rows:
        name = f"dev_{metric or row['main_metric']}"
        value = row.get(name)
        if value is None or not math.isfinite(float(value)):
            continue
        points = groups.setdefault((row["task"], row["method"], row["rank"]), {})
        points.setdefault((row["lr"], row["epoch"]), {})[row["seed"]] = float(value)
    chosen = []
    for (task, method, rank), points in groups.items():
        seeds = set().union(*(set(v) for v in points.values()))
        table = [{"lr": lr, "epoch": epoch, "mean": statistics.fmean(values.values()),
                  "std": statistics.stdev(values.values()) if len(values) > 1 else None, "seeds": sorted(values)}
                 for (lr, epoch), values in sorted(points.items())]
        eligible = [p for p in table if set(p["seeds"]) == seeds]
        best = min(eligible, key=lambda p: (-round(p["mean"], 12), p["epoch"], p["lr"]))  # round: float-noise ties
        chosen.append({"task": task, "method": method, "rank": rank, "metric": metric or _main(rows, task),
                       **best, "n_points": len(table), "table": table})
    return chosen


def _main(rows: list[dict[str, Any]], task: str) -> str:
    return next(r["main_metric"] for r in rows if r["task"] == task)


def preset_for(choice: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Training settings that re-run the chosen point: the search runs' settings with `epochs` = the chosen
    epoch k and the same learning rate; `warmup_ratio` rescaled so the warmup lasts as many steps as in the
    search run. HF: warmup steps W = ceil(ratio · total steps); the search run has W = ceil(r·E·S) (S steps per
    epoch), the preset's total is k·S, so ratio' = (W − ½)/(k·S) gives ceil(ratio'·k·S) = W without float
    round-off deciding it."""
    run = next(r for r in rows if r["task"] == choice["task"] and r["method"] == choice["method"]
               and r["rank"] == choice["rank"] and r["lr"] == choice["lr"])
    config = run["config"]
    epochs_scheduled = float(config["epochs"])
    ratio = float(config.get("warmup_ratio") or 0.0)
    preset = {k: config[k] for k in PRESET_KEYS if k in config and config[k] is not None}
    if choice["method"] == "fft":
        for key in ("rank", "alpha", "dropout", "targets"):
            preset.pop(key, None)
    per_epoch = float(run["steps_per_epoch"])
    warmup = math.ceil(ratio * epochs_scheduled * per_epoch) if ratio > 0 else 0
    total = choice["epoch"] * per_epoch
    preset.update(lr=choice["lr"], epochs=choice["epoch"],
                  warmup_ratio=0.0 if warmup == 0 or total <= 0 else min(0.999999, (warmup - 0.5) / total))
    return preset


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return buf.getvalue()


def _cell(values: list[float]) -> str:
    mean = statistics.fmean(values)
    text = f"{mean:.3f}".replace("-", "−")
    return text + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")


def search_markdown(rows: list[dict[str, Any]], chosen: list[dict[str, Any]]) -> str:
    """The search table a README quotes: one line per (task, method, lr), the selection metric after each
    epoch as mean (± sample std, ddof 1, when there are several seeds) over seeds, the chosen cell in bold,
    and the train seconds of the whole run (mean over seeds)."""
    lines = []
    for choice in chosen:
        group = [r for r in rows if (r["task"], r["method"], r["rank"]) == (choice["task"], choice["method"],
                                                                              choice["rank"])]
        name = f"dev_{choice['metric']}"
        n_epochs = max(r["epoch"] for r in group)
        method = "FFT" if choice["method"] == "fft" else f"{choice['method']} r={choice['rank']}"
        seeds = sorted({r["seed"] for r in group})
        lines += [f"{choice['task']} {method}: dev {choice['metric']} after each epoch, mean over seeds {seeds} "
                  f"(chosen in bold)", "",
                  "| lr | " + " | ".join(f"ep {k}" for k in range(1, n_epochs + 1)) + " | train s (whole run) |",
                  "| --- |" + " --- |" * (n_epochs + 1)]
        for lr in sorted({r["lr"] for r in group}):
            cells = []
            for epoch in range(1, n_epochs + 1):
                values = [float(r[name]) for r in group if r["lr"] == lr and r["epoch"] == epoch
                          and r.get(name) is not None]
                cell = _cell(values) if values else "—"
                cells.append(f"**{cell}**" if (lr, epoch) == (choice["lr"], choice["epoch"]) else cell)
            # the row of a run's last epoch carries the whole run's train time (train_s × E / E)
            train = [r["train_s"] for r in group if r["lr"] == lr and r["epoch"] == r["epochs_scheduled"]
                     and r["train_s"] is not None]
            train_cell = f"{statistics.fmean(train):.0f}" if train else "—"
            lines.append(f"| {lr:g} | " + " | ".join(cells) + f" | {train_cell} |")
        lines.append("")
    return "\n".join(lines)


def write_search(sweep_dirs: list[str | Path], out: str | Path, metric: str | None = None) -> Path:
    """Write search.csv, search.md, selection.csv, selection.json and presets/ under `out`; returns `out`."""
    import yaml

    from peftlab.io import atomic_write_json, atomic_write_text

    rows = search_rows(sweep_dirs)
    chosen = select(rows, metric)
    out = Path(out)
    metric_columns = sorted({k for r in rows for k in r if k.startswith("dev_")})
    columns = ["task", "method", "rank", "lr", "epoch", "seed", "main_metric", *metric_columns, "train_s",
               "epochs_scheduled", "run_dir"]
    key = (lambda r: (r["task"], r["method"], r["rank"] or 0, r["lr"], r["epoch"], r["seed"]))
    atomic_write_text(out / "search.csv", _csv(sorted(rows, key=key), columns))
    atomic_write_text(out / "search.md", search_markdown(rows, chosen))
    atomic_write_text(out / "selection.csv", _csv(chosen, ["task", "method", "rank", "metric", "lr", "epoch", "mean",
                                                           "std", "seeds", "n_points"]))
    presets = {}
    for choice in chosen:
        preset = preset_for(choice, rows)
        name = f"{choice['task'].lower()}-{choice['method']}" + (f"-r{choice['rank']}" if choice["rank"] else "")
        text = (f"# chosen by python -m peftlab.sweep.search: {choice['metric']} {choice['mean']:.4f} mean over seeds "
                f"{choice['seeds']} (dev split; see selection.json)\n" + yaml.safe_dump(preset, sort_keys=False))
        atomic_write_text(out / "presets" / f"{name}.yaml", text)
        presets[name] = preset
    atomic_write_json(out / "selection.json", {
        "rule": SELECTION_RULE, "note": DEV_NOTE, "metric": metric or "each task's main metric",
        "sweeps": [str(d) for d in sweep_dirs], "chosen": chosen, "presets": presets,
    })
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peftlab.sweep.search",
                                     description="Search table, selection and presets from finished search sweeps.")
    parser.add_argument("sweeps", nargs="+", help="sweep directories <out>/SWEEP/<name> (with sweep.csv)")
    parser.add_argument("--out", default=None, help="output directory (default: <out>/SEARCH beside SWEEP/)")
    parser.add_argument("--metric", default=None, help="dev metric to select on (default: each task's main metric)")
    args = parser.parse_args(argv)
    out = args.out or str(Path(args.sweeps[0]).resolve().parent.parent / "SEARCH")
    try:
        path = write_search(args.sweeps, out, args.metric)
    except PeftlabError as err:
        print(f"error: {err}")
        return 2
    print(f"search table, selection and presets -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
