"""The `collect` entry point: the Typer app and the one place errors become exit codes."""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from ktrdr_collect import __version__
from ktrdr_collect.errors import EXIT_CTRL_C, EXIT_USAGE, CollectError
from ktrdr_collect.text import clean

try:  # recent Typer vendors Click; older releases depend on it
    from typer._click import exceptions as click
except ImportError:  # pragma: no cover - depends on the installed Typer
    from click import exceptions as click  # type: ignore[no-redef]



def debug_enabled() -> bool:
    return os.environ.get("KTRDR_COLLECT_DEBUG", "") not in ("", "0") or "--debug" in sys.argv[1:2]


def error(message: str, code: int) -> int:
    """One `Error:` line: whatever the message echoes (a provider's words, a URL) is cleaned."""
    print(f"Error: {clean(message)}", file=sys.stderr)
    return code


def run_guarded(invoke: Any) -> int:
    """Run the command; turn every error into one `Error:` line and its exit code."""
    try:
        result = invoke()
    except click.UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # help was printed already
            return EXIT_USAGE
        hint = f" (try '{e.ctx.command_path} --help')" if e.ctx else ""
        return error(e.format_message() + hint, EXIT_USAGE)
    except (typer.Abort, KeyboardInterrupt):
        return EXIT_CTRL_C
    except typer.Exit as e:
        return e.exit_code
    except CollectError as e:
        if debug_enabled():
            raise
        return error(str(e), e.exit_code)
    except click.ClickException as e:
        return error(e.format_message(), e.exit_code)
    except Exception as e:
        if debug_enabled():
            raise
        return error(f"{type(e).__name__}: {e} (run with --debug for details)", 1)
    return result if isinstance(result, int) else 0


class CollectGroup(TyperGroup):
    """Errors handled here, so `collect`, `python -m` and CliRunner behave the same."""

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        code = run_guarded(lambda: super(CollectGroup, self).main(
            args, prog_name, complete_var, standalone_mode=False, **extra))
        sys.stdout.flush()
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    name="collect",
    cls=CollectGroup,
    help="Collect historical OHLCV market data as resumable jobs with live progress.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


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
        os.environ["KTRDR_COLLECT_DEBUG"] = "1"
    from ktrdr_collect.jobs.queue import recover

    recover()  # queued jobs whose turn came while no runner was left to start them (jobs.queue)


def _register() -> None:
    from ktrdr_collect.cli import (
        cmd_config,
        cmd_control,
        cmd_data,
        cmd_history,
        cmd_jobs,
        cmd_plan,
        cmd_providers,
        cmd_query,
        cmd_retry,
        cmd_start,
    )

    for module in (cmd_start, cmd_plan, cmd_retry, cmd_jobs, cmd_history, cmd_control, cmd_providers, cmd_config,
                   cmd_query, cmd_data):
        module.register(app)


_register()


def entry() -> None:
    app(prog_name="collect")
