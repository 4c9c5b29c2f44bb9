"""File names for symbols: one symbol, one file (docs/storage.md, "File names").

The contract's rule is the upper-cased symbol with `/` replaced by `_` (`BTC/USDT` -> `BTC_USDT`).
On its own that maps `BTC/USDT` and `BTC_USDT` to one file, so a literal `_` is written `%5F`
(`BTC_USDT` -> `BTC%5FUSDT`): `%` is not a symbol character, so no symbol without `_` can produce
it, and names of symbols without `_` (every file written before) stay as they were.
"""

from __future__ import annotations

import os

UNDERSCORE = "%5F"
"""How a literal `_` of a symbol is spelled in a file name."""


def file_stem(symbol: str) -> str:
    """``BTC/USDT`` -> ``BTC_USDT``, ``BTC_USDT`` -> ``BTC%5FUSDT``: the data file name (without
    ``.csv``) for ``symbol``; different (upper-cased) symbols never share one."""
    stem = symbol.upper().replace("_", UNDERSCORE).replace("/", "_")
    bad_seps = {"/", "\\", os.sep, os.altsep or "/"}
    if not stem or ".." in stem or "\x00" in stem or any(sep in stem for sep in bad_seps):
        raise ValueError(f"symbol {symbol!r} does not give a safe file name")
    return stem


def symbol_of_stem(stem: str) -> str:
    """The symbol a data file name stands for: the inverse of file_stem."""
    return stem.upper().replace("_", "/").replace(UNDERSCORE, "_")


def legacy_file_stem(symbol: str) -> str:
    """The name older versions (and other tools) give `symbol`'s file: `/` and `_` both as `_`.
    Only for reading archives that were not written by this version (csv provider)."""
    return file_stem(symbol).replace(UNDERSCORE, "_")
