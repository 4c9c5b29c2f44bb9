"""Docs that cannot drift: every command and option is in docs/cli.md; README keeps its two set-up commands."""

import re
from pathlib import Path

from ktrdr_collect.cli.docgen import command_tree, walk

ROOT = Path(__file__).resolve().parent.parent


def test_every_command_and_option_is_documented() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    missing = []
    for path, command in walk(command_tree(), []):
        title = " ".join(["collect", *path])
        if f"## `{title}`" not in text:
            missing.append(title)
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-") and opt not in text:
                    missing.append(f"{title} {opt}")
    assert missing == [], "regenerate: python -m ktrdr_collect.cli.docgen > docs/cli.md"


def test_readme_first_screen_has_the_two_setup_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    first_screen = "\n".join(readme.splitlines()[:40])
    commands = re.findall(r"```sh\n(.+?)\n```", first_screen)
    assert len(commands) == 2
    assert "collect start AAPL MSFT" in commands[0]
    assert "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1].strip() in ci  # CI runs the README's test command
