"""`peftlab tasks`: list every task, its metrics, label count and where its data was found."""

from __future__ import annotations

from pathlib import Path

import typer


def _short(path: Path, root: Path) -> str:
    """`path` relative to the data dir (shown in the table title), to keep the cells short."""
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def describe_data(spec, root: Path) -> tuple[str, bool]:
    """(one cell of text saying where `spec`'s splits are, True when every split was found)."""
    from peftlab.tasks import locate_split

    locations = [locate_split(spec, split, root) for split in spec.splits]
    found = [loc for loc in locations if loc.path is not None]
    missing = [loc for loc in locations if loc.path is None]
    if not found:
        tried = [_short(p, root) for loc in missing for p in loc.tried]
        return f"missing (tried: {', '.join(dict.fromkeys(tried))})", False
    parts = []
    holdout = [loc for loc in found if loc.holdout]
    if holdout:
        h = spec.holdout
        pct = round(100 * h.eval_fraction)
        kind = "stratified" if h.stratified else "random"
        parts.append(f"{_short(holdout[0].path, root)} → train/dev = {kind} {100 - pct}/{pct} split, seed {h.seed}")
    by_dir: dict[Path, list[str]] = {}
    for loc in found:
        if not loc.holdout:
            by_dir.setdefault(loc.path.parent, []).append(loc.path.name)
    parts += [f"{_short(folder, root)} ({', '.join(names)})" for folder, names in by_dir.items()]
    for loc in missing:
        parts.append(f"{loc.split} missing (tried: {', '.join(_short(p, root) for p in loc.tried)})")
    return "; ".join(parts), not missing


def register(app: typer.Typer) -> None:
    """Attach `peftlab tasks` to `app`."""

    @app.command("tasks")
    def tasks_command(
        data_dir: str = typer.Option(
            None, "--data-dir", help="Data directory (default: $PEFTLAB_DATA, else ./data)."
        ),
    ) -> None:
        """List the tasks: metrics, number of labels and where their local data was found."""
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        from peftlab.tasks import data_dir_origin, datasets_available, hub_offline, list_tasks, resolve_data_dir

        root = resolve_data_dir(data_dir)
        _, origin = data_dir_origin(data_dir)
        table = Table(title=Text(f"peftlab tasks — data dir {root} (from {origin})"), title_justify="left")
        table.add_column("task", style="bold", no_wrap=True)
        table.add_column("metrics (main first)", no_wrap=True)
        table.add_column("num_labels", justify="right")
        table.add_column("data", overflow="fold")  # fold, never truncate: a path cut short misleads
        for spec in list_tasks():
            cell, complete = describe_data(spec, root)
            labels = f"{spec.num_labels} (regr.)" if spec.is_regression else str(spec.num_labels)
            # Text(): paths are shown verbatim, never parsed as rich markup.
            table.add_row(
                spec.name, ", ".join(spec.metric_names), labels, Text(cell), style=None if complete else "dim"
            )
        console = Console()
        console.print(table)
        if not root.is_dir():
            console.print(f"data directory {root} does not exist; set --data-dir or $PEFTLAB_DATA", markup=False)
        hub = "off (HF_HUB_OFFLINE)" if hub_offline() else (
            "available" if datasets_available() else "unavailable (pip install peftlab[hub])"
        )
        console.print(f"Hub fallback for missing tasks: {hub}", markup=False)
