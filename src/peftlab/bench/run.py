"""`run_bench`: train every (cell, seed) as a sweep (local or Ray; finished runs skipped), time inference, write
`<out>/BENCH/<TASK>/<name>/` = runs/, sweep/ (sweep.csv, sweep.json), runs.csv, bench.csv, bench.md, bench.json,
figures/."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from peftlab.errors import PeftlabError

PROFILES = ("quick", "full")


def bench_dir_for(task: str, name: str, out: str) -> Path:
    from peftlab.runs import safe_output_path
    from peftlab.tasks import get_task

    return safe_output_path(Path(out), "BENCH", get_task(task).name, name)


def plan(task: str, methods: list[str], ranks: list[int], target_sets: list[str], seeds: list[int],
         profile: str, out: str, overrides: list[str], name: str | None = None):
    """(bench dir, [(cell, TrainConfig)]) with every config validated before anything runs."""
    from peftlab.bench.grid import build_cells, cell_overrides
    from peftlab.config import load_config

    if profile not in PROFILES:
        raise PeftlabError(f"unknown profile '{profile}'; choose one of: {', '.join(PROFILES)}")
    if not seeds:
        raise PeftlabError("no seeds given; pass e.g. --seeds 1 2 3")
    cells = build_cells(methods, ranks, target_sets)
    bench_dir = bench_dir_for(task, name or profile, out)
    configs = []
    for cell in cells:
        for seed in dict.fromkeys(seeds):
            keys = [f"task={task}"] + list(overrides) + cell_overrides(cell, seed, str(bench_dir / "runs" / cell.label))
            configs.append((cell, load_config(profile, keys)))
    return bench_dir, configs


# The bench grid's own keys and the flag that sets each; overrides of them are dropped (the grid wins).
BENCH_GRID_KEYS = ("method", "seed", "rank", "adapter_bottleneck", "targets", "out")


def bench_spec(task: str, methods: list[str], ranks: list[int], target_sets: list[str], seeds: list[int],
               profile: str, overrides: list[str], configs: list, bench_dir: Path, resources=None):
    """(SweepSpec, [SweepRun]) of the bench grid. The spec names the axes (method × rank × targets × seed; a
    method without rank/targets ignores them) and the fixed settings; the runs are `plan()`'s configs, because
    the bench expands its grid itself: every cell owns the run root `<bench>/runs/<cell label>/` and the adapter's
    rank axis is its bottleneck."""
    from peftlab.config import parse_overrides
    from peftlab.runs import run_dir_for
    from peftlab.sweep.spec import Resources, SweepRun, parse_spec

    fixed = {"task": task, **{k: v for k, v in parse_overrides(overrides).items()
                              if k.replace("-", "_") not in BENCH_GRID_KEYS}}
    axes: dict[str, list] = {"method": list(dict.fromkeys(methods))}
    if ranks:
        axes["rank"] = list(dict.fromkeys(ranks))
    axes["targets"] = list(dict.fromkeys(target_sets or ["q,k,v,o"]))
    axes["seed"] = list(dict.fromkeys(seeds))
    spec = parse_spec({"name": f"bench_{bench_dir.name}", "preset": profile, "fixed": fixed, "axes": axes,
                       "description": f"peftlab bench --task {task} ({bench_dir})"})
    spec.expanded_by = "peftlab bench: one run root per cell, <bench>/runs/<cell label>/ (bench/grid.py)"
    spec.resources = resources or Resources()
    runs = []
    for cell, cfg in configs:
        point = {"method": cell.method, **({"rank": cell.rank} if cell.rank is not None else {}),
                 **({"targets": cell.targets_label} if cell.targets else {}), "seed": cfg.seed}
        runs.append(SweepRun(axes=point, cfg=cfg, run_dir=run_dir_for(cfg)))
    return spec, runs


def run_bench(task: str, methods: list[str], ranks: list[int], target_sets: list[str], seeds: list[int],
              profile: str = "quick", out: str = "outputs", overrides: list[str] | None = None,
              name: str | None = None, latency_iters: int = 20, latency_warmup: int = 3,
              latency_batches: tuple[int, ...] = (1, 8), figures: bool = True, isolate: bool = True,
              save_matrices: bool = False, equal_budget: bool = False, console=None, backend: str = "local",
              ray_address: str | None = None, resources=None) -> Path:
    """Run the benchmark grid and write its tables and figures; returns the bench directory.

    Training is a sweep (`bench_spec`) on `backend` (local | ray; `ray_address` joins a cluster) with
    `resources` (default one run at a time), summarised in `<bench>/sweep/sweep.{csv,json}`.
    `isolate`: train each run in a fresh process (local: a spawned child; Ray: no actor reuse), so its peak
    memory (CPU peak RSS / CUDA max allocated, both counted since process start) belongs to that run alone;
    without it, later runs report the running maximum of their process (bench.md then says so).
    `equal_budget`: after the grid, also train the Houlsby adapter whose parameters match each LoRA-family
    cell at its best rank (`bench/budget.py`; locally, after the sweep); without it bench.md still names the
    matched bottleneck.
    """
    from peftlab.bench.table import RUN_COLUMNS, CELL_COLUMNS, cell_rows, latency_columns, to_csv, to_markdown
    from peftlab.io import atomic_write_json, atomic_write_text
    from peftlab.runs import read_final_metrics
    from peftlab.train import summary_line

    if latency_iters < 1 or latency_warmup < 0:
        raise PeftlabError(f"--latency-iters must be >= 1 and --latency-warmup >= 0, got {latency_iters} and "
                           f"{latency_warmup}")
    say = console.print if console is not None else (lambda *a, **k: None)
    from peftlab.runs import run_dir_for
    from peftlab.sweep.runner import raise_for_failures, run_sweep

    bench_dir, configs = plan(task, methods, ranks, target_sets, seeds, profile, out, list(overrides or []), name)
    if resources is None:  # torch's own thread count locally, as the bench always trained
        from peftlab.sweep.spec import command_resources

        resources = command_resources(backend)
    spec, sweep_runs = bench_spec(task, methods, ranks, target_sets, seeds, profile, list(overrides or []), configs,
                                  bench_dir, resources)
    sweep_dir = run_sweep(spec, out=out, backend=backend, ray_address=ray_address, echo=say, runs=sweep_runs,
                          sweep_dir=bench_dir / "sweep", isolate=isolate, check_inputs=True)
    raise_for_failures(sweep_dir, "bench")
    runs, first_run = [], {}

    def record(label: str, cell, cfg, run_dir: Path) -> None:
        say(f"[{label}] {cell.label} seed {cfg.seed}: {summary_line(run_dir)}")
        final = read_final_metrics(run_dir) or {}
        runs.append({"cell": cell.label, "method": cell.method, "rank": cell.rank, "targets": cell.targets_label,
                     "seed": cfg.seed, "metric": final.get("main_metric"), "score": final.get("score"),
                     "trainable_params": final.get("trainable_params"),
                     "trainable_params_without_classifier": final.get("trainable_params_without_classifier"),
                     "train_s": (final.get("timing") or {}).get("train_s"),
                     **{k: (final.get("timing_breakdown") or {}).get(k) for k in ("forward_s", "backward_s", "optimizer_s")},
                     "peak_memory_mb": final.get("peak_memory_mb"), "peak_memory_kind": final.get("peak_memory_kind"),
                     "run_dir": str(run_dir)})
        first_run.setdefault(cell.label, (cell, cfg, run_dir))
        if save_matrices:
            from peftlab.bench.matrices import save_run_matrices

            save_run_matrices(run_dir, bench_dir / "matrices" / cell.label / f"seed{cfg.seed}")

    for i, (cell, cfg) in enumerate(configs, 1):  # trained by the sweep above
        record(f"{i}/{len(configs)}", cell, cfg, run_dir_for(cfg))
    sites = _adapter_sites(first_run)  # (d, n_adapters) for the equal-budget view, or None
    if equal_budget and sites:  # train the adapters matched to each LoRA cell's best rank (bench/budget.py)
        # depends on the grid's scores, so it cannot be part of the sweep: trained here, locally, after it
        extra = _equal_budget_configs(runs, sites, task, profile, list(overrides or []), bench_dir, seeds)
        for i, (cell, cfg) in enumerate(extra, 1):
            record(f"{i}/{len(extra)} equal budget", cell, cfg, _train(cfg, isolate))

    latency, fft_params, meta_latency = _latency(first_run, latency_iters, latency_warmup, list(latency_batches), say)
    rows = cell_rows(runs, fft_params, latency)
    from peftlab.analysis.dev_chance import chance_verdict, dev_chance
    from peftlab.bench.budget import equal_budget_rows

    cfg0 = configs[0][1]
    chance = dev_chance(dataclasses.asdict(cfg0))  # every run of the grid is scored on the same dev rows
    for row in rows:
        row["vs_chance"] = chance_verdict(row["score_mean"], chance)

    equal = equal_budget_rows(rows, *sites) if sites else []
    meta: dict[str, Any] = {
        "task": cfg0.task, "name": bench_dir.name, "profile": profile, "model": cfg0.model or "packaged all-MiniLM-L6-v2",
        "seeds": list(dict.fromkeys(seeds)), "methods": list(dict.fromkeys(c.method for c, _ in configs)),
        "ranks": list(ranks), "target_sets": sorted({c.targets_label for c, _ in configs if c.targets}),
        "overrides": list(overrides or []), "fft_params": fft_params, **meta_latency,
        "isolated_runs": isolate, "save_matrices": save_matrices, "backend": backend, "sweep": str(sweep_dir),
        "peak_memory_note": ("each run trained in its own process: peak memory is per run" if isolate else
                             "runs shared one process (Ray: one worker per concurrent trial): peak memory is the "
                             "running maximum since that process started, not a per-method figure"),
        "score_uncertainty": "score_std = sample std over seeds (ddof 1); empty with one seed",
        "chance": chance,
        "best_rank_rule": "highest score_mean per (method, targets); ties -> fewer trainable params",
        "equal_budget": {"trained": equal_budget, "rule": "adapter bottleneck b minimising |P_A(b) - P_L|, "
                         "P = trainable params without classifier, P_L at the LoRA cell's best rank (ties -> smaller b)",
                         "d": sites[0] if sites else None, "n_adapters": sites[1] if sites else None, "rows": equal},
    }
    atomic_write_text(bench_dir / "runs.csv", to_csv(runs, RUN_COLUMNS))
    columns = CELL_COLUMNS + latency_columns(list(latency_batches)) + ["best_rank", "equal_budget_for", "cell"]
    atomic_write_text(bench_dir / "bench.csv", to_csv(rows, columns))
    if figures:
        from peftlab.bench.figures import draw_figures

        meta["figures"] = [p.name for p in draw_figures(bench_dir / "bench.csv", bench_dir / "figures",
                                                        list(latency_batches))]
    atomic_write_text(bench_dir / "bench.md", to_markdown(rows, meta, list(latency_batches)))
    atomic_write_json(bench_dir / "bench.json", meta)  # last: its presence means the tables beside it are complete
    return bench_dir


def _adapter_sites(first_run: dict) -> tuple[int, int] | None:
    """(d, n_adapters) of the bench's model when it has a low-rank cell with targets (else None)."""
    from peftlab.bench.budget import adapter_sites

    for cell, _, run_dir in first_run.values():
        if cell.targets and cell.rank is not None and cell.method != "adapter":
            return adapter_sites(run_dir)
    return None


