"""Pick the data store for a `--format`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ktrdr_collect.errors import InvalidInputError, ProviderUnavailableError
from ktrdr_collect.storage.urls import as_url, local_path

if TYPE_CHECKING:
    from ktrdr_collect.storage.store import Store

FORMATS = ("csv", "parquet")
PARQUET_MISSING = "--format parquet needs pyarrow: pip install 'ktrdr-collect[parquet]'"
CSV_NEEDS_FOLDER = "--format csv needs a local folder; use --format parquet for object storage (s3://...)"


def open_store(fmt: str, root: Path | str) -> Store:
    """The store for ``fmt``: CsvStore or ParquetStore, siblings behind storage.store.Store; for a
    URL root (``s3://bucket/prefix``), ObjectParquetStore (parquet only)."""
    url = as_url(root)
    if fmt == "csv":
        if url is not None:
            raise InvalidInputError(CSV_NEEDS_FOLDER)
        from ktrdr_collect.storage.csv_store import CsvStore

        return CsvStore(local_path(root))
    if fmt == "parquet":
        try:  # imported here, so that the base install never needs pyarrow
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise ProviderUnavailableError(PARQUET_MISSING) from None
        if url is not None:
            from ktrdr_collect.storage.object_store import ObjectParquetStore

            try:
                return ObjectParquetStore(url)  # type: ignore[return-value]  (URLs for paths)
            except ModuleNotFoundError as e:
                raise ProviderUnavailableError(str(e)) from None
            except ValueError as e:
                raise InvalidInputError(str(e)) from None
        from ktrdr_collect.storage.parquet_store import ParquetStore

        return ParquetStore(local_path(root))
    raise InvalidInputError(f"unknown format '{fmt}' (choose from: {', '.join(FORMATS)})")
