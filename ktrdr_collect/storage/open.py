"""Pick the data store for a `--format`."""

from __future__ import annotations

from pathlib import Path

from ktrdr_collect.errors import InvalidInputError
from ktrdr_collect.storage.csv_store import CsvStore

FORMATS = ("csv", "parquet")


def open_store(fmt: str, root: Path) -> CsvStore:
    if fmt == "csv":
        return CsvStore(root)
    if fmt == "parquet":
        raise InvalidInputError(
            "--format parquet is not available yet in this version; use --format csv"
        )
    raise InvalidInputError(f"unknown format '{fmt}' (choose from: {', '.join(FORMATS)})")
