"""Pacing across hosts: the sliding-window pacer in a real redis-server (tests/services.py)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ktrdr_collect.providers.pacing import MARGIN, SharedPacer, Sharing, configured_sharing, pacer_for
from ktrdr_collect.providers.redis_pacing import (
    Booking,
    RedisPacer,
    budget_key,
    credential_id,
    credential_of,
    safe_url,
)
from tests.conftest import REPO
from tests.services import free_port, need_redis_server, start_redis


def no_sleep(seconds: float) -> bool:
    return True


def redis_client(url: str):  # type: ignore[no-untyped-def]
    import redis

    return redis.Redis.from_url(url)


def test_bookings_fill_the_window_then_wait_for_it(redis_url: str) -> None:
    pacer = RedisPacer(redis_url, "t:window", [(5, 1.0)])
    answers = [pacer.delay(no_sleep) for _ in range(8)]
    slots = [booking for _, booking in answers if booking is not None]  # type: ignore[misc]
    assert len(slots) == 8
    assert slots[4] - slots[0] < 0.5  # five fit in the window at once
    for i in range(5, 8):  # the sixth waits until the first leaves the window, plus the margin
        assert slots[i] >= slots[i - 5] + 1.0 * (1 + MARGIN) - 1e-6
    assert all(isinstance(s, Booking) for s in slots)


def test_spacing_spreads_requests(redis_url: str) -> None:
    pacer = RedisPacer(redis_url, "t:spacing", [(10, 1.0)], spacing=0.1)
    slots = [pacer.delay(no_sleep)[1] for _ in range(4)]  # type: ignore[index]
    gaps = [b - a for a, b in zip(slots, slots[1:], strict=False)]
    assert all(g >= 0.09 - 1e-6 for g in gaps), gaps


def test_release_gives_the_slot_back(redis_url: str) -> None:
    pacer = RedisPacer(redis_url, "t:release", [(2, 60.0)])
    _, first = pacer.delay(no_sleep)  # type: ignore[misc]
    _, second = pacer.delay(no_sleep)  # type: ignore[misc]
    delay, third = pacer.delay(no_sleep)  # type: ignore[misc]
    assert delay > 50  # the window is full for a minute
    pacer.release(third)
    pacer.release(second)
    delay, _ = pacer.delay(no_sleep)  # type: ignore[misc]
    assert delay < 1
    assert redis_client(redis_url).zcard("t:release") == 2


def test_correct_moves_a_stamp_to_when_it_was_sent(redis_url: str) -> None:
    pacer = RedisPacer(redis_url, "t:correct", [(1, 30.0)])
    booking = pacer.wait_turn(no_sleep)
    assert booking is not None
    pacer.correct(booking, pacer.host_clock() + 5.0)  # held up 5 s before it left
    score = redis_client(redis_url).zscore("t:correct", booking.member)
    assert score == pytest.approx(booking + 5.0, abs=0.5)


def test_wait_turn_interrupted_gives_the_booking_back(redis_url: str) -> None:
    pacer = RedisPacer(redis_url, "t:interrupt", [(1, 60.0)])
    assert pacer.wait_turn(no_sleep) is not None
    asked: list[float] = []
    assert pacer.wait_turn(lambda s: asked.append(s) is not None) is None  # paused while waiting
    assert asked and asked[0] > 50
    assert redis_client(redis_url).zcard("t:interrupt") == 1


def test_a_lost_log_is_put_back_by_the_hosts_that_sent(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    pacer = RedisPacer(redis_url, "t:lost", [(3, 60.0)])
    for _ in range(3):
        assert pacer.wait_turn(no_sleep) is not None
    redis_client(redis_url).flushdb()  # Redis restarted without persistence
    with caplog.at_level(logging.WARNING, logger="ktrdr_collect.pacing"):
        delay, _ = pacer.delay(no_sleep)  # type: ignore[misc]
    assert delay > 50  # the provider still counts those three: the window stays full
    assert "was lost" in caplog.text


def test_redis_down_waits_and_says_so_never_unpaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Nothing answers on the port: wait_turn waits (asking `sleep`), logs why, and gives no slot
    until Redis is there; then it goes on."""
    need_redis_server()
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    pacer = RedisPacer(url, "t:down", [(5, 1.0)])
    servers = []
    waits: list[float] = []

    def sleep(seconds: float) -> bool:
        waits.append(seconds)
        if len(waits) == 3:  # Redis comes up while the request waits
            servers.append(start_redis(tmp_path, port))
        return True

    try:
        with caplog.at_level(logging.WARNING, logger="ktrdr_collect.pacing"):
            booking = pacer.wait_turn(sleep)
    finally:
        for server in servers:
            server.stop()
    assert booking is not None and len(waits) >= 3
    assert "does not answer" in caplog.text and "none goes out unpaced" in caplog.text
    assert "answers again" in caplog.text


