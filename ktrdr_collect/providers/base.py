"""The Provider shape every data source implements, and the error classes it raises."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from ktrdr_collect.errors import ProviderUnavailableError
from ktrdr_collect.storage.calendar import Calendar
from ktrdr_collect.text import clean, has_credentials

Bar = tuple[int, float, float, float, float, float]
"""(timestamp epoch seconds UTC, open, high, low, close, volume)."""

Action = tuple[int, str, float]
"""A corporate action: (00:00Z of its ex-date, "split" or "dividend", the split's new shares per
old share — 10 for 10:1 — or the dividend per share). Stored by storage/actions.py."""


class ProviderError(Exception):
    """Base of the classified provider errors; the engine decides what each one means.

    The message is cleaned where it is made (control characters escaped, credentials in URLs
    redacted): this is where a provider's text enters a job, its state file and its log."""

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(clean(str(message)), *args)


class UnknownSymbolError(ProviderError):
    """The provider does not know the symbol: fail it at once, no retry."""


class RateLimitedError(ProviderError):
    """The provider refused the request for rate limiting: wait, then try again."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TransientError(ProviderError):
    """Network hiccup, timeout, 5xx: retry with backoff."""


class PermanentError(ProviderError):
    """Anything retrying will not fix: fail the symbol."""


class Interrupt(Protocol):
    """What a provider waits on: returns True at once when the work is cancelled."""

    @property
    def is_cancelled(self) -> bool: ...

    def wait(self, timeout: float) -> bool: ...


def mark_sent(interrupt: object) -> None:
    """Tell the engine the request is going out now (it paces by when requests really leave, not
    by when they were scheduled). Providers call it right before sending; optional."""
    hook = getattr(interrupt, "mark_sent", None)
    if hook is not None:
        hook()


MIN_RATE = 0.01
"""Slowest pacing a `rate_limit` option may ask for, requests per second (one per 100 s; a rate
like 1e-300 would never send a request and hang the job)."""
MAX_RATE = 10_000.0
MAX_TIMEOUT_S = 3600.0
"""Longest request timeout an option may set."""


@dataclass(frozen=True)
class OptionSpec:
    """A provider option. Numbers are range-checked before any job exists: floats must be finite,
    and `low <= value <= high`, `value > above` (each bound optional); `zero_off` also accepts 0,
    meaning "off" (e.g. no pacing) below a `low` that keeps other values sane."""

    name: str
    type: type
    default: Any
    help: str
    secret: bool = False
    low: float | None = None
    high: float | None = None
    above: float | None = None
    zero_off: bool = False

    def in_range(self, value: float) -> bool:
        if self.zero_off and value == 0:
            return True
        return ((self.low is None or value >= self.low) and (self.high is None or value <= self.high)
                and (self.above is None or value > self.above))

    def bounds_text(self) -> str:
        """`1..1000`, `> 0 and <= 3600`, `0 (off) or 0.01..10000`."""
        if self.low is not None and self.high is not None and self.above is None:
            span = f"{_number(self.low)}..{_number(self.high)}"
        else:
            parts = [f"> {_number(self.above)}"] if self.above is not None else []
            parts += [f">= {_number(self.low)}"] if self.low is not None else []
            parts += [f"<= {_number(self.high)}"] if self.high is not None else []
            span = " and ".join(parts)
        return f"0 (off) or {span}" if self.zero_off else span


def _number(value: float) -> str:
    """`1000000`, `0.01`, `1e-300`: whole numbers without an exponent."""
    if isinstance(value, int) or (value.is_integer() and abs(value) < 1e15):
        return str(int(value))
    return f"{value:g}"


def _parse_text(spec: OptionSpec, value: Any) -> Any:
    if isinstance(value, spec.type) and not (spec.type is int and isinstance(value, bool)):
        return value
    text = str(value).strip()
    if spec.type is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(text)
    return spec.type(text)


def _check_range(spec: OptionSpec, value: Any) -> None:
    if spec.type not in (int, float):
        return
    if spec.type is float and not math.isfinite(value):
        raise ProviderUnavailableError(f"option {spec.name} must be a finite number, got '{value}'")
    if not spec.in_range(value):
        raise ProviderUnavailableError(f"option {spec.name} must be {spec.bounds_text()}, got {_number(value)}")


def _convert(spec: OptionSpec, value: Any) -> Any:
    """`value` (text from -o or the environment, or a TOML value) as the option's type, in range."""
    try:
        parsed = _parse_text(spec, value)
    except (ValueError, OverflowError):
        raise ProviderUnavailableError(
            f"option {spec.name} expects {spec.type.__name__}, got '{clean(str(value))}'"
        ) from None
    if spec.type is float and isinstance(parsed, int):
        parsed = float(parsed)  # a TOML integer for a float option
    _check_range(spec, parsed)
    return parsed


