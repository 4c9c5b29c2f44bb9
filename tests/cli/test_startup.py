"""`collect --help` and `status` stay quick: the bar hot path's libraries (numpy, msgspec) and the
optional heavy ones are imported only by what writes or reads bars (issue 12's base install)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("numpy", "msgspec", "pyarrow", "polars", "duckdb", "dask", "urllib3", "curl_cffi", "redis")


@pytest.mark.parametrize("args", [["--help"], ["status"], ["providers"]])
def test_quick_commands_import_no_heavy_library(args: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "KTRDR_COLLECT_HOME": str(tmp_path), "NO_COLOR": "1"}
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "ktrdr_collect", *args],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in r.stderr.splitlines() if "|" in line}
    assert "ktrdr_collect" in imported  # the import log is there to be read
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