def test_redis_down_and_cancelled_returns_none(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("redis")
    pacer = RedisPacer(f"redis://127.0.0.1:{free_port()}/0", "t:down2", [(5, 1.0)])
    with caplog.at_level(logging.WARNING, logger="ktrdr_collect.pacing"):
        assert pacer.wait_turn(lambda s: False) is None
    assert pacer.waiting_for_redis and "does not answer" in caplog.text


# -- keys ------------------------------------------------------------------------------------


def test_keys_carry_a_hash_of_the_credential_never_the_secret() -> None:
    a = credential_id("binance", {"api_key": "s3cret-key"})
    assert a and "s3cret" not in a and a == credential_id("binance", {"api_key": "s3cret-key"})
    assert a != credential_id("binance", {"api_key": "other"})
    assert credential_id("binance", {}) == "" and credential_id("binance", {"api_key": ""}) == ""
    assert budget_key("ib", a) == f"ktrdr-collect:pacing:ib:{a}"
    assert budget_key("binance", "", "host-1") == "ktrdr-collect:pacing:binance:-:host=host-1"


def test_credential_of_a_provider_is_what_public_options_leave_out() -> None:
    class Fake:
        name = "fake"
        options = {"base_url": "https://user:tok@example.invalid", "api_key": "k", "timeout_s": 3}

        def public_options(self) -> dict[str, object]:
            return {"timeout_s": 3}

    key = credential_of(Fake())
    assert key == credential_id("fake", {"base_url": "https://user:tok@example.invalid", "api_key": "k"})
    from ktrdr_collect.providers.demo import DemoProvider

    assert credential_of(DemoProvider({})) == ""


def test_pacer_for_picks_redis_with_a_url_and_files_without(tmp_path: Path) -> None:
    url = "redis://127.0.0.1:1/0"
    assert isinstance(pacer_for("demo", 5.0, folder=tmp_path), SharedPacer)  # unchanged without Redis
    assert isinstance(pacer_for("demo", 5.0, sharing=Sharing()), SharedPacer)
    shared = pacer_for("demo", 5.0, sharing=Sharing(url), credential="abc")
    assert isinstance(shared, RedisPacer) and shared.key == "ktrdr-collect:pacing:demo:abc"
    assert shared.spacing == pytest.approx(0.9 / 5.0) and shared.windows == [(5, 1.0)]
    per_host = pacer_for("binance", 10.0, sharing=Sharing(url, frozenset({"binance"}), host="h1"))
    assert isinstance(per_host, RedisPacer) and per_host.key.endswith(":-:host=h1")
    ib = pacer_for("ib", None, [(60, 600.0)], sharing=Sharing(url, frozenset({"binance"})))
    assert isinstance(ib, RedisPacer) and ib.key == "ktrdr-collect:pacing:ib:-" and ib.spacing == 0
    assert pacer_for("demo", None, sharing=Sharing(url)) is None


def test_the_config_and_environment_choose_redis(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert configured_sharing() == Sharing()
    monkeypatch.setenv("KTRDR_COLLECT_PACING_URL", "redis://10.0.0.5:6379/2")
    monkeypatch.setenv("KTRDR_COLLECT_PACING_PER_HOST", "Binance, yahoo")
    assert configured_sharing() == Sharing("redis://10.0.0.5:6379/2", frozenset({"binance", "yahoo"}))
    pacer = pacer_for("demo", 2.0)
    assert isinstance(pacer, RedisPacer) and pacer.url == "redis://10.0.0.5:6379/2"


def test_logs_never_show_the_redis_password() -> None:
    assert safe_url("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert safe_url("redis://user:pw@host/0") == "redis://user:***@host/0"
    assert safe_url("redis://host:6379/0") == "redis://host:6379/0"
    assert "pw" not in repr(RedisPacer("redis://:pw@host:6379/0", "k", [(1, 1.0)]))


def test_the_engine_paces_in_redis_when_configured(home: Path, redis_url: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from ktrdr_collect.engine.engine import ProcessingEngine
    from ktrdr_collect.providers.demo import DemoProvider
    from ktrdr_collect.storage.csv_store import CsvStore

    monkeypatch.setenv("KTRDR_COLLECT_PACING_URL", redis_url)
    provider = DemoProvider({"latency_ms": 0, "max_bars": 5, "rate_limit": 20})
    engine = ProcessingEngine(provider, CsvStore(home / "data"), workers=4)
    assert isinstance(engine.pacer, RedisPacer)
    symbols = ["AAA", "BBB", "CCC"]
    tracker = engine.new_tracker(symbols, "1d")
    results = engine.process_batch(symbols, "1d", start="2024-01-01", end="2024-04-01", tracker=tracker)
    assert all(r.ok for r in results) and sum(r.requests for r in results) > 30
    assert tracker.snapshot().throttled == 0  # the demo server refuses beyond 20/s: none refused
    assert redis_client(redis_url).exists("ktrdr-collect:pacing:demo:-")


# -- across processes --------------------------------------------------------------------------

WORKER = textwrap.dedent("""
    import json, sys, time
    from ktrdr_collect.providers.redis_pacing import RedisPacer
    url, count = sys.argv[1], int(sys.argv[2])
    pacer = RedisPacer(url, "t:processes", [(4, 0.5)])
    client = pacer._client or __import__("redis").Redis.from_url(url)
    sys.stdout.write("ready\\n"); sys.stdout.flush()
    sys.stdin.readline()  # start together
    went = []
    for _ in range(count):
        slot = pacer.wait_turn(lambda s: time.sleep(s) is None)
        sec, usec = client.time()
        went.append([float(slot), sec + usec / 1e6])
    print(json.dumps(went))
""")


def test_two_processes_sharing_one_budget_never_exceed_it(redis_url: str) -> None:
    """Two real processes, one budget of 4 requests in any 0.5 s: the slots they are given never
    put more than 4 in any 0.5 s span, and together they take as long as the budget says."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, redis_url, "12"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outputs = [p.communicate(timeout=60)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs)
    went = [row for out in outputs for row in json.loads(out.strip().splitlines()[-1])]
    slots = sorted(slot for slot, _ in went)
    assert len(slots) == 24
    for i in range(len(slots) - 4):  # any 5 consecutive slots span more than the window
        assert slots[i + 4] - slots[i] >= 0.5 - 1e-6, (i, slots[i:i + 5])
    assert all(sent >= slot - 0.002 for slot, sent in went)  # nobody went before its slot
    assert slots[-1] - slots[0] >= (24 // 4 - 1) * 0.5  # paced: 24 requests need 5 full windows


def test_ci_installs_redis_server_when_missing() -> None:
    script = (REPO / ".ci" / "run").read_text()
    install = script.index("apt-get install -y -qq redis-server")
    assert script.index("if ! command -v redis-server") < install < script.index(".venv/bin/pytest -q")
    assert script.index("pip install -q -e '.[test]'") > install  # the other steps are still there
    assert subprocess.run(["bash", "-n", str(REPO / ".ci" / "run")]).returncode == 0


def test_every_key_expires_after_its_window(redis_url: str) -> None:
    pacer = RedisPacer(redis_url, "t:ttl", [(2, 30.0)])
    for _ in range(3):
        pacer.delay(no_sleep)  # the third books 30.6 s ahead
    client = redis_client(redis_url)
    horizon_ms = 30.0 * (1 + MARGIN) * 1000
    for key in ("t:ttl", "t:ttl:epoch"):
        ttl = client.pttl(key)
        assert horizon_ms + 25_000 < ttl <= 2 * horizon_ms + 2_000, (key, ttl)


def test_the_engine_keys_its_budget_by_a_hash_of_the_credential(home: Path) -> None:
    from ktrdr_collect.engine.engine import ProcessingEngine
    from ktrdr_collect.providers.base import OptionSpec
    from ktrdr_collect.providers.demo import DemoProvider
    from ktrdr_collect.storage.csv_store import CsvStore

    class KeyedDemo(DemoProvider):
        name = "keyed"
        option_specs = (*DemoProvider.option_specs, OptionSpec("api_key", str, "", "account key", secret=True))

    url = "redis://127.0.0.1:1/0"
    engine = ProcessingEngine(KeyedDemo({"rate_limit": 5, "api_key": "k-123"}), CsvStore(home / "data"),
                              sharing=Sharing(url))
    pacer = engine.pacer_of("1d")
    assert isinstance(pacer, RedisPacer)
    assert pacer.key == budget_key("keyed", credential_id("keyed", {"api_key": "k-123"})) and "k-123" not in pacer.key
    other = ProcessingEngine(KeyedDemo({"rate_limit": 5, "api_key": "k-456"}), CsvStore(home / "data"),
                             sharing=Sharing(url))
    assert other.pacer.key != pacer.key  # type: ignore[union-attr]
    files = ProcessingEngine(KeyedDemo({"rate_limit": 5}), CsvStore(home / "data"), sharing=Sharing())
    assert isinstance(files.pacer, SharedPacer)  # without a URL: this machine's file, as before


def test_stamp_counts_a_request_now_in_both_pacers(tmp_path: Path, redis_url: str) -> None:
    """`stamp()` (IB's second count for BID_ASK) fills the window like a request, without waiting."""
    now = [1_000.0]
    files = SharedPacer(tmp_path / "p.json", [(2, 60.0)], clock=lambda: now[0])
    files.stamp()
    files.stamp()
    assert files.delay()[0] == pytest.approx(60.0 * (1 + MARGIN))
    shared = RedisPacer(redis_url, "t:stamp", [(2, 60.0)])
    shared.stamp()
    shared.stamp()
    delay, _ = shared.delay(no_sleep)  # type: ignore[misc]
    assert delay > 55


def test_a_series_waiting_for_redis_shows_it_then_goes_on(home: Path, tmp_path: Path) -> None:
    """Redis down when the batch starts: the series stays at stage `waiting` (for `Redis (pacing)`)
    without a request; once Redis answers, it goes on and completes."""
    import threading

    from ktrdr_collect.engine.engine import ProcessingEngine
    from ktrdr_collect.providers.demo import DemoProvider
    from ktrdr_collect.storage.csv_store import CsvStore

    need_redis_server()
    port = free_port()
    engine = ProcessingEngine(DemoProvider({"latency_ms": 0, "rate_limit": 50}), CsvStore(home / "data"),
                              sharing=Sharing(f"redis://127.0.0.1:{port}/0"), executor="threads")
    tracker = engine.new_tracker(["AAA"], "1d")
    done = threading.Event()
    runner = threading.Thread(target=lambda: (engine.process_batch(
        ["AAA"], "1d", start="2024-01-01", end="2024-02-01", tracker=tracker), done.set()))
    runner.start()
    server = None
    try:
        deadline = time.monotonic() + 20
        while (sp := tracker.snapshot_symbol("AAA")).stage != "waiting" and time.monotonic() < deadline:
            time.sleep(0.02)  # polling for the state, with a deadline
        assert sp.stage == "waiting" and sp.waiting_for == "Redis (pacing)" and sp.requests == 0
        server = start_redis(tmp_path, port)
        assert done.wait(30)
    finally:
        if server is None:
            server = start_redis(tmp_path, port)  # let the batch finish, whatever failed
        runner.join(30)
        server.stop()
    final = tracker.snapshot_symbol("AAA")
    assert final.status == "completed" and final.stage == "done" and final.requests > 0
