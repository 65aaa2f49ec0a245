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
MULTI_VALUE_OPTIONS = ("--seeds", "--ranks", "--methods", "--tasks", "--signals", "--targets")  # --targets: bench sets


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


INTERRUPTED = "interrupted: finished work is kept; re-run the same command to resume"


def _usage_hint(err) -> str:
    """`; run 'peftlab train --help' for usage` for the command the usage error belongs to."""
    ctx = getattr(err, "ctx", None)
    path = ctx.command_path if ctx is not None and getattr(ctx, "command_path", "") else "peftlab"
    return f"run '{path} --help' for usage"


def _one_line(text: str) -> str:
    """`text` on one line, without a trailing period (a `; what to do` part may follow)."""
    return " ".join(str(text).split()).rstrip(".")


def _cli_exception_types():
    """Exception classes of the bundled click typer uses, and of the real click when installed.

    typer >= 0.20 vendors click as `typer._click`, whose exceptions are not click's; catch both so a
    command that raises a plain click exception is handled the same way.
    """
    from typer import _click as bundled

    usage, click_exc, exits, aborts, no_args = [bundled.exceptions.UsageError], [bundled.exceptions.ClickException], \
        [typer.Exit], [typer.Abort], [bundled.exceptions.NoArgsIsHelpError]
    try:  # pragma: no cover - depends on what is installed
        import click

        usage.append(click.exceptions.UsageError)
        click_exc.append(click.exceptions.ClickException)
        exits.append(click.exceptions.Exit)
        aborts.append(click.exceptions.Abort)
    except ImportError:  # pragma: no cover
        pass
    return tuple(no_args), tuple(usage), tuple(click_exc), tuple(exits), tuple(aborts)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: every failure ends in one line on stderr and a known exit code.

    - option-parsing errors (wrong type, unknown option/command, missing argument): `error: ...`, exit 2;
    - `PeftlabError`: `error: ...`, its exit code (2; 3 for a diverged training run);
    - OS errors (disk full, permission): `error: ...`, exit 2;
    - Ctrl-C: `interrupted: ...`, exit 130;
    - bare `peftlab`: the help text on stdout, exit 0.
    `--debug` re-raises instead (full traceback).
    """
    args = expand_multi_value(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in args
    no_args, usage, click_exc, exits, aborts = _cli_exception_types()
    command = typer.main.get_command(app)
    try:
        code = command.main(args=args, prog_name="peftlab", standalone_mode=False)
    except no_args as err:  # bare `peftlab`: help is the answer, not an error
        typer.echo(err.format_message())
        sys.exit(0)
    except PeftlabError as err:
        if debug:
            raise
        typer.echo(f"error: {_one_line(err)}", err=True)
        sys.exit(err.exit_code)
    except exits as err:
        sys.exit(err.exit_code)
    except usage as err:
        if debug:
            raise
        typer.echo(f"error: {_one_line(err.format_message())}; {_usage_hint(err)}", err=True)
        sys.exit(2)
    except click_exc as err:
        if debug:
            raise
        typer.echo(f"error: {_one_line(err.format_message())}", err=True)
        sys.exit(2)
    except (KeyboardInterrupt, *aborts):
        typer.echo(INTERRUPTED, err=True)
        sys.exit(130)
    except OSError as err:
        if debug:
            raise
        name = err.filename or "a file"
        typer.echo(f"error: cannot access '{name}': {err.strerror or type(err).__name__}; "
                   f"check the path and that its disk is writable, then re-run", err=True)
        sys.exit(2)
    if code == 130:
        # typer turns a KeyboardInterrupt inside a command into a returned exit code 130 (non-standalone
        # mode), so the promised line is printed here; no peftlab command returns 130 itself.
        typer.echo(INTERRUPTED, err=True)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
