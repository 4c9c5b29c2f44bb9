import threading
import time
from pathlib import Path

import pytest

from ktrdr_collect.engine.cancellation import CancellationToken
from ktrdr_collect.errors import ProviderUnavailableError
from ktrdr_collect.providers.base import RateLimitedError, TransientError, UnknownSymbolError
from ktrdr_collect.providers.demo import FIRST_BAR, DemoProvider
from ktrdr_collect.providers.pacing import MARGIN, SharedPacer
from ktrdr_collect.providers.registry import create_provider, provider_names
from ktrdr_collect.storage.timeframes import format_ts, parse_ts

NEVER = CancellationToken()


def demo(**options: object) -> DemoProvider:
    return DemoProvider({"latency_ms": 0, **options})


def test_values_depend_only_on_symbol_timeframe_and_timestamp() -> None:
    p = demo(max_bars=100000)
    start, end = parse_ts("2023-03-01"), parse_ts("2023-04-01")
    whole = p.fetch("AAPL", "1h", start, end, NEVER)
    mid = whole[40][0]
    halves = p.fetch("AAPL", "1h", start, mid, NEVER) + p.fetch("AAPL", "1h", mid, end, NEVER)
    assert whole == halves
    assert whole != p.fetch("MSFT", "1h", start, end, NEVER)
    for _, o, h, low, c, v in whole:
        assert low <= min(o, c) <= max(o, c) <= h and v > 0


def test_calendar_facts() -> None:
    p = demo(max_bars=100000)
    monday = parse_ts("2024-01-08")
    day = p.fetch("X", "1m", monday, monday + 86400, NEVER)
    assert len(day) == 390 and format_ts(day[0][0]) == "2024-01-08T14:30:00Z"
    assert format_ts(day[-1][0]) == "2024-01-08T20:59:00Z"
    hours = p.fetch("X", "1h", monday, monday + 86400, NEVER)
    assert [format_ts(b[0])[11:16] for b in hours] == ["14:30", "15:30", "16:30", "17:30", "18:30", "19:30",
                                                        "20:30"]
    weekend = p.fetch("X", "1h", parse_ts("2024-01-06"), parse_ts("2024-01-08"), NEVER)
    assert weekend == []
    weeks = p.fetch("X", "1w", parse_ts("2024-01-01"), parse_ts("2024-02-01"), NEVER)
    assert [format_ts(b[0])[:10] for b in weeks] == ["2024-01-01", "2024-01-08", "2024-01-15", "2024-01-22",
                                                      "2024-01-29"]
    first = p.fetch("X", "1d", 0, parse_ts("2000-01-10"), NEVER)
    assert first[0][0] == FIRST_BAR and format_ts(FIRST_BAR) == "2000-01-03T00:00:00Z"


def test_max_bars_caps_a_request() -> None:
    bars = demo(max_bars=10).fetch("X", "1d", parse_ts("2023-01-01"), parse_ts("2024-01-01"), NEVER)
    assert len(bars) == 10


def test_fail_symbols_fail_validation() -> None:
    p = demo(fail_symbols="bad, WORSE")
    p.validate("OK")
    with pytest.raises(UnknownSymbolError):
        p.validate("BAD")
    with pytest.raises(UnknownSymbolError):
        p.validate("worse")


def test_flaky_symbols_fail_each_request_once() -> None:
    p = demo(flaky_symbols="FLK")
    a, b = parse_ts("2023-01-01"), parse_ts("2023-02-01")
    with pytest.raises(TransientError):
        p.fetch("FLK", "1d", a, b, NEVER)
    assert p.fetch("FLK", "1d", a, b, NEVER)
    with pytest.raises(TransientError):  # a different request fails once too
        p.fetch("FLK", "1d", a, b + 86400, NEVER)
    assert p.fetch("OK", "1d", a, b, NEVER)


def test_latency_waits_and_cancel_cuts_it_short() -> None:
    p = demo(latency_ms=60000)
    token = CancellationToken()
    threading.Timer(0.05, token.cancel).start()
    started = time.monotonic()
    assert p.fetch("X", "1d", parse_ts("2023-01-01"), parse_ts("2023-02-01"), token) == []
    assert time.monotonic() - started < 30  # far below the 60 s latency: the wait was interrupted


