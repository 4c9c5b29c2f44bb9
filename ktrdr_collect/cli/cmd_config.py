"""`collect config`: the TOML settings file."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from ktrdr_collect import config, paths
from ktrdr_collect.text import clean, clean_tree

config_app = typer.Typer(help="Show and edit settings (config.toml).", no_args_is_help=True)


def secret_options(provider: str) -> set[str]:
    try:
        from ktrdr_collect.providers.registry import provider_class

        return {o.name for o in provider_class(provider).option_specs if o.secret}
    except Exception:  # an unavailable provider: nothing to mask, nothing to fail on
        return set()


def show_value(value: Any) -> str:
    return "(unset)" if value is None else str(value)


@config_app.command()
def show(json_: bool = typer.Option(False, "--json", help="JSON output.")) -> int:
    """Effective settings with where each comes from (default, config file, environment)."""
    settings = config.load_settings()
    rows = [{"key": k, "value": settings.values[k], "source": settings.sources[k]} for k in config.KEYS]
    data_dir, source = settings.data_dir_source()  # the effective folder, never "(unset)"
    rows[list(config.KEYS).index("data_dir")].update(value=str(data_dir), source=source)
    for name, table in sorted(settings.providers.items()):
        secret = secret_options(name)
        for option, value in sorted(table.items()):
            shown = "***" if option in secret and value else value
            rows.append({"key": f"providers.{name}.{option}", "value": shown, "source": "config"})
    rows = clean_tree(rows)  # a token in a base_url, control characters in the file: never shown
    if json_:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["key"]) for r in rows)
    for r in rows:
        print(f"{r['key']:<{width}}  {show_value(r['value']):<20}  {r['source']}")
    print(f"# flags on the command line override these; file: {paths.config_path()}")
    return 0


@config_app.command()
def get(key: str = typer.Argument(..., help="A key, e.g. workers or providers.demo.latency_ms.")) -> int:
    """Print one effective setting (where it comes from goes to stderr)."""
    value, source = config.effective(key)
    print(show_value(value))
    print(f"# from {source}", file=sys.stderr)
    return 0


@config_app.command("set")
def set_(key: str = typer.Argument(..., help="A key, e.g. workers or providers.demo.latency_ms."),
         value: str = typer.Argument(..., help="The value (checked against the key's type).")) -> int:
    """Set a key in the config file."""
    parsed = config.set_value(key, value)
    print(clean(f"{key} = {parsed!r}"))
    return 0


@config_app.command()
def unset(key: str = typer.Argument(..., help="The key to remove from the config file.")) -> int:
    """Remove a key from the config file (its default applies again)."""
    if not config.unset_value(key):
        print(f"{key} was not set in {paths.config_path()}")
    return 0


@config_app.command("path")
def path_() -> int:
    """Print where the config file is."""
    print(paths.config_path())
    return 0


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
