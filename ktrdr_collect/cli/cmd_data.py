"""`collect data`: what is stored (list, path), whether it is sound (verify), and erase."""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ktrdr_collect.errors import InvalidInputError
from ktrdr_collect.text import clean

if TYPE_CHECKING:
    from ktrdr_collect.config import Settings
    from ktrdr_collect.providers.base import Provider
    from ktrdr_collect.storage.calendar import Calendar
    from ktrdr_collect.storage.inventory import SeriesInfo, SeriesKey

FOUND_EXIT = 3
"""`data verify` found something (CONTRACT: 3)."""

data_app = typer.Typer(help="See, check and erase stored data.", no_args_is_help=True)

SYMBOLS_ARG = typer.Argument(None, help="Only these symbols (default: all).")
PROVIDER_OPT = typer.Option(None, "-p", "--provider", help="Only this provider (any case).")
TIMEFRAME_OPT = typer.Option(None, "-t", "--timeframe", help="Only this timeframe.")
FORMAT_OPT = typer.Option(None, "--format", help="Only this format: csv or parquet.")
DATA_DIR_OPT = typer.Option(None, "--data-dir", help="The data folder (default: config data_dir, <home>/data).")
JSON_OPT = typer.Option(False, "--json", help="JSON output.")


# --- resolving the arguments --------------------------------------------------------------------


class Scope:
    """The data dir and filters of one command, checked: bad input is one `Error:` line."""

    def __init__(self, data_dir: Path | None, provider: str | None, timeframe: str | None,
                 fmt: str | None, symbols: Iterable[str] = ()) -> None:
        from ktrdr_collect.config import load_settings
        from ktrdr_collect.inputs import parse_symbols
        from ktrdr_collect.storage.inventory import FORMATS
        from ktrdr_collect.storage.timeframes import TIMEFRAMES

        self.settings: Settings = load_settings()
        self.root, self.source = self.settings.data_dir_source(data_dir)
        self.symbols = parse_symbols(list(symbols))
        if timeframe is not None and timeframe not in TIMEFRAMES:
            raise InvalidInputError(f"unknown timeframe '{timeframe}' (choose from: {' '.join(TIMEFRAMES)})")
        if fmt is not None and fmt not in FORMATS:
            raise InvalidInputError(f"unknown format '{fmt}' (choose from: {', '.join(FORMATS)})")
        self.timeframe = timeframe
        self.format = fmt
        self.provider = self.check_provider(provider) if provider is not None else None
        self.providers: dict[str, Provider | None] = {}

    def check_provider(self, text: str) -> str:
        """A registered provider (any case), or one that has data here (a plugin since removed)."""
        from ktrdr_collect.providers.registry import canonical_name, provider_names

        name = canonical_name(text)
        if name in provider_names() or (self.root / name).is_dir():
            return name
        raise InvalidInputError(f"unknown provider '{text}' (available: {', '.join(provider_names())})")

    def keys(self, symbols: Iterable[str] | None = None) -> list[SeriesKey]:
        from ktrdr_collect.storage.inventory import find_series

        return find_series(self.root, self.symbols if symbols is None else symbols, self.provider,
                           self.timeframe, self.format)

    def keys_or_error(self) -> list[SeriesKey]:
        """The matching series; every symbol asked for must have one."""
        keys = self.keys()
        stored = {k.symbol for k in keys}
        missing = [s for s in self.symbols if s not in stored]
        if missing:
            raise InvalidInputError(f"no stored series for {', '.join(missing)}{self.where()} in {self.root}")
        if any(k.format == "parquet" for k in keys):
            from ktrdr_collect.storage.open import open_store

            open_store("parquet", self.root)  # without pyarrow: one clear error saying what to install
        return keys

    def where(self) -> str:
        parts = [p for p in (self.provider, self.timeframe, self.format) if p]
        return f" ({' '.join(parts)})" if parts else ""

    def calendar_for(self, provider: str, symbol: str) -> Calendar | None:
        """The symbol's calendar from its provider, or None when the provider cannot say."""
        if provider not in self.providers:
            self.providers[provider] = self.make_provider(provider)
        instance = self.providers[provider]
        if instance is None:
            return None
        try:
            return instance.calendar_for(symbol)
        except Exception:  # a symbol the provider cannot place: its holes are unknown, nothing fails
            return None

    def make_provider(self, name: str) -> Provider | None:
        from ktrdr_collect.providers.registry import create_provider

        try:
            return create_provider(name, self.settings.provider_options(name))
        except Exception:  # not installed, bad config: no calendar
            return None

    def close(self) -> None:
        for instance in self.providers.values():
            if instance is not None:
                instance.close()


def scope(data_dir: Path | None, provider: str | None, timeframe: str | None, fmt: str | None,
          symbols: Iterable[str] = ()) -> Scope:
    return Scope(data_dir, provider, timeframe, fmt, symbols or ())


