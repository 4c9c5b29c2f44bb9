"""Small text formatters shared by every renderer."""

from __future__ import annotations

from typing import Any

from ktrdr_collect.text import clean


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


def day(iso: str | None) -> str:
    return (iso or "")[:10]


def when(iso: str | None) -> str:
    return (iso or "—")[:19].replace("T", " ")


def provider_label(status: dict[str, Any]) -> str:
    label = status["provider"]
    if status.get("synthetic") or label == "demo":
        label += " (synthetic data)"
    return label


def symbols_line(status: dict[str, Any]) -> str:
    return (
        f"{status['symbols_completed']}/{status['symbols_total']} symbols"
        + (f", {status['symbols_failed']} failed" if status["symbols_failed"] else "")
    )


def progress_line(status: dict[str, Any]) -> str:
    """One plain line: what cron logs and pipes get."""
    return (
        f"{status['id']} {status['status']} {status['percent']:.1f}% · {symbols_line(status)} · "
        f"{count(status['candles'])} candles · {count(status['requests'])} requests · "
        f"elapsed {duration(status['elapsed_s'])} · eta {duration(status['eta_s'])}"
    )


def summary_line(status: dict[str, Any]) -> str:
    word = {"completed": "Completed", "failed": "Failed", "cancelled": "Cancelled",
            "interrupted": "Interrupted"}.get(status["status"], status["status"].capitalize())
    if status["status"] == "completed" and status["symbols_failed"]:
        word = "Completed with failures"
    line = (
        f"{word}: job {status['id']} · {symbols_line(status)} · {count(status['candles'])} candles · "
        f"{count(status['requests'])} requests · {duration(status['elapsed_s'])}"
    )
    if status["status"] == "completed" and status["requests"] == 0 and not status["symbols_failed"]:
        line += " · data already up to date"
    if status.get("error"):
        line += f" · {status['error']}"
    if status["status"] == "interrupted":
        line += f" · `collect resume {status['id']}` continues it"
    return clean(line)


def symbol_line(entry: dict[str, Any]) -> str:
    if entry["status"] == "completed":
        return f"{entry['symbol']}: completed, {count(entry['candles'])} candles"
    return clean(f"{entry['symbol']}: {entry['status']}: {entry.get('error') or 'no reason given'}")


def header_line(status: dict[str, Any]) -> str:
    name = f" ({status['name']})" if status.get("name") else ""
    return clean(
        f"Job {status['id']}{name} · {provider_label(status)} · {status['timeframe']} · "
        f"{day(status['start'])} → {day(status['end'])} · {status['symbols_total']} symbols"
    )
