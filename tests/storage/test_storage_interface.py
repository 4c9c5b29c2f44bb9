"""The two formats are siblings behind one interface (storage.store.Store), not a class and its
subclass (issue 13)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from ktrdr_collect.storage.csv_store import CsvStore
from ktrdr_collect.storage.store import Store


def public_methods(cls: type) -> set[str]:
    return {name for name, _ in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_")}


def test_csv_and_parquet_are_siblings_with_the_same_interface(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    from ktrdr_collect.storage.parquet_store import ParquetStore

    assert not issubclass(ParquetStore, CsvStore) and not issubclass(CsvStore, ParquetStore)
    protocol = {name for name in dir(Store) if not name.startswith("_") and callable(getattr(Store, name))}
    for cls in (CsvStore, ParquetStore):
        store = cls(tmp_path)
        assert isinstance(store, Store)
        assert protocol <= public_methods(cls), protocol - public_methods(cls)
        assert (store.format, store.suffix) == {"CsvStore": ("csv", ".csv"),
                                                "ParquetStore": ("parquet", ".parquet")}[cls.__name__]
    assert public_methods(CsvStore) == public_methods(ParquetStore)
    csv, parquet = CsvStore(tmp_path), ParquetStore(tmp_path)
    key = ("demo", "1d", "AAPL")
    assert csv.coverage_path(*key).name == "AAPL.coverage.json"
    assert parquet.coverage_path(*key).name == "AAPL.parquet.coverage.json"  # never shared
    assert csv.lock_path(*key) != parquet.lock_path(*key)
