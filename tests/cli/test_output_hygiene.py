"""Output hygiene (issue 15): control characters from providers never reach a terminal or a log,
and credentials in URLs or options are never stored or shown. Cleaned once where provider text
enters a job (ProviderError, the log writers) and again wherever the CLI renders."""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ktrdr_collect.cli.live import JsonRenderer, PlainRenderer, QuietRenderer, RichRenderer
from ktrdr_collect.cli.main import app
from ktrdr_collect.engine.cancellation import CancellationToken
from ktrdr_collect.jobs.folders import LOG_FILE
from ktrdr_collect.jobs.record import JobState
from ktrdr_collect.providers.base import PermanentError, ProviderError, TransientError
from ktrdr_collect.providers.binance import BinanceProvider
from ktrdr_collect.providers.http import get_json
from ktrdr_collect.text import CleanFormatter, escape_controls, redact
from tests.providers.fake_apis import Handler, Request, Running, serve, status

OSC52 = "\x1b]52;c;aGFjaw==\x07"  # set the clipboard
CLEAR = "\x1b[2J"  # clear the screen
HOSTILE = f"Illegal characters {OSC52}{CLEAR}\x9b31m\r\x00done"
SECRET = "s3cr3tT0ken"
WINDOW = ["--start", "2024-01-01", "--end", "2024-01-10"]


def run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def assert_clean(text: str | bytes, json_escapes: bool = True) -> None:
    """No control character but newlines, no token; with `json_escapes`, not even as the JSON
    escapes `json.dumps` writes for a raw one (an error body's own JSON text may hold them)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    assert SECRET not in text, text
    assert not [c for c in text if (ord(c) < 32 and c != "\n") or 0x7F <= ord(c) <= 0x9F], repr(text)
    if json_escapes:
        assert "\\u001b" not in text and "\\u0007" not in text, text


# --- the helper -----------------------------------------------------------------------------------


def test_controls_are_escaped_visibly() -> None:
    assert escape_controls(HOSTILE) == "Illegal characters \\x1b]52;c;aGFjaw==\\x07\\x1b[2J\\x9b31m\\r\\x00done"
    assert escape_controls("a\nb\tc") == "a\\nb\\tc"
    assert escape_controls("a\nb\x1b", keep_newlines=True) == "a\nb\\x1b"
    assert escape_controls("plain · text → ünïcode") == "plain · text → ünïcode"


@pytest.mark.parametrize("raw,shown", [
    (f"https://user:{SECRET}@host/x", "https://***@host/x"),
    (f"http://{SECRET}@127.0.0.1:80", "http://***@127.0.0.1:80"),
    (f"GET https://h/api?apikey={SECRET}&symbol=X", "GET https://h/api?apikey=***&symbol=X"),
    (f"?api_key={SECRET}", "?api_key=***"),
    (f"token={SECRET} secret={SECRET} password={SECRET} X-MBX-APIKEY={SECRET}",
     "token=*** secret=*** password=*** X-MBX-APIKEY=***"),
    (f'{{"access_token": "{SECRET}", "n": 1}}', '{"access_token": "***", "n": 1}'),
    (f"Authorization: Bearer {SECRET}", "Authorization: Bearer ***"),
    ("https://api.binance.com/api/v3/klines?symbol=BTCUSDT&limit=1000", None),
    ("unknown symbol BAD (demo fail_symbols)", None),
])
def test_credentials_are_redacted(raw: str, shown: str | None) -> None:
    assert redact(raw) == (raw if shown is None else shown)
    assert redact(redact(raw)) == redact(raw)  # idempotent: cleaning twice changes nothing


def test_provider_errors_are_clean_where_they_are_made() -> None:
    e = PermanentError(f"refused: https://u:{SECRET}@h/?apikey={SECRET} {HOSTILE}")
    assert_clean(str(e))
    assert "\\x1b]52" in str(e)  # still readable


def test_the_log_formatter_cleans_messages_arguments_and_tracebacks() -> None:
    formatter = CleanFormatter("%(levelname)s %(message)s")
    try:
        raise ValueError(f"boom {CLEAR} token={SECRET}")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "%s: failed: %s", ("AAPL", HOSTILE),
                                   sys.exc_info())
    text = formatter.format(record)
    assert_clean(text)
    assert text.startswith("ERROR AAPL: failed: Illegal") and "\nTraceback" in text  # lines kept


# --- where provider text enters: the HTTP client ------------------------------------------------


@pytest.fixture
def hostile_api() -> Iterator[Running]:
    def route(h: Handler, r: Request) -> None:  # echoes the request, as some APIs do
        h.send_json(400, {"code": -1100, "msg": f"{HOSTILE} for {h.path}"})

    yield from serve(route)


def test_http_errors_echoing_urls_are_redacted(hostile_api: Running) -> None:
    with pytest.raises(PermanentError) as refused:
        get_json(f"{hostile_api.url}/x", {"apikey": SECRET}, timeout=5)
    assert_clean(str(refused.value), json_escapes=False)  # the body's JSON text, shown as it came
    hostile_api.queue(status(200, text=f"<html>{OSC52}</html>"))
    with pytest.raises(TransientError) as malformed:
        get_json(f"{hostile_api.url.replace('://', f'://u:{SECRET}@')}/x", timeout=5)
    assert_clean(str(malformed.value))


def test_a_provider_error_body_is_clean_for_the_engine(hostile_api: Running) -> None:
    p = BinanceProvider({"base_url": f"{hostile_api.url}/m?apikey={SECRET}", "rate_limit": 0})
    with pytest.raises(ProviderError) as refused:
        p.fetch("BTC/USDT", "1d", 1_704_067_200, 1_704_067_200 + 86400, CancellationToken())
    assert_clean(str(refused.value))
    assert "base_url" not in p.public_options()  # never stored with a job


# --- a whole job: state, index, logs and every command ------------------------------------------


def failing_job(home: Path, api: Running) -> str:
    """A binance job whose mirror URL (from the config) carries a token and whose errors are hostile."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[providers.binance]\nbase_url = "{api.url}/mirror?apikey={SECRET}"\nrate_limit = 0\n')
    r = run("start", "BTC/USDT", "-p", "binance", *WINDOW)
    assert r.exit_code == 4, r.output
    assert_clean(r.stdout + r.stderr)
    assert "\\x1b]52" in r.stdout  # the provider's words are there, visibly escaped
    return json.loads(run("status", "last", "--json").stdout)["id"]


