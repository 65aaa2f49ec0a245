"""The sweep options shared by `study`, `bench` and `adalora run` (their training grids run as sweeps)."""

from __future__ import annotations

from typing import Optional

import typer

BACKEND = typer.Option("local", "--backend", help="Where the training runs go: local (one after another, here) | "
                       "ray (Ray Tune trials; needs pip install \"peftlab\\[ray]\").")
RAY_ADDRESS: Optional[str] = typer.Option(None, "--ray-address", help="With --backend ray: join a running Ray cluster "
                                          "(auto | HOST:PORT); --out must be shared storage on every node.")
MAX_CONCURRENT = typer.Option(1, "--max-concurrent", help="Ray: trials at a time (local runs one at a time).")
CPUS_PER_RUN: Optional[float] = typer.Option(None, "--cpus-per-run", help="CPUs (torch threads) per run; default: "
                                             "torch's own count locally, this machine's CPUs / --max-concurrent on Ray.")


def resources(backend: str, max_concurrent: int, cpus_per_run: float | None):
    from peftlab.sweep.spec import command_resources

    return command_resources(backend, max_concurrent, cpus_per_run)