def test_rate_limit_refuses_beyond_n_per_second(home: Path) -> None:
    p = demo(rate_limit=3)
    a, b = parse_ts("2023-01-01"), parse_ts("2023-02-01")
    outcomes = []
    for _ in range(5):
        try:
            p.fetch("X", "1d", a, b, NEVER)
            outcomes.append("ok")
        except RateLimitedError as e:
            assert 0 < e.retry_after <= 1.0
            outcomes.append("429")
    assert outcomes[:3] == ["ok"] * 3 and "429" in outcomes[3:]
    assert p.rate_limit == 3.0


def test_options_are_validated() -> None:
    with pytest.raises(ProviderUnavailableError, match="unknown option 'nope'.*latency_ms"):
        DemoProvider({"nope": 1})
    with pytest.raises(ProviderUnavailableError, match="expects int"):
        DemoProvider({"max_bars": "many"})
    with pytest.raises(ProviderUnavailableError, match="unknown provider 'zzz'"):
        create_provider("zzz")
    assert "demo" in provider_names()
    assert DemoProvider.synthetic and not DemoProvider.needs_network


def test_shared_pacer_keeps_every_window_across_instances(tmp_path: Path) -> None:
    now = [100.0]
    path = tmp_path / "pace.json"
    a = SharedPacer(path, [(3, 1.0)], clock=lambda: now[0])
    b = SharedPacer(path, [(3, 1.0)], clock=lambda: now[0])
    slots = [p.reserve() for p in (a, b, a, b, a, b, a)]
    assert slots[:3] == [100.0] * 3  # a burst up to the window's count
    assert all(abs(s - (101 + MARGIN)) < 1e-6 for s in slots[3:6])  # the next window, plus the margin
    assert abs(slots[6] - (102 + 2 * MARGIN)) < 1e-6
    for i in range(len(slots) - 3):  # no 1-second span ever holds more than 3
        assert slots[i + 3] - slots[i] >= 1.0
    now[0] = 200.0  # idle for a while: no debt carried over
    assert a.reserve() == 200.0


def test_pacer_with_several_windows(tmp_path: Path) -> None:
    now = [0.0]
    pacer = SharedPacer(tmp_path / "ib.json", [(60, 600.0), (5, 2.0)], clock=lambda: now[0])
    slots = [pacer.reserve() for _ in range(61)]
    for i in range(len(slots) - 5):
        assert slots[i + 5] - slots[i] >= 2.0
    assert slots[60] - slots[0] >= 600.0
    assert abs(pacer.rate - 60 / (600 * (1 + MARGIN))) < 1e-9


def test_windows_for_rate() -> None:
    from ktrdr_collect.providers.pacing import windows_for_rate

    assert windows_for_rate(20) == [(20, 1.0)]
    assert windows_for_rate(2.5) == [(2, 1.0)]
    assert windows_for_rate(0.1) == [(1, 10.0)]


def test_pacer_spacing_spreads_requests_evenly(tmp_path: Path) -> None:
    now = [0.0]
    pacer = SharedPacer(tmp_path / "p.json", [(20, 1.0)], clock=lambda: now[0], spacing=0.05)
    slots = [pacer.reserve() for _ in range(41)]
    gaps = [round(b - a, 6) for a, b in zip(slots, slots[1:], strict=False)]
    assert min(gaps) >= 0.045 - 1e-6  # never a burst: at least 90% of the even spacing apart
    assert all(slots[i + 20] - slots[i] >= 1.0 for i in range(len(slots) - 20))  # the window binds
    assert abs((slots[40] - slots[0]) - 2 * (1 + MARGIN)) < 1e-6


def test_a_request_held_up_past_its_slot_pushes_the_next_one(tmp_path: Path) -> None:
    now = [0.0]
    a = SharedPacer(tmp_path / "p.json", [(1, 1.0)], clock=lambda: now[0])
    b = SharedPacer(tmp_path / "p.json", [(1, 1.0)], clock=lambda: now[0])
    slot_a, slot_b = a.reserve(), b.reserve()
    span = 1 + MARGIN
    assert slot_a == 0.0 and abs(slot_b - span) < 1e-6
    now[0] = 0.8  # A's thread only gets to run now
    assert a.confirm(slot_a) == (0.0, 0.8)
    now[0] = slot_b  # B is on time, but a second (plus margin) after A really went out is later
    wait, slot = b.confirm(slot_b)
    assert abs(wait - 0.8) < 1e-6 and abs(slot - (0.8 + span)) < 1e-6
    now[0] = slot
    assert b.confirm(slot) == (0.0, slot)


