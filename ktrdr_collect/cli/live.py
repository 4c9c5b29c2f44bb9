"""Rendering a job while it runs: Rich bars (terminal), plain lines (pipes, cron), NDJSON, quiet."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from ktrdr_collect.cli import fmt
from ktrdr_collect.cli.follow import finished_symbols
from ktrdr_collect.text import clean

if TYPE_CHECKING:
    from ktrdr_collect.jobs.record import JobState, SymbolEntry

PLAIN_INTERVAL_S = 10.0
JSON_INTERVAL_S = 0.5


class Renderer(Protocol):
    def run(self, statuses: Iterable[JobState]) -> JobState: ...


class JsonRenderer:
    def __init__(self, out: Any = None) -> None:
        self.out = out or sys.stdout

    def emit(self, event: dict[str, Any]) -> None:
        self.out.write(json.dumps(event) + "\n")
        self.out.flush()

    def run(self, statuses: Iterable[JobState]) -> JobState:
        seen: set[str] = set()
        last_emit = 0.0
        status = None
        for status in statuses:
            for entry in finished_symbols(status, seen):
                self.emit({"event": "symbol", "job": status.id, **entry.public()})
            now = time.monotonic()
            if now - last_emit >= JSON_INTERVAL_S:
                self.emit({"event": "progress", **status.public()})
                last_emit = now
        assert status is not None, "follow() yields at least once"
        self.emit({"event": "finished", **status.public()})
        return status


class PlainRenderer:
    """No control characters: one progress line at most every 10 s, one per finished symbol."""

    def __init__(self, out: Any = None, interval: float = PLAIN_INTERVAL_S) -> None:
        self.out = out or sys.stdout
        self.interval = interval

    def line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def run(self, statuses: Iterable[JobState]) -> JobState:
        seen: set[str] = set()
        last = time.monotonic()
        status = None
        for i, status in enumerate(statuses):
            if i == 0:
                self.line(fmt.header_line(status))
            for entry in finished_symbols(status, seen):
                self.line(fmt.symbol_line(entry, status.several))
            if time.monotonic() - last >= self.interval and status.status in ("running", "paused"):
                self.line(fmt.progress_line(status))
                last = time.monotonic()
        assert status is not None, "follow() yields at least once"
        self.line(fmt.summary_line(status))
        return status


class QuietRenderer:
    """Nothing on stdout; failed symbols and errors on stderr."""

    def run(self, statuses: Iterable[JobState]) -> JobState:
        seen: set[str] = set()
        status = None
        for status in statuses:
            for entry in finished_symbols(status, seen):
                if entry.status == "failed":
                    print(fmt.symbol_line(entry, status.several), file=sys.stderr)
        assert status is not None, "follow() yields at least once"
        if status.error:
            print(f"Error: {clean(status.error)}", file=sys.stderr)
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

    def overall_info(self, st: JobState) -> str:
        state = "" if st.status == "running" else f"[yellow]{st.status}[/] · "
        word = st.health["word"] if st.health else "healthy"
        if word != "healthy":
            state += f"[{'red' if word == 'struggling' else 'yellow'}]{word}[/] · "
        trouble = "".join(f" · [yellow]{text}[/]" for n, text in (
            (st.errors_count, fmt.plural(st.errors_count, "error")),
            (st.throttled, f"{fmt.count(st.throttled)} throttled"),
        ) if n)
        rate = "" if st.over or st.status == "paused" else f" · {st.rate_symbols_per_s:.2f} sym/s"
        return (
            f"{state}{st.percent:5.1f}% · {st.symbols_completed + st.symbols_failed}"
            f"/{st.symbols_total} symbols{rate} · {fmt.plural(st.candles, 'candle')}{trouble} · ETA {fmt.eta(st)}"
        )

    def symbol_info(self, e: SymbolEntry) -> str:
        segment = ""
        if e.segments_total:
            segment = f" · segment {min(e.segments_done + 1, e.segments_total)}/{e.segments_total}"
        return f"{e.stage_label}{segment} · {fmt.plural(e.candles, 'candle')}"

    def update(self, st: JobState, overall: TaskID, seen: set[str]) -> None:
        p = self.progress
        p.update(overall, completed=st.percent, info=self.overall_info(st))
        for entry in finished_symbols(st, seen):
            mark = "[green]✓[/]" if entry.status == "completed" else "[red]✗[/]"
            p.console.print(f"{mark} {escape(fmt.symbol_line(entry, st.several))}")
        active = {e.name(st.several): e for e in st.symbols if e.status == "running"}
        for symbol in list(self.rows):
            if symbol not in active:
                p.remove_task(self.rows.pop(symbol))
        for symbol, e in active.items():
            if symbol not in self.rows:
                self.rows[symbol] = p.add_task(f"  {symbol}", total=1, info="")
            p.update(self.rows[symbol], total=max(1, e.segments_total), completed=e.segments_done,
                     info=escape(self.symbol_info(e)))

    def run(self, statuses: Iterable[JobState]) -> JobState:
        seen: set[str] = set()
        status = None
        with self.progress:
            overall = None
            for status in statuses:
                if overall is None:
                    self.console.print(escape(fmt.header_line(status)))
                    overall = self.progress.add_task("Overall", total=100, info="")
                self.update(status, overall, seen)
            for symbol in list(self.rows):
                self.progress.remove_task(self.rows.pop(symbol))
            if status is not None and overall is not None:  # the bar's last word is the job's end
                self.progress.update(overall, info=self.overall_info(status))
        assert status is not None, "follow() yields at least once"
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
