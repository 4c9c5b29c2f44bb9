"""Settings: built-in defaults, overridden by config.toml (CONTRACT.md)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ktrdr_collect import paths
from ktrdr_collect.errors import InvalidInputError

DEFAULTS: dict[str, Any] = {
    "provider": "demo",
    "timeframe": "1d",
    "workers": 4,
    "data_dir": None,
    "format": "csv",
    "default_days": 365,
    "retention_days": 30,
}


@dataclass
class Settings:
    values: dict[str, Any]
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @property
    def data_dir(self) -> Path:
        value = self.values.get("data_dir")
        return Path(value).expanduser() if value else paths.default_data_dir()

    def provider_options(self, name: str) -> dict[str, Any]:
        return dict(self.providers.get(name, {}))


def read_config_file(path: Path | None = None) -> dict[str, Any]:
    path = path or paths.config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise InvalidInputError(f"cannot read config {path}: {e.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidInputError(f"config {path} is not valid TOML: {e}") from None


def load_settings(path: Path | None = None) -> Settings:
    raw = read_config_file(path)
    values = dict(DEFAULTS)
    sources = {key: "default" for key in DEFAULTS}
    for key, value in raw.items():
        if key == "providers":
            continue
        values[key] = value
        sources[key] = "config"
    providers = raw.get("providers", {})
    if not isinstance(providers, dict):
        raise InvalidInputError("config: [providers] must be a table")
    return Settings(values=values, providers=providers, sources=sources)
