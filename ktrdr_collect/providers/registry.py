"""Providers by name: the built-ins plus the `ktrdr_collect.providers` entry-point group."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

from ktrdr_collect.errors import ProviderUnavailableError
from ktrdr_collect.providers.base import Provider

ENTRY_POINT_GROUP = "ktrdr_collect.providers"
BUILTINS: dict[str, str] = {
    "demo": "ktrdr_collect.providers.demo:DemoProvider",
    "csv": "ktrdr_collect.providers.csv_archive:CsvArchiveProvider",
    "binance": "ktrdr_collect.providers.binance:BinanceProvider",
    "yahoo": "ktrdr_collect.providers.yahoo:YahooProvider",
    "ib": "ktrdr_collect.providers.ib:IbProvider",
}
EXTRAS: dict[str, str] = {"yahoo": "yahoo", "ib": "ib"}
"""Built-ins whose optional libraries come with an extra of the distribution."""


EXTRA_MODULES: dict[str, tuple[str, ...]] = {"yahoo": ("exchange_calendars", "curl_cffi"), "ib": ("ib_async",)}
"""The libraries each extra brings, which its provider imports only when it works."""


def missing_extra(name: str) -> str | None:
    """What to install when a built-in provider's extra is missing (its class loads without it,
    but it cannot work, or works only in part); None when nothing is missing."""
    import importlib.util

    modules = EXTRA_MODULES.get(name, ())
    if any(importlib.util.find_spec(m) is None for m in modules):
        return install_hint(name, None)
    return None


def install_hint(name: str, module: str | None) -> str:
    if name in EXTRAS:
        return f"pip install 'ktrdr-collect[{EXTRAS[name]}]'"
    return f"pip install {module}" if module else "reinstall the package that provides it"


def _import(target: str) -> type[Provider]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _load(name: str, target: str, loader: Callable[[], type[Provider]]) -> type[Provider]:
    """Load a provider class; a missing library becomes one line saying what to install."""
    module = target.partition(":")[0]
    try:
        return loader()
    except ModuleNotFoundError as e:
        if e.name and (e.name == module or module.startswith(e.name + ".")):
            raise ProviderUnavailableError(
                f"provider {name}: its module {module} cannot be imported (reinstall the package providing it)"
            ) from None
        raise ProviderUnavailableError(f"provider {name}: needs {e.name}: {install_hint(name, e.name)}") from None


def provider_names() -> list[str]:
    names = dict.fromkeys(BUILTINS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        names.setdefault(ep.name, None)
    return list(names)


def canonical_name(name: str) -> str:
    """The registered provider name `name` stands for, whatever its case (`DEMO` -> `demo`);
    `name` itself when none matches (the caller reports it)."""
    if name in BUILTINS:
        return name
    names = provider_names()
    if name in names:
        return name
    folded = [n for n in names if n.casefold() == name.strip().casefold()]
    return folded[0] if len(folded) == 1 else name


def provider_class(name: str) -> type[Provider]:
    if name in BUILTINS:
        target = BUILTINS[name]
        return _load(name, target, lambda: _import(target))
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return _load(name, ep.value, ep.load)
    raise ProviderUnavailableError(f"unknown provider '{name}' (available: {', '.join(provider_names())})")


def create_provider(name: str, options: Mapping[str, Any] | None = None) -> Provider:
    """An instance with its options: `options` as given (config, then the job's own), plus secret
    options from the environment (`KTRDR_COLLECT_<PROVIDER>_<OPTION>`, see Provider.__init__)."""
    cls = provider_class(name)
    try:
        return cls(options or {})
    except ValueError as e:
        raise ProviderUnavailableError(f"provider {name}: {e}") from None
