"""The little HTTP client HTTP providers share: GET a JSON document, classify what went wrong.

Stdlib only (`urllib.request`), so the base install stays light. The request runs on a short-lived
helper thread while the caller waits on the job's interrupt, so a cancelled job never waits for a
slow server (the abandoned request ends by itself at its timeout).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from ktrdr_collect import __version__
from ktrdr_collect.providers.base import (
    Interrupt,
    PermanentError,
    ProviderError,
    RateLimitedError,
    TransientError,
    mark_sent,
)

USER_AGENT = f"ktrdr-collect/{__version__} (+https://pypi.org/project/ktrdr-collect/)"
BROWSER_USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
)
RATE_LIMIT_STATUSES = (418, 429)
_POLL_S = 0.05
_BODY_SNIPPET = 200


class RequestCancelled(Exception):
    """The job was cancelled while the request was in flight (the provider returns no bars)."""


@dataclass(frozen=True)
class HttpFailure:
    """An HTTP error response: status, headers and the body (parsed JSON when it is JSON)."""

    url: str
    status: int
    headers: Mapping[str, str]
    body: Any
    text: str

    def summary(self) -> str:
        snippet = " ".join(self.text.split())[:_BODY_SNIPPET]
        return f"HTTP {self.status}" + (f": {snippet}" if snippet else "")


Classifier = Callable[[HttpFailure], ProviderError | None]
"""A provider's reading of an error response; None falls back to the generic classification."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds to wait: delta-seconds or an HTTP date; None if absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment is None:
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def build_url(url: str, params: Mapping[str, Any] | None = None) -> str:
    if not params:
        return url
    return f"{url}?{urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})}"


def classify_failure(failure: HttpFailure, classify: Classifier | None = None) -> ProviderError:
    """The error an HTTP error response means: the provider's reading first, then the generic one."""
    if classify is not None:
        specific = classify(failure)
        if specific is not None:
            return specific
    if failure.status in RATE_LIMIT_STATUSES:
        retry_after = parse_retry_after(failure.headers.get("Retry-After"))
        return RateLimitedError(f"rate limited ({failure.summary()})", retry_after=retry_after)
    if failure.status >= 500:
        return TransientError(f"server error ({failure.summary()})")
    return PermanentError(f"request refused ({failure.summary()})")


def _decode(raw: bytes) -> tuple[Any, str]:
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text), text
    except ValueError:
        return None, text


def _read_error(url: str, err: urllib.error.HTTPError) -> HttpFailure:
    try:
        raw = err.read()
    except (OSError, http.client.HTTPException):
        raw = b""
    body, text = _decode(raw)
    headers = {k: v for k, v in (err.headers or {}).items()}
    return HttpFailure(url, err.code, headers, body, text)


def _request(url: str, timeout: float, headers: Mapping[str, str]) -> bytes | HttpFailure:
    """One GET: the whole body, or the error response; network trouble raises TransientError."""
    request = urllib.request.Request(url, headers={"Accept": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as e:
        return _read_error(url, e)
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, TimeoutError):
            raise TransientError(f"timed out after {timeout:g}s: {url}") from None
        raise TransientError(f"cannot connect: {reason}") from None
    except TimeoutError:
        raise TransientError(f"timed out after {timeout:g}s: {url}") from None
    except http.client.IncompleteRead as e:
        raise TransientError(f"connection dropped mid-response ({len(e.partial)} bytes read)") from None
    except (http.client.HTTPException, ConnectionError) as e:
        raise TransientError(f"connection dropped: {type(e).__name__}: {e}") from None
    except OSError as e:
        raise TransientError(f"network error: {e}") from None


def _interruptible(fn: Callable[[], Any], interrupt: Interrupt | None) -> Any:
    """Run `fn` on a helper thread; raise RequestCancelled as soon as `interrupt` is cancelled."""
    if interrupt is None:
        return fn()
    if interrupt.is_cancelled:
        raise RequestCancelled
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=target, name="collect-http", daemon=True).start()
    while not done.wait(_POLL_S):
        if interrupt.is_cancelled:
            raise RequestCancelled
    if "error" in box:
        raise box["error"]
    return box["value"]


def get_json(
    url: str,
    params: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
    interrupt: Interrupt | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    classify: Classifier | None = None,
) -> Any:
    """GET `url` with `params` and return the decoded JSON body.

    Raises RateLimitedError (429/418, with Retry-After), TransientError (5xx, timeouts, refused or
    dropped connections, truncated or malformed bodies), PermanentError (other 4xx), whatever
    `classify` makes of an error response, and RequestCancelled if `interrupt` fires first.
    """
    full = build_url(url, params)
    sent = {"User-Agent": USER_AGENT, **(headers or {})}
    mark_sent(interrupt)
    result = _interruptible(lambda: _request(full, timeout, sent), interrupt)
    if isinstance(result, HttpFailure):
        raise classify_failure(result, classify)
    body, text = _decode(result)
    if body is None:
        snippet = " ".join(text.split())[:_BODY_SNIPPET]
        raise TransientError(f"malformed JSON from {url}: {snippet!r}")
    return body