ENV_PREFIX = "KTRDR_COLLECT_"


def secret_env_var(provider: str, option: str) -> str:
    """The environment variable a secret option is read from: ``KTRDR_COLLECT_<PROVIDER>_<OPTION>``."""
    return ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", f"{provider}_{option}".upper())


def secret_hint(provider: str, option: str) -> str:
    return (f"set it in the config ([providers.{provider}] {option} = ..., e.g. "
            f"`collect config set providers.{provider}.{option} VALUE`) or in the environment variable "
            f"{secret_env_var(provider, option)}")


def reject_secret_options(cls: type[Provider], cli_options: Mapping[str, Any]) -> None:
    """Refuse secrets given on the command line (`-o`): they would land in shell history and `ps`.
    A value carrying credentials (`https://user:token@host`, `?apikey=...`) counts as a secret: it
    is never stored with the job, so the runner could only take it from the config again."""
    for spec in cls.option_specs:
        if spec.secret and spec.name in cli_options:
            raise ProviderUnavailableError(
                f"option {spec.name} of provider {cls.name} is secret and cannot be passed with -o: "
                + secret_hint(cls.name, spec.name)
            )
        if _carries_credentials(cli_options.get(spec.name)):
            raise ProviderUnavailableError(
                f"option {spec.name} of provider {cls.name} carries credentials and cannot be passed with -o: "
                f"set it in the config ([providers.{cls.name}] {spec.name} = ..., e.g. "
                f"`collect config set providers.{cls.name}.{spec.name} VALUE`)"
            )


def _carries_credentials(value: Any) -> bool:
    return isinstance(value, str) and has_credentials(value)


