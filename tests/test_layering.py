"""The layering rule (ARCHITECTURE.md): modules import only down the flow.

Parsed from the source (every ``import`` statement, function-level ones included), so a lazy
import inside a function counts the same as one at the top.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "autosqueeze"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (``from .x import y`` gives ``...x`` and ``...x.y``)."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            out.add(prefix)
            out.update(f"{prefix}.{alias.name}" for alias in node.names)
    return out


def modules(*relative: str) -> list[Path]:
    found: list[Path] = []
    for rel in relative:
        p = PACKAGE / rel
        found += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return found


def violations(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{module_name(p)} imports {m}" for p in paths for m in imported_modules(p)
                  if any(m == f or m.startswith(f + ".") for f in forbidden))


def test_the_import_parser_sees_relative_and_lazy_imports(tmp_path):
    fake = PACKAGE / "search" / "objective.py"  # a module known to import from measure/
    assert "autosqueeze.measure.paired" in imported_modules(fake)
    assert violations([fake], ("autosqueeze.measure",))  # so the checks below can fail


def test_apply_reaches_into_neither_search_nor_report():
    assert (PACKAGE / "apply.py").is_file() and not (PACKAGE / "rebuild.py").exists()
    assert violations(modules("apply.py"), ("autosqueeze.search", "autosqueeze.report")) == []


@pytest.mark.parametrize("forbidden", ["autosqueeze.search", "autosqueeze.report", "autosqueeze.cli",
                                       "autosqueeze.apply"])
def test_measure_is_below_search_report_and_the_commands(forbidden):
    assert violations(modules("measure"), (forbidden,)) == []


def test_nothing_imports_the_cli():
    users = [p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py" and module_name(p) != "autosqueeze.cli"]
    assert violations(users, ("autosqueeze.cli",)) == []
