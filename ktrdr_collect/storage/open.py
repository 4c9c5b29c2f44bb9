"""Pick the data store for a `--format`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ktrdr_collect.errors import InvalidInputError, ProviderUnavailableError

if TYPE_CHECKING:
    from ktrdr_collect.storage.store import Store

FORMATS = ("csv", "parquet")
PARQUET_MISSING = "--format parquet needs pyarrow: pip install 'ktrdr-collect[parquet]'"


def open_store(fmt: str, root: Path) -> Store:
    """The store for ``fmt``: CsvStore or ParquetStore, siblings behind storage.store.Store."""
    if fmt == "csv":
        from ktrdr_collect.storage.csv_store import CsvStore

        return CsvStore(root)
    if fmt == "parquet":
        try:  # imported here, so that the base install never needs pyarrow
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise ProviderUnavailableError(PARQUET_MISSING) from None
        from ktrdr_collect.storage.parquet_store import ParquetStore

        return ParquetStore(root)
    raise InvalidInputError(f"unknown format '{fmt}' (choose from: {', '.join(FORMATS)})")
