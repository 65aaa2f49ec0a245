"""`peftlab adalora run | compare | plot`: AdaLoRA runs per rank-allocation signal, their comparison, figures."""

from __future__ import annotations

from pathlib import Path

import typer

SIGNAL_HELP = "Rank-allocation signal: baseline_adalora | importance_only | plasticity_only | combo."
# AdaLoRA's default targets: every attention and FFN matrix (TrainConfig's shared default is q,k,v,o)
ADALORA_DEFAULTS = ["method=adalora", "targets=q,k,v,o,ffn_in,ffn_out"]


def register(app: typer.Typer) -> None:
    adalora = typer.Typer(help="AdaLoRA (PEFT) with a choice of rank-allocation signal.", no_args_is_help=True)
    app.add_typer(adalora, name="adalora")

    @adalora.command("run", context_settings={"allow_extra_args": True})
    def run_command(
        overrides: list[str] = typer.Argument(None, metavar="[KEY=VALUE]...",
                                              help="Config overrides, e.g. init_r=12 target_r=4 tinit=0.1."),
        task: str = typer.Option("RTE", "--task"),
        signal: str = typer.Option("baseline_adalora", "--signal", help=SIGNAL_HELP),
        signals: list[str] = typer.Option(None, "--signals",
                                          help="Several signals in one call (`all` = the four); overrides --signal."),
        seed: int = typer.Option(1, "--seed"),
        seeds: list[int] = typer.Option(None, "--seeds", help="Several seeds in one call, e.g. --seeds 42 1 2026."),
        config: str = typer.Option(None, "--config", help="Preset name(s) from configs/ (e.g. rte,quick)."),
        out: str = typer.Option(None, "--out", help="Output root (default: outputs)."),
        force: bool = typer.Option(False, "--force", help="Re-run a finished run."),
        lora_reference: bool = typer.Option(
            False, "--lora-reference", help="Also train, per seed, the equal-budget LoRA reference (PEFT LoRA, "
            "r = target_r, same targets and settings) into <out>/ADALORA/<TASK>/lora_reference/."),
        lora_lr: float = typer.Option(None, "--lora-lr", help="Learning rate of the LoRA reference (default: the "
                                      "AdaLoRA runs' lr; LoRA's B·A·alpha/r is scaled differently from AdaLoRA's)."),
    ) -> None:
        """Train AdaLoRA runs into <out>/ADALORA/<TASK>/<signal>/seed<S>/ (targets default to all six matrices).

        With --signals/--seeds, one run per (seed, signal); finished runs are skipped (unless --force), every
        setting is checked before the first run starts, and a killed run refuses to resume (re-run with --force).
        """
        from peftlab.config import ADALORA_SIGNALS, load_config
        from peftlab.train import summary_line, train_run

        chosen = [s for value in (signals or [signal]) for s in value.split(",") if s]
        chosen = list(ADALORA_SIGNALS) if "all" in chosen else list(dict.fromkeys(chosen))
        configs = []
        for one_seed in (seeds or [seed]):
            for one_signal in chosen:
                given = [f"task={task}", f"signal={one_signal}", f"seed={one_seed}"] + ([f"out={out}"] if out else [])
                configs.append(load_config(config, ADALORA_DEFAULTS + given + list(overrides or [])))
            if lora_reference:  # same settings, PEFT LoRA with r = target_r: the budget AdaLoRA ends at
                from peftlab.analysis.adalora import lora_reference_root
                from peftlab.tasks import get_task

                base = configs[-1]
                ref_out = lora_reference_root(base.out, get_task(base.task).name)
                configs.append(load_config(config, ADALORA_DEFAULTS + given + list(overrides or []) + [
                    "method=peft-lora", f"rank={base.target_r}", f"targets={','.join(base.targets)}",
                    f"lr={base.lr if lora_lr is None else lora_lr}",
                    f"out={ref_out}"]))
        for cfg in configs:
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
