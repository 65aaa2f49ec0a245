"""`peftlab adalora run | compare | plot`: AdaLoRA runs per rank-allocation signal, their comparison, figures."""

from __future__ import annotations

from pathlib import Path

from typing import Optional

import typer

from peftlab.commands import backend_options as bo
from peftlab.commands.analysis import int_values, split_values

SIGNAL_HELP = "Rank-allocation signal: baseline_adalora | importance_only | plasticity_only | combo."
# AdaLoRA's default targets: every attention and FFN matrix (TrainConfig's shared default is q,k,v,o)
ADALORA_DEFAULTS = ["method=adalora", "targets=q,k,v,o,ffn_in,ffn_out"]


# `adalora run`'s own grid keys and the flag that sets each (a key=value override may not replace them).
ADALORA_GRID_FLAGS = {"signal": "--signal", "seed": "--seed", "task": "--task", "out": "--out"}


def adalora_spec(task: str, signals: list[str], seeds: list[int], config: str | None, overrides: list[str],
                 resources=None):
    """The sweep spec of `adalora run`: axes signal × seed; fixed = AdaLoRA's defaults, the task, the overrides;
    preset = --config. Run dirs are the usual <out>/ADALORA/<TASK>/<signal>/seed<S>/ (signal is a run-dir key)."""
    from peftlab.config import parse_overrides
    from peftlab.errors import PeftlabError
    from peftlab.sweep.spec import Resources, grid_overrides, parse_spec

    if not signals or not seeds:
        raise PeftlabError("adalora run needs at least one --signal and one --seed")
    fixed = {**parse_overrides(ADALORA_DEFAULTS), "task": task,
             **grid_overrides(overrides, ADALORA_GRID_FLAGS, "adalora run")}
    seeds = list(dict.fromkeys(seeds))
    name = f"adalora_{task}_{'-'.join(signals)}_s{'-'.join(map(str, seeds))}"
    spec = parse_spec({"name": name if len(name) <= 100 else name[:100], "preset": config, "fixed": fixed,
                       "axes": {"signal": list(dict.fromkeys(signals)), "seed": seeds},
                       "description": "peftlab adalora run"})
    spec.resources = resources or Resources()
    return spec


