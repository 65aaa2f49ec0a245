"""`peftlab bench`: the method benchmark (method × rank × targets × seeds) → tables and figures."""

from __future__ import annotations

from typing import List, Optional

import typer

from peftlab.commands import backend_options as bo
from peftlab.commands.analysis import int_values, split_values


def register(app: typer.Typer) -> None:
    @app.command()
    def bench(
        task: str = typer.Option("rte", help="Task name (see `peftlab tasks`)."),
        methods: List[str] = typer.Option(["fft", "lora"], help="Methods, e.g. --methods fft,lora,adapter,ia3,dora "
                                          "(see README 'Methods')."),
        ranks: List[str] = typer.Option(["8"], help="Rank grid of low-rank methods (adapter: bottleneck), "
                                        "e.g. --ranks 1,2,4,8,16."),
        targets: List[str] = typer.Option(["q,k,v,o"], help="Target sets, one per value: --targets q,v q,k,v,o "
                                          "(low-rank methods and ia3)."),
        seeds: List[str] = typer.Option(["1"], help="Seeds, e.g. --seeds 1 2 3."),
        profile: str = typer.Option("quick", help="Config preset: quick (1 epoch, ≤1024 rows) or full."),
        out: str = typer.Option("outputs", help="Output root; the bench goes to <out>/BENCH/<TASK>/<name>/."),
        name: Optional[str] = typer.Option(None, help="Bench folder name (default: the profile)."),
        latency_iters: int = typer.Option(20, "--latency-iters", help="Timed forward passes per latency (median)."),
        latency_warmup: int = typer.Option(3, "--latency-warmup", help="Untimed forward passes first."),
        isolate: bool = typer.Option(True, "--isolate/--no-isolate", help="Train each run in its own process "
                                     "(per-run peak memory; Ray: a fresh worker per trial); --no-isolate is faster "
                                     "but reports a running maximum."),
        backend: str = bo.BACKEND,
        ray_address: Optional[str] = bo.RAY_ADDRESS,
        max_concurrent: int = bo.MAX_CONCURRENT,
        cpus_per_run: Optional[float] = bo.CPUS_PER_RUN,
        save_matrices: bool = typer.Option(False, "--save-matrices", help="Also write each run's ΔW per adapted "
                                           "module (fp32 safetensors) and a CSV of Frobenius norm, spectral norm and "
                                           "effective rank under <bench>/matrices/."),
        equal_budget: bool = typer.Option(False, "--equal-budget", help="After the grid, also train the Houlsby "
                                          "adapter whose trainable parameters (without classifier) match each low-rank "
                                          "cell at its best rank; bench.md compares them."),
        overrides: Optional[List[str]] = typer.Argument(None, help="Training config overrides key=value "
                                                        "(e.g. model=DIR data_dir=DIR max_steps=50); the grid's own "
                                                        "keys (method, seed, rank, adapter_bottleneck, targets, out) "
                                                        "win."),
    ) -> None:
        """Train every method × rank × targets × seed as a sweep (local or Ray; finished runs skipped), then write
        bench.csv, bench.md and figures: score ± std over seeds, trainable params, % of FFT, train time, peak memory,
        latency (measured here, after training)."""
        from rich.console import Console

        from peftlab.bench.run import run_bench

        console = Console(stderr=True, soft_wrap=True)
        bench_dir = run_bench(task, split_values(methods), int_values(ranks, "--ranks"), list(targets or []),
                              int_values(seeds, "--seeds"), profile, out, list(overrides or []), name,
                              latency_iters, latency_warmup, isolate=isolate,
                              save_matrices=save_matrices, equal_budget=equal_budget, console=console, backend=backend,
                              ray_address=ray_address, resources=bo.resources(backend, max_concurrent, cpus_per_run))
        typer.echo(str(bench_dir / "bench.md"))
