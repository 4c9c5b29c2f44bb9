"""CSV lines of bars made with array operations only: stamps, then values, as one byte matrix.

``csv_lines(ts, values)`` gives the same bytes as ``csv_store.format_row`` on each bar, or None
when a value is one this module does not spell (the caller then spells the values another way).

**Stamps** (``format_ts``: ``2024-01-02T14:30:00Z``): the civil date of each day by Howard Hinnant's
days-to-civil algorithm, computed once per day of the span, and the clock time from a table of
every second of a day; both gathered into place.

**Values** (``format_number``: the digits of Python's ``repr``, the shortest decimal that reads back
as the same float, written as a plain decimal without a trailing ``.0``). A float ``v`` is written
with ``d`` decimals when ``m / 10**d`` with ``m = rint(|v| * 10**d)`` reads back as ``|v|``: the
test ``m / 10**d == |v|`` is exact, an IEEE division of two exact integers being correctly rounded.
While ``|v| * 10**d <= 2**50`` the spacing of floats near ``v`` is below a quarter of ``10**-d``, so
at most one decimal with ``d`` digits reads back as ``v``, and ``rint`` finds it despite the
rounding of the product (off by at most 1/8). The shortest spelling is then the one with the
fewest decimals: for a column that passes the test with ``D`` decimals, ``D`` less the trailing
zeros of each ``m``. A column with a value beyond ``2**50``, or one that needs more than
``MAX_DECIMALS``, gives None. tests/storage/test_csv_columns.py compares the bytes with
``format_row`` over random values of every kind.

The text is laid out as a matrix of 4-byte words, a row a bar, each field in a fixed number of
words padded with NUL bytes: ``,`` and the sign; the integer digits four at a time from a table of
0000..9999 (a variant of it drops the leading zeros of the leading group); the point; the
decimals four at a time (a variant drops trailing zeros). The NULs of the whole text are dropped
at once at the end. Every step is a gather from a small table or an array operation on a column.
"""

from __future__ import annotations

from functools import cache

import numpy as np

MAX_DECIMALS = 12
"""The most decimals written here (a price of 0.00001234 with a few more digits needs 12)."""

_EXACT = 2.0**50
_POW10 = 10 ** np.arange(18, dtype=np.int64)
_WORD = np.dtype("<u4")


def csv_lines(ts: np.ndarray, values: np.ndarray) -> bytes | None:
    """``format_row`` of each bar ``ts[i], values[i]`` (finite values), joined; None when a value or
    a year is outside what this module spells (see its text)."""
    n, k = values.shape
    if not n:
        return b""
    layout = _value_layout(np.ascontiguousarray(values.T))
    if layout is None:
        return None
    words_per_field = len(layout)
    out = np.zeros((n, 5 + k * words_per_field + 1), _WORD)
    if not _stamp_words(ts, out):
        return None
    for j, column_words in enumerate(layout):
        out[:, 5 + j: 5 + k * words_per_field: words_per_field] = column_words.T
    out[:, -1] = ord("\n")
    return out.tobytes().translate(None, b"\0")


def warm_up() -> None:
    """Import what writing bars needs (numpy, msgspec) and make the digit tables now (~90 ms in
    all), so that a job pays it before its first request rather than inside it."""
    import msgspec  # noqa: F401  (csv_text's other path, the Binance decoder)

    _tables()
    _clock_tables()


def iso_stamps(ts: np.ndarray) -> list[bytes]:
    """Epoch seconds -> ``b"2024-01-02T14:30:00Z"`` (``format_ts``'s text), all at once."""
    out = np.zeros((len(ts), 5), _WORD)
    if not _stamp_words(ts, out):  # a year of not four digits: format_ts spells it
        from ktrdr_collect.storage.timeframes import format_ts

        return [format_ts(t).encode() for t in ts.tolist()]
    return out.view("S20").ravel().tolist()


# stamps: "YYYY-MM-" (8 bytes) "DDTH" "H:MM" ":SSZ"


def _stamp_words(ts: np.ndarray, out: np.ndarray) -> bool:
    """Write each stamp into words 0..4 of its row of ``out``; False when a year is not four digits."""
    if not len(ts):
        return True
    days, secs = np.divmod(ts.astype(np.int64), 86_400)
    first, last = int(days.min()), int(days.max())
    if last - first < 2 * len(ts):  # the usual case: each day of the span once, then gathered
        dates = _dates(np.arange(first, last + 1))
        if dates is None:
            return False
        index = days - first
        year_month, day = dates[0][index], dates[1][index]
    else:
        dates = _dates(days)
        if dates is None:
            return False
        year_month, day = dates
    clock = _clock_tables()
    out[:, 0:2] = year_month.view(_WORD).reshape(-1, 2)
    out[:, 2] = day | clock[0][secs]
    out[:, 3] = clock[1][secs]
    out[:, 4] = clock[2][secs]
    return True