def register(app: typer.Typer) -> None:
    adalora = typer.Typer(help="AdaLoRA (PEFT) with a choice of rank-allocation signal.", no_args_is_help=True)
    app.add_typer(adalora, name="adalora")

    @adalora.command("run", context_settings={"allow_extra_args": True})
    def run_command(
        overrides: list[str] = typer.Argument(None, metavar="[KEY=VALUE]...",
                                              help="Config overrides, e.g. init_r=12 target_r=4 tinit=0.1."),
        task: str = typer.Option("RTE", "--task"),
        signals: Optional[list[str]] = typer.Option(None, "--signal", "--signals",
                                                     help=SIGNAL_HELP + " One or more: --signal combo --signal "
                                                     "importance_only, or comma-separated. [default: baseline_adalora]"),
        seeds: Optional[list[str]] = typer.Option(None, "--seed", "--seeds", help="One or more seeds: --seed 1 "
                                                  "--seed 2, or 1,2,3. [default: 1]"),
        config: str = typer.Option(None, "--config", help="Preset name(s) from configs/ (e.g. rte,quick)."),
        out: str = typer.Option(None, "--out", help="Output root (default: outputs)."),
        force: bool = typer.Option(False, "--force", help="Re-run finished runs (local backend)."),
        backend: str = bo.BACKEND,
        ray_address: Optional[str] = bo.RAY_ADDRESS,
        max_concurrent: int = bo.MAX_CONCURRENT,
        cpus_per_run: Optional[float] = bo.CPUS_PER_RUN,
        lora_reference: bool = typer.Option(
            False, "--lora-reference", help="Also train, per seed, the equal-budget LoRA reference (PEFT LoRA, "
            "r = target_r, same targets and settings) into <out>/ADALORA/<TASK>/lora_reference/ (after the sweep, "
            "in this process)."),
        lora_lr: float = typer.Option(None, "--lora-lr", help="Learning rate of the LoRA reference (default: the "
                                      "AdaLoRA runs' lr; LoRA's B·A·alpha/r is scaled differently from AdaLoRA's)."),
    ) -> None:
        """Train AdaLoRA runs (signals × seeds, a sweep: local or Ray) into <out>/ADALORA/<TASK>/<signal>/seed<S>/
        (targets default to all six matrices); prints each run dir and its summary."""
        from peftlab.sweep.runner import raise_for_failures, run_sweep
        from peftlab.sweep.spec import expand
        from peftlab.train import summary_line

        overrides = list(overrides or [])
        # a single seed=/signal= override stands for the flag (as before the grid): it sets that axis
        for values, key in ((seeds, "seed"), (signals, "signal")):
            given = [o for o in overrides if o.split("=", 1)[0].strip() == key]
            if given and not values:
                overrides = [o for o in overrides if o not in given]
                values = [given[-1].split("=", 1)[1]]
                if key == "seed":
                    seeds = values
                else:
                    signals = values
        from peftlab.config import ADALORA_SIGNALS

        chosen = split_values(signals or ["baseline_adalora"])
        chosen = list(ADALORA_SIGNALS) if "all" in chosen else chosen
        spec = adalora_spec(task, chosen,
                            int_values(seeds or ["1"], "--seed"), config, overrides,
                            bo.resources(backend, max_concurrent, cpus_per_run))
        root = out or "outputs"
        runs = expand(spec, root, name_points=False)  # a bad signal or key is its own one-line error
        sweep_dir = run_sweep(spec, out=root, backend=backend, ray_address=ray_address, runs=runs, force=force,
                              check_inputs=True,
                              echo=lambda line: typer.echo(line, err=True))
        raise_for_failures(sweep_dir, "adalora run")
        for run in runs:
            typer.echo(str(run.run_dir))
            typer.echo(summary_line(run.run_dir))
        if lora_reference:  # same settings, PEFT LoRA with r = target_r: the budget AdaLoRA ends at
            from peftlab.analysis.adalora import lora_reference_root
            from peftlab.config import load_config
            from peftlab.tasks import get_task
            from peftlab.train import train_run

            done = set()
            for run in runs:
                base = run.cfg
                if base.seed in done:
                    continue
                done.add(base.seed)
                ref_out = lora_reference_root(base.out, get_task(base.task).name)
                cfg = load_config(config, ADALORA_DEFAULTS + [f"task={task}", f"seed={base.seed}"] + overrides + [
                    "method=peft-lora", f"rank={base.target_r}", f"targets={','.join(base.targets)}",
                    f"lr={base.lr if lora_lr is None else lora_lr}", f"out={ref_out}"])
                run_dir = train_run(cfg, force=force)
                typer.echo(str(run_dir))
                typer.echo(summary_line(run_dir))

    @adalora.command("compare")
    def compare_command(
        task: str = typer.Option("RTE", "--task"),
        signals: list[str] = typer.Option(None, "--signals", help="Signals to compare (default: all four)."),
        seeds: list[int] = typer.Option(None, "--seeds", help="Seeds (default: 1 2 3)."),
        out: str = typer.Option("outputs", "--out"),
    ) -> None:
        """Dev metric per signal (mean, SE and 95 % t-CI over seeds), the paired difference vs baseline_adalora and vs
        the equal-budget LoRA reference (`adalora run --lora-reference`), the overlap of the signals' final rank
        patterns, and compare.png (final rank per layer × module type per signal, dev scores, overlap)."""
        from peftlab.analysis.adalora import compare_signals
        from peftlab.config import ADALORA_SIGNALS
        from peftlab.io import read_json

        out_dir = compare_signals(task, list(signals or ADALORA_SIGNALS), list(seeds or [1, 2, 3]), out)
        data = read_json(out_dir / "compare.json")
        for signal, row in data["signals"].items():
            ci = (f" [{row['ci_low']:.4f}, {row['ci_high']:.4f}]" if row["ci_low"] is not None else " (CI needs ≥ 2 seeds)")
            typer.echo(f"{signal:18s} n={row['n']} mean={row['mean']:.4f}{ci}")
        for signal, row in data["vs_baseline"].items():
            typer.echo(f"{signal} − baseline_adalora: {row['verdict']}")
        reference = data["lora_reference"]
        if reference["scores"]:
            typer.echo(f"LoRA r={reference['rank']} (equal budget) n={reference['n']} mean={reference['mean']:.4f}")
            for signal, row in reference["vs_signal"].items():
                typer.echo(f"{signal} − LoRA r={reference['rank']}: {row['verdict']}")
        for key, row in data["rank_overlap"].items():
            if row["shared_rank_mean"] is not None:
                typer.echo(f"rank overlap {key}: shared rank {row['shared_rank_mean']:.3f}")
        for command in data["missing_runs"] + data["missing_lora_reference"]:
            typer.echo(f"missing: {command}")
        typer.echo(str(out_dir))

    @adalora.command("plot")
    def plot_command(run_dir: Path = typer.Argument(..., help="An AdaLoRA run directory.")) -> None:
        """rank_evolution.png and signal_heatmap.png into RUN_DIR/analysis/ (from the saved allocation logs)."""
        from peftlab.analysis.adalora import plot_run

        for path in plot_run(run_dir):
            typer.echo(str(path))
