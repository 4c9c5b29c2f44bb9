"""Request pacing shared by every host: the sliding-window log of `pacing.py`, kept in Redis.

With config `pacing_url = redis://HOST:PORT/DB`, each budget (provider and credential, and the
host for providers that limit per IP) is a sorted set of request start times, and every change
runs as one server-side Lua script: atomic across hosts, and timed by Redis `TIME`, so the hosts'
own clocks never decide when a request may go. The script keeps the file pacer's semantics
exactly — book a slot, confirm it when it comes, move it to when the request really left, give it
back on pause — which is why it is ours and not a rate-limiter library's bucket (pyrate-limiter's
Redis bucket only acquires "now or fail" and cannot hold a booking that a pause gives back).

Redis unreachable: no request goes out unpaced. The caller waits (its sleep still answers pause
and cancel), the job log says why, and pacing goes on when Redis answers again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ktrdr_collect.providers.pacing import FUTURE_TOLERANCE, MARGIN, Window

log = logging.getLogger("ktrdr_collect.pacing")

KEY_PREFIX = "ktrdr-collect:pacing:"

RETRY_MIN_S = 0.2
RETRY_MAX_S = 5.0
"""While Redis is unreachable, callers try again after this long, doubling up to the maximum."""

SOCKET_TIMEOUT_S = 5.0

# KEYS[1]: the budget's sorted set (member: a booking's id, score: its start time, Redis clock);
# KEYS[2]: its epoch, a random value set by the first call that finds none: a new one means the log
#          was lost (Redis restarted without persistence, flushed, failed over). Both expire one
#          window after the last booking, when no host has anything left to put back.
# ARGV: op, member, value (correct, put: a time, Redis clock), spacing, horizon, margin,
#       tolerance, then count, span for each window.
# Returns {slot, now, epoch}; numbers as strings (a Lua number would be cut to an integer).
SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local key, op, member = KEYS[1], ARGV[1], ARGV[2]
local value, spacing, horizon = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local margin, tolerance = tonumber(ARGV[6]), tonumber(ARGV[7])
local windows = {}
for i = 8, #ARGV, 2 do windows[#windows + 1] = {tonumber(ARGV[i]), tonumber(ARGV[i + 1])} end
redis.call('SET', KEYS[2], member, 'NX', 'PX', math.ceil((horizon + spacing + tolerance) * 1000))
local epoch = redis.call('GET', KEYS[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function fmt(x) return string.format('%.6f', x) end

-- forget what no window can see any more
redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(now - horizon))
-- and stamps beyond the reach of any real booking (the Redis host's clock was stepped back)
local raw = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
local stamps, reach = {}, now + horizon + spacing + tolerance
for i = 1, #raw, 2 do
  local s = tonumber(raw[i + 1])
  if s > reach then
    redis.call('ZREM', key, raw[i])
  else
    if raw[i] ~= member then stamps[#stamps + 1] = s end
    reach = math.max(reach, s + horizon + spacing + tolerance)
  end
end

local function in_windows(list, from)
  local slot = from
  for _, w in ipairs(windows) do
    if #list >= w[1] then slot = math.max(slot, list[#list - w[1] + 1] + w[2] * (1 + margin)) end
  end
  return slot
end

local function keep(slot)
  redis.call('ZADD', key, fmt(slot), member)
  local ttl = math.ceil((math.max(slot, now) - now + horizon + spacing + tolerance) * 1000)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
  if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
end

local slot = 0
if op == 'reserve' then
  slot = now
  if #stamps > 0 then slot = math.max(now, stamps[#stamps] + spacing) end
  slot = in_windows(stamps, slot)
  keep(slot)
elseif op == 'confirm' then
  local started = {}
  for _, s in ipairs(stamps) do if s <= now then started[#started + 1] = s end end
  slot = in_windows(started, now)
  keep(slot)
elseif op == 'correct' then
  local old = redis.call('ZSCORE', key, member)
  if old and value > tonumber(old) then keep(value) end
  slot = value
elseif op == 'release' then
  redis.call('ZREM', key, member)
elseif op == 'stamp' then
  slot = now
  keep(now)
elseif op == 'put' then
  slot = value
  if value > now - horizon then keep(value) end
else
  return redis.error_reply('unknown pacing op ' .. op)
end
return {fmt(slot), fmt(now), epoch}
"""


class Booking(float):
    """A booked start time (Redis clock) that knows its entry in the shared log."""

    member: str

    def __new__(cls, slot: float, member: str) -> Booking:
        booking = super().__new__(cls, slot)
        booking.member = member
        return booking