def _dates(days: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``YYYY-MM-`` (as 8 bytes) and ``DDT`` (as a word) of each day number (days since
    1970-01-01), by Howard Hinnant's days-to-civil algorithm; None when a year is not four digits."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1_460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    month = np.where(mp < 10, mp + 3, mp - 9)
    year = yoe + era * 400 + (month <= 2)
    if year.min() < 1000 or year.max() > 9999:
        return None
    quads, pairs = _tables()["quads"], _tables()["pairs"].astype(np.uint32)
    year_month = np.empty((len(days), 2), _WORD)
    year_month[:, 0] = quads[year]
    year_month[:, 1] = ord("-") | pairs[month] << 8 | ord("-") << 24
    day = pairs[doy - (153 * mp + 2) // 5 + 1] | ord("T") << 16
    return year_month.view(np.uint8).reshape(-1, 8).view("<u8").ravel(), day.astype(_WORD)


@cache  # made once (1 MB); threads racing to make it each make a whole one
def _clock_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every second of a day: the word ``\0\0\0H`` (the hour's first digit, after ``DDT``),
    ``H:MM`` and ``:SSZ``."""
    sec = np.arange(86_400)
    digits = _tables()["pairs"]
    hour = digits[sec // 3600].astype(np.uint32)
    minute, second = digits[sec // 60 % 60].astype(np.uint32), digits[sec % 60].astype(np.uint32)
    clock = np.stack([
        (hour & 0xFF) << 24,
        hour >> 8 | ord(":") << 8 | minute << 16,
        ord(":") | second << 8 | ord("Z") << 24,
    ]).astype(_WORD)
    return clock[0], clock[1], clock[2]


@cache
def _tables() -> dict[str, np.ndarray]:
    """Digit tables as little-endian words (the first character first in memory): ``pairs`` 00..99,
    ``quads`` 0000..9999, ``lead`` the same without leading zeros (0 is empty), ``units`` without
    leading zeros but 0 is "0", ``trail`` without trailing zeros (0 is empty)."""

    def words(texts: list[str]) -> np.ndarray:
        return np.array([int.from_bytes(t.encode().ljust(4, b"\0"), "little") for t in texts], _WORD)

    def right(text: str) -> int:
        return int.from_bytes(text.encode().rjust(4, b"\0"), "little")

    numbers = [f"{i:04d}" for i in range(10_000)]
    return {
        "pairs": np.array([int.from_bytes(f"{i:02d}".encode(), "little") for i in range(100)], "<u2"),
        "quads": words(numbers),
        "lead": np.array([right(t.lstrip("0")) for t in numbers], _WORD),
        "units": np.array([right(t.lstrip("0") or "0") for t in numbers], _WORD),
        "trail": words([t.rstrip("0") for t in numbers]),
    }


# values


def _value_layout(columns: np.ndarray) -> list[np.ndarray] | None:
    """The words of the field of each value column (``columns`` is (k, n): a column a row), as a
    list of (k, n) word arrays, one per word of the field: ``,`` and sign, integer groups, point,
    decimal groups; None when a column cannot be written here."""
    ab = np.abs(columns)
    tops = ab.max(axis=1)
    if not (tops < _EXACT).all():  # also NaN
        return None
    decimals = _decimals(ab, tops)
    if decimals is None:
        return None
    places = -(-int(decimals.max()) // 4) * 4  # decimals are written four at a time
    scaled = np.rint(ab * 10.0**decimals[:, None]).astype(np.int64)
    integer = scaled // _POW10[decimals][:, None]
    fraction = (scaled - integer * _POW10[decimals][:, None]) * _POW10[places - decimals][:, None]
    tables = _tables()
    sign = np.where(np.signbit(columns), ord(",") | ord("-") << 8, ord(",")).astype(_WORD)
    groups = max(1, -(-len(str(int(integer.max()))) // 4))
    integer_words: list[np.ndarray] = []
    rest = integer
    for g in range(groups):  # the last group first
        higher = rest // 10_000
        group = rest - higher * 10_000
        table = tables["units"] if g == 0 else tables["lead"]
        integer_words.append(np.where(higher == 0, table[group], tables["quads"][group]) if g < groups - 1
                             else table[group])
        rest = higher
    layout = [sign, *reversed(integer_words)]
    if places:
        layout.append(np.where(fraction != 0, ord("."), 0).astype(_WORD))
        scale = _POW10[places]
        for _ in range(places // 4):  # the first group first
            scale //= 10_000
            group = fraction // scale
            fraction = fraction - group * scale
            layout.append(np.where(fraction == 0, tables["trail"][group], tables["quads"][group]))
    return layout


def _decimals(ab: np.ndarray, tops: np.ndarray) -> np.ndarray | None:
    """The decimals each column is written with: the fewest of 2, 8 and its widest exact count
    with which every value of the column passes the test (see the module's text); None if one
    has none."""
    k = ab.shape[0]
    widest = np.full(k, MAX_DECIMALS)
    while ((tops * 10.0**widest) > _EXACT).any():
        widest -= (tops * 10.0**widest) > _EXACT
    chosen = np.full(k, -1)
    for tried in sorted({2, 8, *widest.tolist()}):
        todo = (chosen < 0) & (widest >= tried)
        if not todo.any():
            continue
        scale = 10.0**tried
        part = ab if todo.all() else ab[todo]
        fits = (np.rint(part * scale) / scale == part).all(axis=1)
        chosen[np.flatnonzero(todo)[fits]] = tried
    return None if (chosen < 0).any() else chosen
