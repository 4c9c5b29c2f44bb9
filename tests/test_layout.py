"""The architecture, checked: only cli/ touches typer or rich; the core knows nothing of jobs."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ktrdr_collect"


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def modules(*parts: str) -> list[Path]:
    return [p for part in parts for p in (PACKAGE / part).rglob("*.py")] if parts else list(PACKAGE.rglob("*.py"))


def test_only_cli_imports_typer_or_rich() -> None:
    offenders = [
        str(p.relative_to(PACKAGE)) for p in modules()
        if "cli" not in p.relative_to(PACKAGE).parts
        and any(n.split(".")[0] in ("typer", "rich", "click") for n in imports(p))
    ]
    assert offenders == []


def test_engine_providers_storage_know_nothing_of_jobs_or_cli() -> None:
    offenders = [
        str(p.relative_to(PACKAGE)) for p in modules("engine", "providers", "storage")
        if any(n.startswith(("ktrdr_collect.jobs", "ktrdr_collect.cli")) for n in imports(p))
    ]
    assert offenders == []


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install '.[test]')")
    root = PACKAGE.parent
    r = subprocess.run([ruff, "check", "ktrdr_collect", "tests", "bench"], cwd=root, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
