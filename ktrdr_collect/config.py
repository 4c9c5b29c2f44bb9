"""Settings: built-in defaults, overridden by config.toml, overridden by the environment
(`KTRDR_COLLECT_<KEY>`); command-line flags override all three (CONTRACT.md)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ktrdr_collect import files, paths
from ktrdr_collect.errors import CollectError, InvalidInputError
from ktrdr_collect.inputs import MAX_DAYS
from ktrdr_collect.storage.open import FORMATS
from ktrdr_collect.storage.timeframes import TIMEFRAMES

MAX_WAIT_S = 7 * 86400
"""Longest `max_rate_limit_wait`: a week."""


def _positive(name: str, low: int = 1, high: int | None = None) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("expects a whole number")
        try:
            number = int(str(value).strip())
        except ValueError:  # also a number of more digits than Python converts
            raise ValueError("expects a whole number") from None
        if number < low or (high is not None and number > high):
            raise ValueError(f"must be between {low} and {high}" if high else f"must be >= {low}")
        return number

    return check


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        text = str(value).strip()
        if text not in choices:
            raise ValueError(f"must be one of: {', '.join(choices)}")
        return text

    return check


def _text(value: Any) -> str:
    text = str(value).strip()
    if not text:
        raise ValueError("must not be empty")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text):
        raise ValueError("must not contain control characters")
    return text


def _redis_url(value: Any) -> str:
    from urllib.parse import urlsplit

    text = _text(value)
    parts = urlsplit(text)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        raise ValueError("must be a Redis URL: redis://HOST:PORT/DB, rediss://... or unix:///path")
    return text


def _names(value: Any) -> str:
    """A comma list of provider names, normalised (lower case, no spaces); empty is allowed."""
    names = [n.strip().lower() for n in str(value).split(",") if n.strip()]
    if any(not n.replace("_", "").replace("-", "").isalnum() for n in names):
        raise ValueError("must be a comma list of provider names")
    return ",".join(names)


def _executor(value: Any) -> str:
    from urllib.parse import urlsplit

    text = _text(value)
    if text == "threads":
        return text
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "dask" or not parts.hostname or port is None:
        raise ValueError("must be threads or dask://HOST:PORT (a Dask scheduler)")
    return text


@dataclass(frozen=True)
class Key:
    name: str
    default: Any
    parse: Callable[[Any], Any]
    help: str


KEYS: dict[str, Key] = {k.name: k for k in (
    Key("provider", "demo", _text, "provider used when -p is not given"),
    Key("timeframe", "1d", _choice(TIMEFRAMES), "timeframe used when -t is not given"),
    Key("workers", 4, _positive("workers", 1, 256), "parallel workers per job"),
    Key("data_dir", None, _text, "where data files go (default <home>/data)"),
    Key("format", "csv", _choice(FORMATS), "data file format"),
    Key("default_days", 365, _positive("default_days", 1, MAX_DAYS), "window length when no --start/--days"),
    Key("retention_days", 30, _positive("retention_days", 0, MAX_DAYS),
        "prune finished jobs older than this (0: never)"),
    Key("max_rate_limit_wait", 900, _positive("max_rate_limit_wait", 0, MAX_WAIT_S),
        "seconds one symbol may spend waiting out a provider's rate limits before it fails"),
    Key("max_running_jobs", None, _positive("max_running_jobs", 1),
        "most jobs running at once; more wait `pending` and start in creation order (default: no limit)"),
    Key("pacing_url", None, _redis_url,
        "redis://HOST:PORT/DB: pace requests in Redis, shared by every host (default: this machine only)"),
    Key("pacing_per_host", "", _names,
        "comma list of providers that limit per IP: with pacing_url, each host gets its own budget"),
    Key("executor", "threads", _executor,
        "threads (this machine) or dask://HOST:PORT: run each series as a task on a Dask cluster"),
)}


def env_name(key: str) -> str:
    return f"KTRDR_COLLECT_{key.upper()}"


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

    def data_dir_source(self, flag: Path | None = None) -> tuple[Path, str]:
        """The effective data dir and where it comes from: ``flag (--data-dir)``, the environment,
        the config file, or ``default (<home>/data)``."""
        if flag is not None:
            return Path(flag).expanduser(), "flag (--data-dir)"
        if self.values.get("data_dir"):
            return self.data_dir, self.sources["data_dir"]
        return self.data_dir, "default (<home>/data)"

    def provider_options(self, name: str) -> dict[str, Any]:
        return dict(self.providers.get(name, {}))


def read_config_file(path: Path | None = None) -> dict[str, Any]:
    import tomllib

    path = path or paths.config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise InvalidInputError(f"cannot read config {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidInputError(f"config {path} is not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidInputError(f"config {path} is not valid TOML: {e}") from None
    except RecursionError:
        raise InvalidInputError(f"config {path} is not valid TOML: nested too deeply") from None


def parse_value(key: str, value: Any, where: str) -> Any:
    try:
        return KEYS[key].parse(value)
    except ValueError as e:
        raise InvalidInputError(f"{where}: {key} {e} (got {value!r})") from None


def load_settings(path: Path | None = None) -> Settings:
    path = path or paths.config_path()
    raw = read_config_file(path)
    values = {name: key.default for name, key in KEYS.items()}
    sources = dict.fromkeys(KEYS, "default")
    for name, value in raw.items():
        if name == "providers":
            continue
        if name not in KEYS:
            raise InvalidInputError(f"config {path}: unknown key '{name}' (valid: {', '.join(KEYS)})")
        values[name] = parse_value(name, value, f"config {path}")
        sources[name] = f"config ({path})"
    for name in KEYS:
        env = os.environ.get(env_name(name))
        if env:
            values[name] = parse_value(name, env, f"environment {env_name(name)}")
            sources[name] = f"environment ({env_name(name)})"
    providers = raw.get("providers", {})
    if not isinstance(providers, dict) or not all(isinstance(v, dict) for v in providers.values()):
        raise InvalidInputError(f"config {path}: [providers.<name>] must be tables")
    return Settings(values=values, providers=providers, sources=sources)


# -- editing the file (`collect config set/unset`) -------------------------------------------------


def _provider_option(key: str, value: Any | None) -> tuple[str, str, Any]:
    """`providers.<name>.<option>` -> (name, option, parsed value), validated by the provider."""
    from ktrdr_collect.providers.registry import provider_class

    parts = key.split(".")
    if len(parts) != 3 or not all(parts):
        raise InvalidInputError(f"config key '{key}': provider options are providers.<name>.<option>")
    _, name, option = parts
    cls = provider_class(name)
    if value is None:
        return name, option, None
    return name, option, cls.parse_options({option: value})[option]


def write_config(data: dict[str, Any], path: Path | None = None) -> Path:
    import tomli_w

    path = path or paths.config_path()
    paths.ensure_private_dir(path.parent)
    try:  # the old file stays as it was on any error (full disk, a link at its name)
        files.atomic_write(path, tomli_w.dumps(data).encode(), mode=files.PRIVATE_FILE_MODE, durable=True)
    except CollectError:
        raise
    except OSError as e:
        raise CollectError(f"cannot write config {path}: {e.strerror or e}") from None
    return path


def set_value(key: str, value: str, path: Path | None = None) -> Any:
    data = read_config_file(path)
    if key.startswith("providers."):
        name, option, parsed = _provider_option(key, value)
        data.setdefault("providers", {}).setdefault(name, {})[option] = parsed
    elif key in KEYS:
        parsed = parse_value(key, value, "config set")
        data[key] = parsed
    else:
        raise InvalidInputError(f"unknown config key '{key}' (valid: {', '.join(KEYS)}, providers.<name>.<option>)")
    write_config(data, path)
    return parsed


def unset_value(key: str, path: Path | None = None) -> bool:
    """Remove a key from the file; False if it was not set there."""
    data = read_config_file(path)
    if key.startswith("providers."):
        name, option, _ = _provider_option(key, None)
        table = data.get("providers", {}).get(name, {})
        if option not in table:
            return False
        del table[option]
        if not table:
            del data["providers"][name]
        if not data.get("providers"):
            data.pop("providers", None)
    elif key in KEYS:
        if key not in data:
            return False
        del data[key]
    else:
        raise InvalidInputError(f"unknown config key '{key}' (valid: {', '.join(KEYS)}, providers.<name>.<option>)")
    write_config(data, path)
    return True


def effective(key: str) -> tuple[Any, str]:
    """(value, source) for `config get`."""
    settings = load_settings()
    if key == "data_dir":  # never "(unset)": the folder data goes to, and why
        path, source = settings.data_dir_source()
        return str(path), source
    if key in KEYS:
        return settings.values[key], settings.sources[key]
    if key.startswith("providers."):
        name, option, _ = _provider_option(key, None)
        from ktrdr_collect.providers.registry import provider_class

        specs = {s.name: s for s in provider_class(name).option_specs}
        if option not in specs:
            raise InvalidInputError(f"unknown option '{option}' for provider {name} (valid: {', '.join(specs)})")
        table = settings.provider_options(name)
        if option in table:
            return table[option], "config"
        return specs[option].default, "default"
    raise InvalidInputError(f"unknown config key '{key}' (valid: {', '.join(KEYS)}, providers.<name>.<option>)")