def test_wait_turn_stops_when_the_sleep_is_interrupted(tmp_path: Path) -> None:
    now = [0.0]
    pacer = SharedPacer(tmp_path / "p.json", [(1, 1.0)], clock=lambda: now[0])
    assert pacer.wait_turn(lambda s: True) == 0.0
    assert pacer.wait_turn(lambda s: False) is None  # e.g. paused while waiting for the slot

    def sleep(seconds: float) -> bool:
        now[0] += seconds
        return True

    assert pacer.wait_turn(sleep) is not None
    assert abs(now[0] - (1 + MARGIN)) < 1e-6  # the lapsed booking was given back


def test_a_request_that_left_late_is_counted_from_when_it_left(tmp_path: Path) -> None:
    now = [0.0]
    pacer = SharedPacer(tmp_path / "p.json", [(1, 1.0)], clock=lambda: now[0])
    slot = pacer.wait_turn(lambda s: True)
    assert slot == 0.0
    pacer.correct(slot, 0.06)  # its thread only sent it 60 ms after confirming
    now[0] = 1.0 + MARGIN
    wait, _ = pacer.delay()
    assert abs(wait - 0.06) < 1e-6  # the next one waits for a second after 0.06, not after 0.0


def test_the_engine_paces_by_when_requests_really_leave(home: Path, tmp_path: Path) -> None:
    from ktrdr_collect.engine.engine import ProcessingEngine
    from ktrdr_collect.storage.csv_store import CsvStore

    provider = DemoProvider({"latency_ms": 0, "rate_limit": 5, "max_bars": 5})
    corrected: list[tuple[float, float]] = []
    engine = ProcessingEngine(provider, CsvStore(tmp_path), workers=2)
    assert engine.pacer is not None
    real_correct = engine.pacer.correct
    engine.pacer.correct = lambda slot, sent: (corrected.append((slot, sent)), real_correct(slot, sent))  # type: ignore[method-assign]
    [result] = engine.process_batch(["A"], "1d", "2023-01-02", "2023-01-23")
    assert result.ok and result.requests == 3
    assert len(corrected) == 3 and all(sent >= slot for slot, sent in corrected)


@pytest.mark.parametrize("timeframe", ["1m", "5m", "1h", "1d", "1w"])
def test_columns_are_the_bars_to_the_last_bit(timeframe: str) -> None:
    """The vectorised demo (what fetch returns) equals the bar-by-bar definition exactly, in order
    or not, across symbols and decades."""
    import random

    from ktrdr_collect.providers.demo import DemoSeries
    from ktrdr_collect.storage.calendar import DEMO_CALENDAR

    rng = random.Random(timeframe)
    for symbol in ["AAPL", "MSFT", "S0001", "BTCUSDT", "Z"]:
        series = DemoSeries(symbol, timeframe)
        start = FIRST_BAR + rng.randrange(25 * 365 * 86400)
        times = list(DEMO_CALENDAR.bar_times(timeframe, start, start + 1500 * series.step))[:1500]
        if rng.random() < 0.5:
            rng.shuffle(times)
        assert series.columns(times) == [series.bar(ts) for ts in times] == series.bars(times)
        sparse = sorted(times)[::3]  # bars apart: no bar's next level is another bar's own
        assert series.columns(sparse) == [series.bar(ts) for ts in sparse]


def test_columns_remake_bars_near_a_cents_edge_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where numpy's price level could round to another cent than the math module's, the bar is
    made by `bar`; and a numpy level that strays on the sample makes every level by `level`."""
    import numpy as np

    from ktrdr_collect.providers import demo

    series = demo.DemoSeries("AAPL", "1m")
    times = np.arange(1_700_000_040, 1_700_000_040 + 60 * 5000, 60)
    expected = [series.bar(ts) for ts in times.tolist()]
    remade: list[int] = []
    real_bar = series.bar
    monkeypatch.setattr(series, "bar", lambda ts: (remade.append(ts), real_bar(ts))[1])
    assert series.columns(times) == expected
    assert remade  # 5,000 bars x 4 prices: some come within 1e-4 of an edge
    assert len(remade) < 50
    off = np.exp  # a numpy exp off by a millionth: the sample catches it, the values stay exact
    monkeypatch.setattr(np, "exp", lambda x: off(x) * (1 + 1e-6))
    assert series.columns(times) == expected