def safe_url(url: str) -> str:
    """`url` without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = (f"{parts.username}:***@" if parts.username else ":***@") + (parts.hostname or "")
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def client_for(url: str) -> Any:
    """One Redis client (a thread-safe connection pool) per URL per process."""
    with _clients_lock:
        if url not in _clients:
            try:
                import redis
            except ImportError:
                from ktrdr_collect.errors import CollectError

                raise CollectError("pacing_url needs the Redis client: pip install 'ktrdr-collect[redis]'") from None
            _clients[url] = redis.Redis.from_url(
                url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S)
        return _clients[url]


def credential_id(provider_name: str, secrets: Mapping[str, Any]) -> str:
    """Which account a budget belongs to, without the secret: a hash of the provider's secret
    option values ("" for a provider without credentials: one budget for everybody)."""
    values = {k: v for k, v in secrets.items() if v not in (None, "")}
    if not values:
        return ""
    text = json.dumps([provider_name, sorted(values.items())], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def credential_of(provider: Any) -> str:
    """`credential_id` of a provider instance: its secret options and values carrying credentials
    (what `public_options` leaves out)."""
    options = getattr(provider, "options", None) or {}
    try:
        public = provider.public_options()
    except AttributeError:
        return ""
    return credential_id(provider.name, {k: v for k, v in options.items() if k not in public})


def budget_key(log_name: str, credential: str = "", host: str | None = None) -> str:
    """The Redis key of a budget: provider (and pacing, see `pacing.log_name`), account, host."""
    key = KEY_PREFIX + log_name + ":" + (credential or "-")
    return key + (":host=" + host if host else "")


def this_host() -> str:
    return socket.gethostname()


def _is_unreachable(error: BaseException) -> bool:
    try:
        import redis
    except ImportError:
        return False
    return isinstance(error, redis.ConnectionError | redis.TimeoutError | redis.BusyLoadingError)


class RedisPacer:
    """The sliding-window pacer of `pacing.SharedPacer` over a Redis sorted set: same windows,
    spacing and margin, same `wait_turn` / `correct` / `release` protocol, shared by every host.

    Each pacer also remembers the requests it sent within the horizon: when it finds the log lost
    (a new epoch), it puts them back before anything else is booked, so a Redis restart cannot
    open a window the provider still counts as full."""

    def __init__(self, url: str, key: str, windows: Sequence[Window], spacing: float = 0.0,
                 client: Any = None, host_clock: Callable[[], float] = time.time) -> None:
        if not windows or any(n < 1 or w <= 0 for n, w in windows):
            raise ValueError("pacing windows need a count >= 1 and a span > 0")
        self.url = url
        self.key = key
        self.windows = list(windows)
        self.spacing = spacing * 0.9  # looser than the windows: it only smooths bursts, the windows bind
        self.horizon = max(w for _, w in windows) * (1 + MARGIN)
        self.host_clock = host_clock
        self._client = client
        self._script: Any = None
        self._lock = threading.Lock()
        self._offset = 0.0
        """Redis clock minus this host's clock at the last answer: turns a host send time (what
        providers mark) into the Redis clock the log is kept in."""
        self._epoch: str | None = None
        self._sent: dict[str, float] = {}
        """member -> start time (Redis clock) of the requests this pacer let go, within the horizon."""
        self._down = False

    @property
    def rate(self) -> float:
        """The sustained requests per second these windows allow."""
        return min(n / (w * (1 + MARGIN)) for n, w in self.windows)

    def __repr__(self) -> str:
        return f"RedisPacer({safe_url(self.url)!r}, {self.key!r})"

    # -- one script call ---------------------------------------------------------------------
    def _eval(self, op: str, member: str, value: float) -> tuple[float, float, str]:
        if self._script is None:
            self._client = self._client or client_for(self.url)
            self._script = self._client.register_script(SCRIPT)
        args: list[Any] = [op, member, repr(value), repr(self.spacing), repr(self.horizon), repr(MARGIN),
                           repr(FUTURE_TOLERANCE)]
        for count, span in self.windows:
            args += [count, repr(float(span))]
        sent = self.host_clock()
        slot, now, epoch = self._script(keys=[self.key, self.key + ":epoch"], args=args)
        now = float(now)
        self._offset = now - (sent + self.host_clock()) / 2
        return float(slot), now, epoch.decode() if isinstance(epoch, bytes) else str(epoch)

    def _run(self, op: str, member: str, value: float = 0.0) -> tuple[float, float]:
        slot, now, epoch = self._eval(op, member, value)
        with self._lock:
            lost = self._epoch is not None and epoch != self._epoch
            self._epoch = epoch
            sent = [(m, s) for m, s in self._sent.items() if s > now - self.horizon]
            self._sent = dict(sent)
        if lost and sent:
            log.warning("pacing: the Redis log %s was lost (restart or flush); putting back this host's %d "
                        "recent requests", self.key, len(sent))
            for m, s in sent:
                self._eval("put", m, s)
            slot, now, _ = self._eval(op, member, value)  # again, against the restored log
        self._up()
        return slot, now

    def _call(self, op: str, member: str, sleep: Callable[[float], bool], value: float = 0.0
              ) -> tuple[float, float] | None:
        """`_run`, waiting (with `sleep`) while Redis is unreachable; None when `sleep` is interrupted."""
        pause = RETRY_MIN_S
        while True:
            try:
                return self._run(op, member, value)
            except Exception as e:
                if not _is_unreachable(e):
                    raise
                self._report_down(e)
            if not sleep(pause):
                return None
            pause = min(RETRY_MAX_S, pause * 2)

    def _report_down(self, error: BaseException) -> None:
        with self._lock:
            if self._down:
                return
            self._down = True
        log.warning("pacing: Redis at %s does not answer (%s); requests wait for it, none goes out unpaced",
                    safe_url(self.url), type(error).__name__)

    def _up(self) -> None:
        with self._lock:
            if not self._down:
                return
            self._down = False
        log.warning("pacing: Redis at %s answers again; requests go on", safe_url(self.url))

    @property
    def waiting_for_redis(self) -> bool:
        """True while the last call found Redis unreachable."""
        return self._down

    # -- the pacer protocol ------------------------------------------------------------------
    def _book(self, op: str, member: str, sleep: Callable[[float], bool]) -> tuple[float, Booking] | None:
        answer = self._call(op, member, sleep)
        if answer is None:
            return None
        slot, now = answer
        delay = max(0.0, slot - now)
        if delay <= 0 and op == "confirm":
            with self._lock:
                self._sent[member] = slot
        return delay, Booking(slot, member)

    def delay(self, sleep: Callable[[float], bool]) -> tuple[float, Booking] | None:
        """Book the next start time every window allows: (seconds to wait for it, the booking);
        None if `sleep` was interrupted while Redis was down."""
        return self._book("reserve", uuid.uuid4().hex, sleep)

    def confirm(self, booking: Booking, sleep: Callable[[float], bool]) -> tuple[float, Booking] | None:
        """Check the windows again against the requests that really started: (0, booking) when it
        may go now, else (seconds to wait, its new booking); None if interrupted while Redis was down."""
        return self._book("confirm", booking.member, sleep)

    def wait_turn(self, sleep: Callable[[float], bool]) -> Booking | None:
        """Book a slot, sleep until it, confirm; repeat until confirmed, and return the booking.
        `sleep(seconds)` returns False when interrupted (pause, cancel): then this returns None and
        the booking is given back."""
        answer = self.delay(sleep)
        if answer is None:
            return None
        delay, booking = answer
        while delay <= 0 or sleep(delay):
            answer = self.confirm(booking, sleep)
            if answer is None:
                break
            delay, booking = answer
            if delay <= 0:
                return booking
        self.release(booking)
        return None

    def correct(self, slot: float, sent_at: float) -> None:
        """The request booked at `slot` really left at `sent_at` (this host's clock): move its
        stamp there, so the next window counts from when the provider saw it."""
        member = getattr(slot, "member", None)
        sent = sent_at + self._offset
        if member is None or sent <= slot + 0.001:
            return
        with self._lock:
            if member in self._sent:
                self._sent[member] = sent
        self._best_effort("correct", member, sent)

    def release(self, slot: float) -> None:
        """Give back a booking that will not be used (the job paused or was cancelled)."""
        member = getattr(slot, "member", None)
        if member is not None:
            with self._lock:
                self._sent.pop(member, None)
            self._best_effort("release", member)

    def stamp(self) -> None:
        """Count one request now without waiting (IB's second stamp for BID_ASK)."""
        member = uuid.uuid4().hex
        answer = self._call("stamp", member, lambda s: time.sleep(s) is None)
        if answer is not None:
            with self._lock:
                self._sent[member] = answer[0]

    def _best_effort(self, op: str, member: str, value: float = 0.0) -> None:
        """A change after the fact (the request went, or will not): with Redis down it is skipped;
        the restore after a lost log puts back what this pacer remembers."""
        try:
            self._run(op, member, value)
        except Exception as e:
            if not _is_unreachable(e):
                raise
            self._report_down(e)
