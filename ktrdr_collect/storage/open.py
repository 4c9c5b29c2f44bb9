"""Pick the data store for a `--format`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ktrdr_collect.errors import InvalidInputError

if TYPE_CHECKING:
    from ktrdr_collect.storage.csv_store import CsvStore

FORMATS = ("csv", "parquet")


def open_store(fmt: str, root: Path) -> CsvStore:
    if fmt == "csv":
        from ktrdr_collect.storage.csv_store import CsvStore

        return CsvStore(root)
    if fmt == "parquet":
        raise InvalidInputError(
            "--format parquet is not available yet in this version; use --format csv"
        )
    raise InvalidInputError(f"unknown format '{fmt}' (choose from: {', '.join(FORMATS)})")
