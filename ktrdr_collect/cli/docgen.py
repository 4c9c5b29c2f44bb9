"""Write docs/cli.md from the commands' own help: `python -m ktrdr_collect.cli.docgen > docs/cli.md`."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

HEADER = """# `collect` command reference

Generated from the commands' `--help` by `python -m ktrdr_collect.cli.docgen > docs/cli.md`;
a test fails when a command or option is missing here. Exit codes and JSON keys: see the README
and the status snapshot in `collect status --json`.
"""


def walk(command: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from walk(sub, [*path, name])


def command_tree() -> Any:
    import typer

    from ktrdr_collect.cli.main import app

    return typer.main.get_command(app)


def help_text(args: list[str]) -> str:
    from typer.testing import CliRunner

    from ktrdr_collect.cli.main import app

    env = {"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"}
    text = CliRunner().invoke(app, [*args, "--help"], env=env).stdout
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n")


def render() -> str:
    os.environ.setdefault("COLUMNS", "100")
    parts = [HEADER]
    for path, _ in walk(command_tree(), []):
        title = " ".join(["collect", *path])
        parts.append(f"## `{title}`\n\n```\n{help_text(path)}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(render())
