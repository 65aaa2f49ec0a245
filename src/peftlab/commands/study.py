"""`peftlab study` (the main job) and `peftlab demo` (the quick study on the packaged model)."""

from __future__ import annotations

from typing import List, Optional

import typer

from peftlab.commands import backend_options as bo
from peftlab.commands.analysis import int_values, split_values


def register(app: typer.Typer) -> None:
    @app.command()
    def study(
        task: str = typer.Option("rte", help="Task name (see `peftlab tasks`)."),
        methods: List[str] = typer.Option(["fft", "lora"], help="Methods, e.g. --methods fft lora or fft,lora."),
        seeds: List[str] = typer.Option(["1"], help="Seeds, e.g. --seeds 1 2 3."),
        ranks: List[str] = typer.Option(["8"], help="LoRA ranks, e.g. --ranks 4 8 16 32."),
        profile: str = typer.Option("quick", help="quick (short training; SST-2: 12288 rows, subset 512; others: 1024 rows, subset 256) or full."),
        model: Optional[str] = typer.Option(None, help="Model dir or Hub id; default: packaged all-MiniLM-L6-v2."),
        data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Data root (else $PEFTLAB_DATA, else ./data)."),
        out: str = typer.Option("outputs", help="Output root."),
        backend: str = bo.BACKEND,
        ray_address: Optional[str] = bo.RAY_ADDRESS,
        max_concurrent: int = bo.MAX_CONCURRENT,
        cpus_per_run: Optional[float] = bo.CPUS_PER_RUN,
        overrides: Optional[List[str]] = typer.Argument(None, help="Training config overrides key=value (not the "
                                                        "grid's own task, method, seed, rank, out)."),
    ) -> None:
        """Run train → measure → analyze → compare (→ aggregate, → compare-ranks) and write report.html.

        Training is a sweep over methods × seeds × ranks (local or on Ray, summary in <study>/sweep/); finished
        runs and stages are skipped, so re-running after an interruption resumes.
        """
        from rich.console import Console

        from peftlab.study import run_study

        console = Console(stderr=True, soft_wrap=True)  # log lines stay whole when piped to a file
        report = run_study(task, split_values(methods), int_values(seeds, "--seeds"), int_values(ranks, "--ranks"),
                           profile, out,
                           list(overrides or []), model, data_dir, console=console, backend=backend,
                           ray_address=ray_address, resources=bo.resources(backend, max_concurrent, cpus_per_run))
        _summarise(report, console)

    @app.command()
    def demo(
        task: str = typer.Option("sst2", help="Task of the quick study: sst2 (default) or e.g. rte."),
        out: str = typer.Option("outputs", help="Output root."),
        data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Data root (else $PEFTLAB_DATA, else ./data)."),
    ) -> None:
        """The quick study on the packaged all-MiniLM-L6-v2: FFT vs LoRA r=8, seed 1.

        SST-2 (default): 12288 training rows at max_len 64, eval subset 512 dev rows. --task rte: the
        quick profile's RTE settings (1024 rows, max_len 128, subset 256). Same as
        `peftlab study --task TASK --profile quick`.
        """
        from rich.console import Console

        from peftlab.study import run_study

        console = Console(stderr=True, soft_wrap=True)  # log lines stay whole when piped to a file
        report = run_study(task, ["fft", "lora"], [1], [8], "quick", out, [], None, data_dir, console=console)
        _summarise(report, console)


def _summarise(report, console) -> None:
    """Print each run's dev score and the report path (numbers read back from the saved files)."""
    import json
    from pathlib import Path

    study = json.loads((Path(report).parent / "study.json").read_text())
    for run in study["runs"]:
        final = json.loads((Path(run) / "final_metrics.json").read_text())
        console.print(f"{run}: dev {final['main_metric']} = {final['score']:.4f} "
                      f"(train {final['timing']['train_s']:.0f} s)")
    typer.echo(str(report))
