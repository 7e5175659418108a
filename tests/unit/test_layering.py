"""The arrows point down: the `dyff` library imports neither app (`controller`, `api_shim`),
and the Pod entry point of the runtime image needs nothing but the library."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APPS = ("controller", "api_shim")


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` or `from … import` in the file names, at any depth."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_the_library_imports_no_app() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            m for m in imported_modules(path) if m.split(".")[0] in APPS
        )
        for path in sorted((ROOT / "dyff").rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from controller.local import LocalDriver\n")
    assert "controller.local" in imported_modules(bad)
