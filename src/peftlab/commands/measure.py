"""`peftlab measure RUN_DIR`: per-head importance, plasticity and update of one finished run."""

from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Attach `measure` to `app`."""

    @app.command("measure")
    def measure_command(
        run_dir: str = typer.Argument(..., help="A finished run directory, e.g. outputs/LoRA/RTE/seed1_r8."),
        steps: Optional[str] = typer.Option(
            None, "--steps", help="Comma list of steps to run, in this order: "
            "subset,importance_pre,gradfisher_pre,update,importance_post (default: all)."),
        importance: str = typer.Option("exact", "--importance", help="exact | taylor | both."),
        impl: str = typer.Option("fast", "--impl", help="Exact sweep: fast (cached prefixes) | naive (reference)."),
        theta0: str = typer.Option(
            "probe", "--theta0-classifier", "--theta0",
            help="Classifier of θ0 for importance_pre: probe (trained on the frozen θ0 body) | init (the seeded "
                 "classifier training starts from). --theta0 is an alias."),
        plasticity_classifier: str = typer.Option(
            "init", "--plasticity-classifier",
            help="Classifier of θ0 for gradfisher_pre (G, F): init (default: the gradients training starts "
                 "from) | probe."),
        subset_split: Optional[str] = typer.Option(
            None, "--subset-split", help="Split of the eval subset (default: dev, or train when dev is too small)."),
        subset_size: int = typer.Option(1024, "--subset-size", help="Examples in the fixed eval subset."),
        subset_seed: int = typer.Option(999, "--subset-seed", help="Seed of the eval subset draw."),
        batch_size: int = typer.Option(32, "--batch-size", help="Examples per forward pass."),
        force: bool = typer.Option(False, "--force", help="Recompute steps that already finished."),
    ) -> None:
        """Measure every attention head of a run; finished steps are skipped, a killed sweep resumes."""
        from rich.console import Console

        from peftlab.heads.measure import measure_run

        console = Console(stderr=True, soft_wrap=True)  # log lines stay whole when piped to a file
        manifest = measure_run(
            run_dir, steps=steps, importance=importance, impl=impl, theta0=theta0, subset_split=subset_split,
            subset_size=subset_size, subset_seed=subset_seed, batch_size=batch_size, force=force, console=console,
            plasticity_classifier=plasticity_classifier,
        )
        for name, step in manifest["steps"].items():
            state = "reused" if step.get("reused_from") else "done" if step.get("finished") else "not finished"
            parts = ", ".join(f"{part} {seconds:.1f} s" for part, seconds in (step.get("parts") or {}).items())
            console.print(f"{name:16s} {state:12s} {step.get('seconds') or 0.0:8.1f} s" + (f"  ({parts})" if parts else ""))
