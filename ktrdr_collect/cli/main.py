"""The `collect` entry point: the Typer app and the one place errors become exit codes."""

from __future__ import annotations

import os
import sys

import typer

try:  # recent Typer vendors Click; older releases depend on it
    from typer._click import exceptions as click
except ImportError:  # pragma: no cover - depends on the installed Typer
    from click import exceptions as click  # type: ignore[no-redef]

from ktrdr_collect import __version__
from ktrdr_collect.errors import CollectError

app = typer.Typer(
    name="collect",
    help="Collect historical OHLCV market data as resumable jobs with live progress.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_debug = {"on": os.environ.get("KTRDR_COLLECT_DEBUG", "") not in ("", "0")}


def _version(value: bool) -> None:
    if value:
        print(f"collect (ktrdr-collect) {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    """Collect historical OHLCV market data as resumable jobs with live progress."""
    if debug:
        _debug["on"] = True


def _register() -> None:
    from ktrdr_collect.cli import cmd_control, cmd_jobs, cmd_providers, cmd_start

    for module in (cmd_start, cmd_jobs, cmd_control, cmd_providers):
        module.register(app)


def error(message: str, code: int) -> int:
    print(f"Error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    _register()
    try:
        result = app(args=argv, prog_name="collect", standalone_mode=False)
    except click.UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # help was printed already
            return _exit(2)
        hint = f" (try '{e.ctx.command_path} --help')" if e.ctx else ""
        return _exit(error(e.format_message() + hint, 2))
    except typer.Abort:
        return _exit(130)
    except KeyboardInterrupt:
        return _exit(130)
    except CollectError as e:
        if _debug["on"]:
            raise
        return _exit(error(str(e), e.exit_code))
    except click.ClickException as e:
        return _exit(error(e.format_message(), e.exit_code))
    except Exception as e:
        if _debug["on"]:
            raise
        return _exit(error(f"{type(e).__name__}: {e} (run with --debug for details)", 1))
    return _exit(result if isinstance(result, int) else 0)


def _exit(code: int) -> int:
    sys.stdout.flush()
    return code


def entry() -> None:
    sys.exit(main())