# --- rendering ----------------------------------------------------------------------------------


def when(ts: int | None, timeframe: str) -> str:
    if ts is None:
        return "-"
    from ktrdr_collect.storage.timeframes import format_ts, is_intraday

    text = format_ts(ts)
    return f"{text[:10]} {text[11:16]}" if is_intraday(timeframe) else text[:10]


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "K", "M", "G"):
        if size < 1024 or unit == "G":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    raise AssertionError("unreachable")


def info_json(info: SeriesInfo) -> dict[str, Any]:
    from ktrdr_collect.storage.timeframes import format_ts

    k = info.key
    return {
        "provider": k.provider, "timeframe": k.timeframe, "symbol": k.symbol, "format": k.format,
        "path": info.path,
        "first": format_ts(info.first) if info.first is not None else None,
        "last": format_ts(info.last) if info.last is not None else None,
        "rows": info.rows, "size_bytes": info.size,
        "ranges": [{"start": format_ts(lo), "end": format_ts(hi)} for lo, hi in info.ranges],
        "holes": info.holes,
    }


def print_json_array(items: Iterable[dict[str, Any]]) -> None:
    """A JSON array, one item a line, written as the items come (the C encoder: fast at 10,000)."""
    out = sys.stdout
    out.write("[")
    for n, item in enumerate(items):
        out.write(("," if n else "") + "\n" + json.dumps(item))
    out.write("\n]\n")


def info_row(info: SeriesInfo) -> list[str]:
    tf = info.key.timeframe
    holes = "?" if info.holes is None else f"{info.holes:,}"
    return [info.key.symbol, when(info.first, tf), when(info.last, tf), f"{info.rows:,}", human_size(info.size),
            str(len(info.ranges)), holes, ""]


LIST_COLUMNS = ["SYMBOL", "FIRST", "LAST", "ROWS", "SIZE", "RANGES", "HOLES", ""]
"""The empty last column lets HOLES be right-aligned (a table's last column is never padded)."""


def print_groups(infos: Iterator[SeriesInfo]) -> int:
    """One table per provider, timeframe and format (so that rows fit 80 columns); returns the count."""
    from ktrdr_collect.cli.tables import print_stream_table

    count = 0

    def counted(rows: Iterable[SeriesInfo]) -> Iterator[list[str]]:
        nonlocal count
        for info in rows:
            count += 1
            yield info_row(info)

    for n, (group, rows) in enumerate(itertools.groupby(infos, lambda i: (i.key.provider, i.key.timeframe,
                                                                          i.key.format))):
        provider, timeframe, fmt = group
        print(("\n" if n else "") + clean(f"{provider} {timeframe} ({fmt})"))
        print_stream_table(LIST_COLUMNS, counted(rows), right=("ROWS", "SIZE", "RANGES", "HOLES"),
                           uncut=("SYMBOL",))
    return count


# --- commands -----------------------------------------------------------------------------------


@data_app.command("list")
def list_(symbols: list[str] = SYMBOLS_ARG, provider: str = PROVIDER_OPT, timeframe: str = TIMEFRAME_OPT,
          fmt: str = FORMAT_OPT, data_dir: Path = DATA_DIR_OPT, json_: bool = JSON_OPT) -> int:
    """One row per stored series: first and last bar, rows, size, fetched ranges, holes."""
    from ktrdr_collect.storage.inventory import list_series

    sc = scope(data_dir, provider, timeframe, fmt, symbols)
    try:
        infos = list_series(sc.root, sc.keys_or_error(), sc.calendar_for)
        if json_:
            print_json_array(info_json(i) for i in infos)
            return 0
        count = print_groups(infos)
    finally:
        sc.close()
    if count == 0:
        print(clean(f"No data stored{sc.where()} in {sc.root}"))
    else:
        print()
        print(clean(f"{count:,} series in {sc.root}"))
    return 0


@data_app.command("path")
def path_(symbol: str = typer.Argument(None, help="A symbol: print its file (default: the data folder)."),
          provider: str = PROVIDER_OPT, timeframe: str = TIMEFRAME_OPT, fmt: str = FORMAT_OPT,
          data_dir: Path = DATA_DIR_OPT) -> int:
    """Where data lives: the data folder, a provider's/timeframe's folder, or a series' file."""
    sc = scope(data_dir, provider, timeframe, fmt)
    if symbol is None:
        where = sc.root
        if sc.provider:
            where = where / sc.provider
            if sc.timeframe:
                where = where / sc.timeframe
        print(where)
        print(f"# data_dir from {sc.source}", file=sys.stderr)
        return 0
    from ktrdr_collect.inputs import normalize_symbol
    from ktrdr_collect.storage.inventory import data_path

    keys = sc.keys([normalize_symbol(symbol)])
    if not keys:
        raise InvalidInputError(f"no stored series for {symbol.upper()}{sc.where()} in {sc.root}")
    for key in keys:
        print(data_path(sc.root, key))
    return 0


