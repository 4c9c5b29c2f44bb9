"""Providers by name: the built-ins plus the `ktrdr_collect.providers` entry-point group."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from ktrdr_collect.errors import ProviderUnavailableError
from ktrdr_collect.providers.base import Provider

ENTRY_POINT_GROUP = "ktrdr_collect.providers"
BUILTINS: dict[str, str] = {
    "demo": "ktrdr_collect.providers.demo:DemoProvider",
}


def _load(target: str) -> type[Provider]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def provider_names() -> list[str]:
    names = dict.fromkeys(BUILTINS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        names.setdefault(ep.name, None)
    return list(names)


def provider_class(name: str) -> type[Provider]:
    if name in BUILTINS:
        return _load(BUILTINS[name])
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.load()
    raise ProviderUnavailableError(f"unknown provider '{name}' (available: {', '.join(provider_names())})")


def create_provider(name: str, options: Mapping[str, Any] | None = None) -> Provider:
    cls = provider_class(name)
    try:
        return cls(options or {})
    except ValueError as e:
        raise ProviderUnavailableError(f"provider {name}: {e}") from None
