"""The `peftlab` command line: one typer app, one subcommand per verb.

Subcommands live in `peftlab/commands/*.py`, each with a `register(app)` function, and import
torch/transformers only inside the command bodies so that `peftlab --help` returns instantly.

Every user-triggerable error is a `PeftlabError`; `main()` prints it as one line on stderr and
exits with code 2 (a traceback only with `--debug`).
"""

from __future__ import annotations

import sys

import typer

from peftlab.errors import PeftlabError

app = typer.Typer(
    name="peftlab",
    help="Fine-tune HF classifiers with FFT / LoRA / PEFT methods and measure every attention head's "
    "importance, plasticity and update.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
) -> None:
    """peftlab: study and choose parameter-efficient fine-tuning."""


def _register_commands() -> None:
    from peftlab.commands import COMMAND_MODULES

    for module in COMMAND_MODULES:
        module.register(app)


_register_commands()


# Options that take several values, written the way the seed scripts did (`--seeds 1 2 3`).
MULTI_VALUE_OPTIONS = ("--seeds", "--ranks", "--methods", "--tasks")


def expand_multi_value(args: list[str]) -> list[str]:
    """Rewrite `--seeds 1 2 3` as `--seeds 1 --seeds 2 --seeds 3` (click options take one value each).

    Expansion stops at the next option (`-...`) or a `key=value` override.
    """
    out: list[str] = []
    current: str | None = None  # the multi-value option being read
    first = False  # the next value is the option's own first value
    for arg in args:
        if arg in MULTI_VALUE_OPTIONS:
            current, first = arg, True
            out.append(arg)
        elif current is not None and not arg.startswith("-") and "=" not in arg:
            out.extend([arg] if first else [current, arg])
            first = False
        else:
            current = None
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning PeftlabError into one line + exit 2."""
    import click

    args = expand_multi_value(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in args
    command = typer.main.get_command(app)
    try:
        code = command.main(args=args, prog_name="peftlab", standalone_mode=False)
    except PeftlabError as err:
        if debug:
            raise
        typer.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted: finished work is kept; re-run the same command to resume", err=True)
        sys.exit(130)
    except PermissionError as err:
        if debug:
            raise
        typer.echo(f"error: cannot write '{err.filename}': permission denied; choose a writable --out", err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