@data_app.command()
def verify(symbols: list[str] = SYMBOLS_ARG, provider: str = PROVIDER_OPT, timeframe: str = TIMEFRAME_OPT,
           fmt: str = FORMAT_OPT, data_dir: Path = DATA_DIR_OPT, json_: bool = JSON_OPT) -> int:
    """Read every stored bar and check it; exit 3 when something is found.

    Rules: order, duplicates, OHLC, sessions, holes, price-scale breaks, coverage; one line per
    finding naming the series, timestamp and rule. Exit 0 when clean."""
    from ktrdr_collect.storage.verify import verify_series

    sc = scope(data_dir, provider, timeframe, fmt, symbols)
    found = []
    try:
        keys = sc.keys_or_error()
        for key in keys:
            findings = verify_series(sc.root, key, sc.calendar_for(key.provider, key.symbol))
            found += findings
            if not json_:
                for finding in findings:
                    print(clean(finding.line()), flush=True)
    finally:
        sc.close()
    if json_:
        print(json.dumps({"series": len(keys), "findings": [f.to_json() for f in found]}, indent=1))
    else:
        where = len({f.key for f in found})
        print(f"{len(keys):,} series checked: " + (f"{len(found):,} findings in {where:,}" if found
                                                  else "no findings"), file=sys.stderr)
    return FOUND_EXIT if found else 0


@data_app.command()
def erase(
    symbols: list[str] = typer.Argument(..., help="Symbols whose bars to erase."),
    provider: str = typer.Option(..., "-p", "--provider", help="The provider (any case)."),
    timeframe: str = typer.Option(..., "-t", "--timeframe", help="The timeframe."),
    start: str = typer.Option(None, "--start", help="From this date (default: the first bar)."),
    end: str = typer.Option(None, "--end", help="Up to, not including, this date (default: after the last bar)."),
    fmt: str = FORMAT_OPT,
    data_dir: Path = DATA_DIR_OPT,
    dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would be erased."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask (needed when not in a terminal)."),
) -> int:
    """Remove bars and their fetched ranges, so the next start fetches exactly them again."""
    from ktrdr_collect.storage.open import open_store

    sc = scope(data_dir, provider, timeframe, fmt, symbols)
    lo, hi = erase_bounds(start, end)
    keys = sc.keys_or_error()
    stores = {k.format: open_store(k.format, sc.root) for k in keys}
    plan = [(k, erasable(stores[k.format], k, lo, hi)) for k in keys]
    span = describe_span(lo, hi)
    for key, n in plan:
        print(clean(f"{'would erase' if dry_run else 'erase'} {key.label()}: {n:,} bar{'s' if n != 1 else ''} {span}"))
    if dry_run:
        return 0
    if not yes and not confirm(f"Erase {'these' if len(plan) > 1 else 'this'}? The next start fetches them again."):
        print("Nothing erased.", file=sys.stderr)
        return 1
    total = 0
    for key, _ in plan:
        total += stores[key.format].erase(key.provider, key.timeframe, key.symbol, lo, hi)
    print(f"Erased {total:,} bar{'s' if total != 1 else ''} in {len(plan)} series.")
    return 0


def erase_bounds(start: str | None, end: str | None) -> tuple[int | None, int | None]:
    from ktrdr_collect.inputs import check_date, parse_datetime

    lo = int(check_date(parse_datetime(start, "--start"), "--start").timestamp()) if start else None
    hi = int(check_date(parse_datetime(end, "--end"), "--end").timestamp()) if end else None
    if lo is not None and hi is not None and hi <= lo:
        raise InvalidInputError("--end must be after --start")
    return lo, hi


def describe_span(lo: int | None, hi: int | None) -> str:
    from ktrdr_collect.storage.timeframes import format_ts

    if lo is None and hi is None:
        return "(all of them, and the series' fetched ranges)"
    a = format_ts(lo) if lo is not None else "the first bar"
    b = format_ts(hi) if hi is not None else "the last bar (included)"
    return f"from {a} up to {b}"


def erasable(store: Any, key: SeriesKey, lo: int | None, hi: int | None) -> int:
    from ktrdr_collect.storage.series import erase_window

    return int(store.count(key.provider, key.timeframe, key.symbol, [erase_window(lo, hi)]))


def interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def confirm(question: str) -> bool:
    """Ask on the terminal; refuse (an error) when there is none to ask on."""
    if not interactive():
        raise InvalidInputError("data erase asks before erasing: pass --yes when not in a terminal")
    return bool(typer.confirm(question, default=False))


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