class Provider:
    """Base class: declares what the source offers and parses its options."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    timeframes: ClassVar[tuple[str, ...]] = ()
    needs_network: ClassVar[bool] = False
    needs_credentials: ClassVar[bool] = False
    synthetic: ClassVar[bool] = False
    option_specs: ClassVar[tuple[OptionSpec, ...]] = ()

    calendar: Calendar
    max_bars: int = 1000
    rate_limit: float | None = None
    """Requests per second the provider allows (None: no known limit)."""
    rate_windows: tuple[tuple[int, float], ...] | None = None
    """Finer limits as (count, seconds) sliding windows, e.g. ((60, 600.0),); default: from rate_limit."""
    publish_delay_s: float = 0.0
    """How long after a bar's period ends the provider may take to serve it. A range counts as
    fetched only up to (now - one bar - this delay); see docs/storage.md."""
    expected_latency_s: float | None = None
    """How long one request usually takes, when the provider knows (`collect plan` estimates a run
    with it); None: unknown."""

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = self.parse_options(self.with_env_secrets(options or {}))

    @classmethod
    def with_env_secrets(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Secret options from the environment (`KTRDR_COLLECT_<PROVIDER>_<OPTION>`); these win
        over the config file, like environment variables usually do."""
        merged = dict(options)
        for spec in cls.option_specs:
            if spec.secret:
                value = os.environ.get(secret_env_var(cls.name, spec.name))
                if value:
                    merged[spec.name] = value
        return merged

    def require_secret(self, option: str) -> str:
        """The value of a secret option, or a clear error saying where to put it."""
        value = self.options.get(option)
        if not value:
            raise ProviderUnavailableError(f"provider {self.name} needs {option}: " + secret_hint(self.name, option))
        return str(value)

    @classmethod
    def parse_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        specs = {spec.name: spec for spec in cls.option_specs}
        unknown = sorted(set(options) - set(specs))
        if unknown:
            valid = ", ".join(specs) or "none"
            raise ProviderUnavailableError(
                f"unknown option '{unknown[0]}' for provider {cls.name} (valid: {valid})"
            )
        parsed = {name: spec.default for name, spec in specs.items()}
        for name, value in options.items():
            parsed[name] = _convert(specs[name], value)
        return parsed

    def public_options(self) -> dict[str, Any]:
        """Options safe to store in state files and show: secret options, and values carrying
        credentials (a token in a `base_url`), are left out entirely (the runner takes them from
        config or the environment again, so nothing masked can ever override the real value)."""
        secret = {spec.name for spec in self.option_specs if spec.secret}
        return {k: v for k, v in self.options.items() if k not in secret and not _carries_credentials(v)}

    def calendar_for(self, symbol: str) -> Calendar:
        """The calendar of the exchange `symbol` trades on (requests are planned with it, and a
        range is skipped as "no session" only when it says so). Default: the provider's one calendar."""
        return self.calendar

    legacy_daily_stamps: ClassVar[bool] = False
    """True when files of an older version may hold daily/weekly bars not at 00:00Z (see legacy_day)."""

    def legacy_day(self, symbol: str, timeframe: str, ts: int) -> int | None:
        """For files written before daily and weekly bars were stamped at 00:00Z of their session
        date: the day number a bar stamped `ts` in the provider's old convention belongs to, or
        None when it cannot be told (the series is then fetched again). Default: no old convention."""
        return None

    def max_bars_for(self, timeframe: str) -> int:
        """Most bars one request may return for this timeframe (segments are planned with it)."""
        return self.max_bars

    def pacing_for(self, timeframe: str) -> tuple[float | None, tuple[tuple[int, float], ...] | None]:
        """(requests per second, windows) the provider allows for this timeframe's requests; the
        engine paces a job with it. Default: `rate_limit` and `rate_windows`, whatever the timeframe."""
        return self.rate_limit, self.rate_windows

    def check_window(self, timeframe: str, start: int, end: int, now: int) -> None:
        """Refuse, with a clear ValueError, a window the provider cannot serve (checked before a job starts)."""

    def earliest(self, timeframe: str) -> int:
        """The first bar the provider could ever have (the job-level meaning of `earliest`)."""
        raise NotImplementedError

    def validate(self, symbol: str) -> None:
        """Raise UnknownSymbolError if the provider does not know `symbol`."""

    head_timestamp_is_request: ClassVar[bool] = False
    """True when head_timestamp asks the provider (then it is paced, retried and counted)."""

    def head_timestamp(self, symbol: str, timeframe: str, interrupt: Interrupt | None = None) -> int:
        """The first bar available for this symbol."""
        return self.earliest(timeframe)

    def fetch(self, symbol: str, timeframe: str, start: int, end: int, interrupt: Interrupt) -> list[Bar]:
        """Bars with start <= ts < end, ascending."""
        raise NotImplementedError

    adjusted_for: frozenset[str] = frozenset()
    """The action types ("split", "dividend") the provider's prices are adjusted for: one new to a
    series changes the bars stored before it, so the pipeline restates them (docs/storage.md)."""

    def take_actions(self, symbol: str, timeframe: str) -> list[Action]:
        """The corporate actions the answers to this series' fetches carried since the last call,
        each handed over once (the pipeline stores them beside the data). Default: none known."""
        return []

    def close(self) -> None:
        """Release connections."""
