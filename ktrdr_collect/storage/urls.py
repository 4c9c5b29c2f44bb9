"""Data folders given as URLs (``s3://bucket/prefix``): told apart from local paths without
importing anything heavy.

A URL may arrive as a ``Path`` (the CLI's ``--data-dir`` option, ``config data_dir``), which
collapses ``s3://bucket`` into ``s3:/bucket``; both spellings are read as the same URL. A scheme
has at least two letters, so ``C:/data`` is never one; ``file://`` URLs are local folders.
"""

from __future__ import annotations

import re
from pathlib import Path

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/+(.*)$")


def as_url(root: str | Path) -> str | None:
    """``scheme://rest`` (no trailing slash) when ``root`` names an object store, else None
    (a local path, ``file://`` URLs included)."""
    m = _URL.match(str(root))
    if m is None or m.group(1).lower() == "file":
        return None
    return f"{m.group(1).lower()}://{m.group(2).strip('/')}"


def local_path(root: str | Path) -> Path:
    """A local data folder: ``file:///x`` is ``/x``; anything else is the path as given."""
    m = _URL.match(str(root))
    if m is not None and m.group(1).lower() == "file":
        return Path("/" + m.group(2).lstrip("/"))
    return Path(root)
