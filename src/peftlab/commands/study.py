"""CLI subcommands (placeholder: filled in by its owner)."""

import typer


def register(app: typer.Typer) -> None:
    """Attach this module's subcommands to `app`."""
