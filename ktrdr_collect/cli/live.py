"""Rendering a job while it runs: Rich bars (terminal), plain lines (pipes, cron), NDJSON, quiet."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from typing import Any, Protocol

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from ktrdr_collect.cli import fmt
from ktrdr_collect.cli.follow import finished_symbols
from ktrdr_collect.cli.public import public, public_symbol
from ktrdr_collect.text import clean

PLAIN_INTERVAL_S = 10.0
JSON_INTERVAL_S = 0.5


class Renderer(Protocol):
    def run(self, statuses: Iterable[dict[str, Any]]) -> dict[str, Any]: ...


class JsonRenderer:
    def __init__(self, out: Any = None) -> None:
        self.out = out or sys.stdout

    def emit(self, event: dict[str, Any]) -> None:
        self.out.write(json.dumps(event) + "\n")
        self.out.flush()

    def run(self, statuses: Iterable[dict[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        last_emit = 0.0
        status: dict[str, Any] = {}
        for status in statuses:
            for entry in finished_symbols(status, seen):
                self.emit({"event": "symbol", "job": status["id"], **public_symbol(entry)})
            now = time.monotonic()
            if now - last_emit >= JSON_INTERVAL_S:
                self.emit({"event": "progress", **public(status)})
                last_emit = now
        self.emit({"event": "finished", **public(status)})
        return status


class PlainRenderer:
    """No control characters: one progress line at most every 10 s, one per finished symbol."""

    def __init__(self, out: Any = None, interval: float = PLAIN_INTERVAL_S) -> None:
        self.out = out or sys.stdout
        self.interval = interval

    def line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def run(self, statuses: Iterable[dict[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        last = time.monotonic()
        status: dict[str, Any] = {}
        for i, status in enumerate(statuses):
            if i == 0:
                self.line(fmt.header_line(status))
            for entry in finished_symbols(status, seen):
                self.line(fmt.symbol_line(entry))
            if time.monotonic() - last >= self.interval and status["status"] in ("running", "paused"):
                self.line(fmt.progress_line(status))
                last = time.monotonic()
        self.line(fmt.summary_line(status))
        return status


class QuietRenderer:
    """Nothing on stdout; failed symbols and errors on stderr."""

    def run(self, statuses: Iterable[dict[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        status: dict[str, Any] = {}
        for status in statuses:
            for entry in finished_symbols(status, seen):
                if entry["status"] == "failed":
                    print(fmt.symbol_line(entry), file=sys.stderr)
        if status.get("error"):
            print(f"Error: {clean(status['error'])}", file=sys.stderr)
        return status


class RichRenderer:
    """One overall bar and one line per active symbol, redrawn from each snapshot."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.progress = Progress(
            TextColumn("{task.description}", style="bold"),
            BarColumn(bar_width=30),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            refresh_per_second=10,
        )
        self.rows: dict[str, TaskID] = {}

    def overall_info(self, st: dict[str, Any]) -> str:
        rate = st["rate_symbols_per_s"]
        state = "" if st["status"] == "running" else f"[yellow]{st['status']}[/] · "
        return (
            f"{state}{st['percent']:5.1f}% · {st['symbols_completed'] + st['symbols_failed']}"
            f"/{st['symbols_total']} symbols · {rate:.2f} sym/s · "
            f"{fmt.plural(st['candles'], 'candle')} · ETA {fmt.duration(st['eta_s'])}"
        )

    def symbol_info(self, e: dict[str, Any]) -> str:
        segment = ""
        if e["segments_total"]:
            segment = f" · segment {min(e['segments_done'] + 1, e['segments_total'])}/{e['segments_total']}"
        return f"{e['stage']}{segment} · {fmt.plural(e['candles'], 'candle')}"

    def update(self, st: dict[str, Any], overall: TaskID, seen: set[str]) -> None:
        p = self.progress
        p.update(overall, completed=st["percent"], info=self.overall_info(st))
        for entry in finished_symbols(st, seen):
            mark = "[green]✓[/]" if entry["status"] == "completed" else "[red]✗[/]"
            p.console.print(f"{mark} {escape(fmt.symbol_line(entry))}")
        active = {e["symbol"]: e for e in st["symbols"] if e["status"] == "running"}
        for symbol in list(self.rows):
            if symbol not in active:
                p.remove_task(self.rows.pop(symbol))
        for symbol, e in active.items():
            if symbol not in self.rows:
                self.rows[symbol] = p.add_task(f"  {symbol}", total=1, info="")
            p.update(self.rows[symbol], total=max(1, e["segments_total"]), completed=e["segments_done"],
                     info=self.symbol_info(e))

    def run(self, statuses: Iterable[dict[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        status: dict[str, Any] = {}
        with self.progress:
            overall = None
            for status in statuses:
                if overall is None:
                    self.console.print(escape(fmt.header_line(status)))
                    overall = self.progress.add_task("Overall", total=100, info="")
                self.update(status, overall, seen)
            for symbol in list(self.rows):
                self.progress.remove_task(self.rows.pop(symbol))
        self.console.print(escape(fmt.summary_line(status)), highlight=False)
        return status


def pick_renderer(json_mode: bool, quiet: bool) -> Renderer:
    if json_mode:
        return JsonRenderer()
    if quiet:
        return QuietRenderer()
    if sys.stdout.isatty():
        return RichRenderer()
    return PlainRenderer()