def test_a_hostile_provider_reaches_no_file_and_no_command(home: Path, hostile_api: Running) -> None:
    job_id = failing_job(home, hostile_api)
    folder = home / "jobs" / job_id
    spec = json.loads((folder / "job.json").read_text())
    assert "base_url" not in spec["options"]
    assert_clean((folder / "job.json").read_bytes())
    assert_clean((folder / "state.json").read_bytes())
    assert_clean((folder / LOG_FILE).read_bytes())
    for args in (["status", job_id], ["status", job_id, "--json"], ["show", job_id], ["show", job_id, "--json"],
                 ["logs", job_id], ["list"], ["list", "--json"], ["stats"], ["stats", "--json"],
                 ["config", "show"], ["config", "show", "--json"]):
        r = run(*args)
        assert r.exit_code == 0, (args, r.output)
        assert_clean(r.stdout + r.stderr)
    with sqlite3.connect(home / "jobs/index.sqlite") as index:
        rows = index.execute("SELECT summary FROM jobs UNION ALL SELECT error FROM job_symbols").fetchall()
    assert rows and all(SECRET not in (row[0] or "") and "\x1b" not in (row[0] or "") for row in rows)


def test_credentials_cannot_be_passed_with_o(home: Path) -> None:
    r = run("start", "BTC/USDT", "-p", "binance", *WINDOW, "-o", f"base_url=https://u:{SECRET}@mirror.example")
    assert r.exit_code == 1 and r.stderr.startswith("Error: option base_url of provider binance carries credentials")
    assert SECRET not in r.stderr and not (home / "jobs").exists()


# --- rendering: a state or log that holds hostile text anyway (older versions, a hand edit) -------


def plant(home: Path) -> str:
    """A finished demo job whose state and log hold raw control characters and tokens."""
    assert run("start", "AAPL", "BAD", *WINDOW, "-o", "latency_ms=0", "-o", "fail_symbols=BAD", "-q").exit_code == 3
    job_id = json.loads(run("status", "last", "--json").stdout)["id"]
    folder = home / "jobs" / job_id
    state = json.loads((folder / "state.json").read_text())
    state["name"] = f"nightly{CLEAR}"
    state["error"] = f"{HOSTILE} https://u:{SECRET}@h"
    state["options"] = {"base_url": f"https://h/?apikey={SECRET}"}  # where older versions kept options
    state["symbols"][1]["error"] = f"{HOSTILE} token={SECRET}"
    (folder / "state.json").write_text(json.dumps(state))
    with open(folder / LOG_FILE, "a", encoding="utf-8") as log:
        log.write(f"2024-01-01T00:00:00.000Z ERROR   BAD: failed: {HOSTILE} ?apikey={SECRET}\n")
    (home / "jobs/index.sqlite").unlink(missing_ok=True)  # it cached the job before the edit
    return job_id


def test_every_command_renders_hostile_state_cleanly(home: Path) -> None:
    job_id = plant(home)
    for args in (["status", job_id], ["status", job_id, "--json"], ["show", job_id], ["show", job_id, "--json"],
                 ["logs", job_id], ["list"], ["list", "--json"], ["stats"], ["stats", "--json"]):
        r = run(*args)
        assert r.exit_code == 0, (args, r.output)
        assert_clean(r.stdout + r.stderr)
    assert "\\x1b]52" in run("show", job_id).stdout


def hostile_status(home: Path) -> JobState:
    job_id = plant(home)
    return JobState.from_json(json.loads((home / "jobs" / job_id / "state.json").read_text()))


def test_live_renderers_print_no_control_characters(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    st = hostile_status(home)
    plain, events = io.StringIO(), io.StringIO()
    PlainRenderer(out=plain, interval=0).run([st, st])
    assert_clean(plain.getvalue())
    JsonRenderer(out=events).run([st])
    assert_clean(events.getvalue())
    QuietRenderer().run([st])
    assert_clean(capsys.readouterr().err)
    from rich.console import Console

    screen = io.StringIO()
    RichRenderer(Console(file=screen, force_terminal=True, width=200)).run([st])
    shown = screen.getvalue()  # Rich draws with its own colour codes, never the provider's
    assert OSC52 not in shown and CLEAR not in shown and "\x07" not in shown and SECRET not in shown
