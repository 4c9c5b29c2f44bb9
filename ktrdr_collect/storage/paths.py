"""File names for symbols."""

from __future__ import annotations

import os


def file_stem(symbol: str) -> str:
    """``BTC/USDT`` -> ``BTC_USDT``: the data file name (without ``.csv``) for ``symbol``."""
    stem = symbol.upper().replace("/", "_")
    bad_seps = {"/", "\\", os.sep, os.altsep or "/"}
    if not stem or ".." in stem or "\x00" in stem or any(sep in stem for sep in bad_seps):
        raise ValueError(f"symbol {symbol!r} does not give a safe file name")
    return stem
