"""`collect providers`: what is installed."""

from __future__ import annotations

import json

import typer


def describe(name: str) -> dict:  # type: ignore[type-arg]
    from ktrdr_collect.errors import CollectError
    from ktrdr_collect.providers.registry import missing_extra, provider_class

    try:
        cls = provider_class(name)
    except (CollectError, ImportError) as e:
        return {"name": name, "description": f"unavailable: {e}", "timeframes": [], "network": None,
                "credentials": None, "synthetic": None, "options": [], "install": None}
    return {
        "install": missing_extra(name),
        "name": cls.name,
        "description": cls.description,
        "timeframes": list(cls.timeframes),
        "network": cls.needs_network,
        "credentials": cls.needs_credentials,
        "synthetic": cls.synthetic,
        "options": [{"name": o.name, "type": o.type.__name__, "default": None if o.secret else o.default,
                     "help": o.help, "secret": o.secret} for o in cls.option_specs],
    }


def providers(json_: bool = typer.Option(False, "--json", help="JSON output.")) -> int:
    """List data providers: timeframes, network, credentials, and any extra to install."""
    from ktrdr_collect.providers.registry import provider_names

    rows = [describe(n) for n in provider_names()]
    if json_:
        print(json.dumps(rows, indent=2))
        return 0
    from ktrdr_collect.cli.tables import print_table

    yes_no = {True: "yes", False: "no", None: "?"}
    print_table(["NAME", "DESCRIPTION", "TIMEFRAMES", "NETWORK", "CREDENTIALS"],
                [[r["name"], r["description"], " ".join(r["timeframes"]), yes_no[r["network"]],
                  yes_no[r["credentials"]]] for r in rows])
    for r in rows:
        if r["install"]:
            print(f"{r['name']}: needs {r['install']}")
    return 0


def register(app: typer.Typer) -> None:
    app.command()(providers)
