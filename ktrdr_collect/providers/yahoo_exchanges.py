"""Which exchange a Yahoo symbol trades on, from its suffix (Yahoo's own convention).

Yahoo's symbol suffixes ("Exchanges and data providers on Yahoo Finance",
https://help.yahoo.com/kb/SLN2310.html): no suffix for US listings, `.L` London, `.SS` Shanghai,
`.JK` Jakarta, `.AX` Australia, ... ; `=X` currencies, `=F` futures, `BTC-USD` style crypto.
Every chart answer also carries `meta.exchangeTimezoneName`, which is what daily bars are dated
with; the suffix only chooses the calendar requests are planned with before any answer.
"""

from __future__ import annotations

import re

from ktrdr_collect.storage.exchanges import EXCHANGES, UNKNOWN, Exchange

SUFFIXES: dict[str, str] = {
    "AS": "XAMS", "AX": "XASX", "BK": "XBKK", "BO": "XBOM", "NS": "XBOM", "BR": "XBRU", "CO": "XCSE",
    "DE": "XETR", "F": "XFRA", "HE": "XHEL", "HK": "XHKG", "IR": "XDUB", "JK": "XIDX", "JO": "XJSE",
    "KL": "XKLS", "KQ": "XKRX", "KS": "XKRX", "L": "XLON", "IL": "XLON", "LS": "XLIS", "MC": "XMAD",
    "MI": "XMIL", "MX": "XMEX", "NZ": "XNZE", "OL": "XOSL", "PA": "XPAR", "SA": "BVMF", "SI": "XSES",
    "SR": "XSAU", "SS": "XSHG", "SZ": "XSHE", "ST": "XSTO", "SW": "XSWX", "T": "XTKS", "TA": "XTAE",
    "TO": "XTSE", "V": "XTSE", "CN": "XTSE", "NE": "XTSE", "TW": "XTAI", "TWO": "XTAI", "VI": "XWBO",
}
INDICES: dict[str, str] = {
    "^GSPC": "XNYS", "^DJI": "XNYS", "^IXIC": "XNYS", "^NDX": "XNYS", "^RUT": "XNYS", "^VIX": "XNYS",
    "^NYA": "XNYS", "^FTSE": "XLON", "^FTMC": "XLON", "^GDAXI": "XETR", "^FCHI": "XPAR", "^AEX": "XAMS",
    "^IBEX": "XMAD", "^SSMI": "XSWX", "^N225": "XTKS", "^HSI": "XHKG", "^AXJO": "XASX", "^AORD": "XASX",
    "^BSESN": "XBOM", "^NSEI": "XBOM", "^GSPTSE": "XTSE", "^KS11": "XKRX", "^TWII": "XTAI",
    "^JKSE": "XIDX", "^STI": "XSES", "^BVSP": "BVMF", "^MXX": "XMEX", "^NZ50": "XNZE",
}
CRYPTO_QUOTES = frozenset({"USD", "USDT", "USDC", "EUR", "GBP", "JPY", "BTC", "ETH", "CAD", "AUD"})
_PLAIN_US = re.compile(r"[A-Z][A-Z0-9]*(-[A-Z]{1,2})?")  # AAPL, BRK-B (class shares), BF-B


def exchange_of_symbol(symbol: str) -> Exchange:
    """The exchange a Yahoo symbol trades on; UNKNOWN (no range ever skipped) when we cannot tell."""
    s = symbol.upper()
    if s.endswith("=X"):
        return EXCHANGES["FX"]
    if s.endswith("=F"):
        return EXCHANGES["FUTURES"]
    if s.startswith("^"):
        return EXCHANGES[INDICES[s]] if s in INDICES else UNKNOWN
    if "." in s:
        key = SUFFIXES.get(s.rsplit(".", 1)[1])
        return EXCHANGES[key] if key else UNKNOWN
    base, _, quote = s.rpartition("-")
    if base and quote in CRYPTO_QUOTES:
        return EXCHANGES["CRYPTO"]
    if _PLAIN_US.fullmatch(s):
        return EXCHANGES["XNYS"]
    return UNKNOWN
