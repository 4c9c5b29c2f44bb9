"""Small text formatters shared by every renderer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ktrdr_collect.text import clean

if TYPE_CHECKING:
    from ktrdr_collect.jobs.record import JobState, SymbolEntry


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = max(0.0, float(seconds))
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def count(n: int | float) -> str:
    return f"{int(n):,}"


def plural(n: int | float, word: str) -> str:
    """`1 symbol`, `2 symbols`, `1,000 candles`."""
    return f"{count(n)} {word}{'' if int(n) == 1 else 's'}"


def day(iso: str | None) -> str:
    return (iso or "")[:10]


def when(iso: str | None) -> str:
    return (iso or "—")[:19].replace("T", " ")


def when_utc(iso: str | None) -> str:
    """`2024-01-02 14:30:00 UTC` (every time we show is UTC), or `—`."""
    return when(iso) + " UTC" if iso else "—"


def when_short(iso: str | None, year: int) -> str:
    """A time in 11 characters for tables: `11-30 13:23` in `year`, `2023-11-30` before it."""
    if not iso:
        return "—"
    if iso[:4] == str(year):
        return iso[5:16].replace("T", " ")
    return iso[:10]


def provider_label(status: JobState) -> str:
    label = status.provider
    if label == "demo" or status.synthetic:
        label += " (synthetic data)"
    return label


def units(status: JobState, n: int) -> str:
    """`3 symbols`, or `6 series` in a job of several timeframes (its units are pairs)."""
    return f"{count(n)} series" if status.several else plural(n, "symbol")


def symbols_line(status: JobState) -> str:
    return (
        f"{status.symbols_completed}/{units(status, status.symbols_total)}"
        + (f", {status.symbols_failed} failed" if status.symbols_failed else "")
    )


def progress_line(status: JobState) -> str:
    """One plain line: what cron logs and pipes get."""
    return (
        f"{status.id} {status_word(status)} {status.percent:.1f}% · {symbols_line(status)} · "
        f"{plural(status.candles, 'candle')} · {plural(status.requests, 'request')} · "
        f"elapsed {duration(status.elapsed_s)} · eta {eta(status)}"
    )


def status_word(status: JobState) -> str:
    """The status, with the health of a job still going when it is not `healthy` (`running,
    degraded`); an ended job's status says how it went."""
    word = status.health["word"] if status.health else "healthy"
    return status.status if word == "healthy" or status.over else f"{status.status}, {word}"


def eta(status: JobState) -> str:
    """The ETA as a reader should take it: `paused` while paused, `—` once the job is over."""
    if status.status == "paused":
        return "paused"
    if status.over:
        return "—"
    return duration(status.eta_s)


def summary_line(status: JobState) -> str:
    word = {"completed": "Completed", "failed": "Failed", "cancelled": "Cancelled",
            "interrupted": "Interrupted"}.get(status.status, status.status.capitalize())
    if status.status == "completed" and status.symbols_failed:
        word = "Completed with failures"
    line = (
        f"{word}: job {status.id} · {symbols_line(status)} · {plural(status.candles, 'candle')} · "
        f"{plural(status.requests, 'request')} · {duration(status.elapsed_s)}"
    )
    if status.status == "completed" and status.requests == 0 and not status.symbols_failed:
        line += " · data already up to date"
    if status.error:
        line += f" · {status.error}"
    if status.status == "interrupted":
        line += f" · `collect resume {status.id}` continues it"
    return clean(line)


def symbol_line(entry: SymbolEntry, several: bool = False) -> str:
    """`AAPL: completed, 42 candles` (`AAPL 1h: ...` in a job of several timeframes)."""
    name = entry.name(several)
    if entry.status == "completed":
        return f"{name}: completed, {plural(entry.candles, 'candle')}"
    if not entry.error and entry.label != entry.status:
        return f"{name}: {entry.label}"
    return clean(f"{name}: {entry.label}: {entry.error or 'no reason given'}")


def header_line(status: JobState) -> str:
    name = f" ({status.name})" if status.name else ""
    return clean(
        f"Job {status.id}{name} · {provider_label(status)} · {status.timeframes_text} · "
        f"{day(status.start)} → {day(status.end)} · {units(status, status.symbols_total)}"
    )
