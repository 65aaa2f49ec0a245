"""`peftlab sweep SPEC.yaml`: a grid of training runs from a YAML spec, locally or on Ray."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach `sweep` to `app`."""

    @app.command("sweep")
    def sweep_command(
        spec: str = typer.Argument(..., metavar="SPEC.yaml", help="Sweep spec: name, fixed, axes, resources, "
                                   "search (grid | asha: learning-rate searches only, Ray only) (see README, section "
                                   "Sweeps)."),
        out: str = typer.Option("outputs", "--out", help="Output root: runs go to the usual <out>/<METHOD>/<TASK>/"
                                "... layout, the summary to <out>/SWEEP/<name>/."),
        backend: str = typer.Option("local", "--backend", help="local (one run after another) | ray (Ray Tune "
                                    "trials; needs pip install \"peftlab\\[ray]\")."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the grid and which runs are done / to do; "
                                     "train nothing."),
        fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first failing run (default: record "
                                       "it and go on)."),
        ray_address: str = typer.Option(None, "--ray-address", help="Join a running Ray cluster (auto | HOST:PORT); "
                                        "--out must then be shared storage on every node."),
    ) -> None:
        """Run every point of a sweep grid (finished runs are skipped, interrupted ones resume);
        writes <out>/SWEEP/<name>/sweep.csv and sweep.json."""
        from peftlab.sweep.runner import run_sweep
        from peftlab.sweep.spec import load_spec

        run_sweep(load_spec(spec), out=out, backend=backend, dry_run=dry_run, fail_fast=fail_fast,
                  ray_address=ray_address, echo=typer.echo)
