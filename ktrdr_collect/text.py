"""Text from outside (providers, files, URLs) made safe to show and to store.

`clean` is the one helper: credentials redacted (`https://***@host`, `apikey=***`), then control
characters escaped (`\\x1b`, `\\r`, ...), so an error body can neither drive a terminal (ESC/OSC
sequences: clear the screen, set the clipboard, retitle the window) nor forge log lines, and a
token placed in a URL never reaches a state file, the history index, a log or the screen.

No typer or rich here: the engine, the providers and the job runner use it too.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "***"

_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
"""C0, DEL and C1 (0x9b is CSI on 8-bit terminals)."""
_CONTROLS_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

_SECRET_NAME = r"[a-z0-9_.\-]*(?:key|token|secret|password|passwd|pwd|signature|auth)"
"""Parameter names that carry credentials: apikey, api_key, X-MBX-APIKEY, access_token, password..."""
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s/?#@]+@")
_SECRET_PARAM = re.compile(rf"(?i)(?<![a-z0-9_.\-])({_SECRET_NAME}=)[^&\s#'\"]+")
_SECRET_JSON = re.compile(rf"(?i)([\"']{_SECRET_NAME}[\"']\s*:\s*[\"'])[^\"']*(?=[\"'])")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[a-z0-9._~+/=\-]+")
_INNOCENT = re.compile(r"[^\x00-\x1f\x7f-\x9f@=\"' ]*")
"""Text none of the patterns can touch (no control character, `@`, `=`, quote or space): ids,
dates, statuses, numbers. Checked first, so that cleaning a whole listing stays cheap."""


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or f"\\x{ord(char):02x}"


def escape_controls(text: str, keep_newlines: bool = False) -> str:
    """Control characters as visible escapes (`\\x1b`); `keep_newlines` keeps `\\n` (multi-line logs)."""
    pattern = _CONTROLS_BUT_NEWLINE if keep_newlines else _CONTROLS
    return pattern.sub(_escape_one, text)


def redact(text: str) -> str:
    """Credentials replaced by `***`: a URL's user info, `key=`/`token=`/`secret=`/`password=`-like
    parameters (also as JSON members) and bearer tokens. Idempotent."""
    if "@" in text:
        text = _USERINFO.sub(rf"\g<1>{REDACTED}@", text)
    if "=" in text:
        text = _SECRET_PARAM.sub(rf"\g<1>{REDACTED}", text)
    if ":" in text:
        text = _SECRET_JSON.sub(rf"\g<1>{REDACTED}", text)
    if "earer" in text or "EARER" in text:
        text = _BEARER.sub(rf"\g<1>{REDACTED}", text)
    return text


def has_credentials(text: str) -> bool:
    return redact(text) != text


def clean(text: str, keep_newlines: bool = False) -> str:
    """`text` safe for a terminal, a log or a state file: credentials redacted, controls escaped."""
    if _INNOCENT.fullmatch(text):
        return text
    return escape_controls(redact(text), keep_newlines)


def clean_tree(value: Any) -> Any:
    """Every string inside a JSON-like value cleaned (dict keys are ours and stay as they are)."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {k: clean_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_tree(v) for v in value]
    return value


class CleanFormatter(logging.Formatter):
    """A log formatter whose lines are cleaned (tracebacks keep their line breaks)."""

    def format(self, record: logging.LogRecord) -> str:
        return clean(super().format(record), keep_newlines=True)