def _equal_budget_configs(runs: list[dict], sites: tuple[int, int], task: str, profile: str, overrides: list[str],
                          bench_dir: Path, seeds: list[int]) -> list:
    """[(adapter cell, TrainConfig)] for every matched bottleneck not yet in the grid, one per seed."""
    from peftlab.bench.budget import equal_budget_rows
    from peftlab.bench.grid import Cell, cell_overrides
    from peftlab.bench.table import cell_rows
    from peftlab.config import load_config

    wanted = [e["bottleneck"] for e in equal_budget_rows(cell_rows(runs, 0, {}), *sites) if e["adapter_cell"] is None]
    out = []
    for b in dict.fromkeys(wanted):
        cell = Cell("adapter", b, None)
        for seed in dict.fromkeys(seeds):
            keys = [f"task={task}"] + overrides + cell_overrides(cell, seed, str(bench_dir / "runs" / cell.label))
            out.append((cell, load_config(profile, keys)))
    return out


def _train(cfg, isolate: bool) -> Path:
    """`train_run(cfg)`, in a fresh spawned process when `isolate` (kept for callers; the bench itself trains
    through the sweep runner, which does the same)."""
    from peftlab.sweep.local import train_isolated
    from peftlab.train import train_run

    return Path(train_isolated(cfg)) if isolate else train_run(cfg)


def _latency(first_run: dict, iters: int, warmup: int, batches: list[int], say) -> tuple[dict, int, dict]:
    """Latency per cell (first seed's θ1; latency does not depend on the seed) and θ0's parameter count."""
    import torch

    from peftlab.bench.latency import measure_latency
    from peftlab.methods import get_method
    from peftlab.runs import load_run_model

    latency, fft_params, seq_len = {}, 0, None
    for label, (cell, cfg, run_dir) in first_run.items():
        if not fft_params:
            init_model, _, _ = load_run_model(run_dir, "init")
            fft_params = sum(p.numel() for p in init_model.parameters())
            del init_model
        model, _, _ = load_run_model(run_dir, "final")
        seq_len = cfg.max_len
        say(f"latency {label}")
        latency[label] = measure_latency(get_method(cell.method), model, batches, cfg.max_len, iters, warmup)
    meta = {"latency_iters": iters, "latency_warmup": warmup, "latency_batches": batches, "seq_len": seq_len,
            "latency_device": "cpu", "torch_threads": torch.get_num_threads()}
    return latency, fft_params, meta
