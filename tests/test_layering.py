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


def test_the_import_parser_sees_relative_and_lazy_imports():
    fake = PACKAGE / "search" / "objective.py"  # a module known to import from measure/
    assert "autosqueeze.measure.paired" in imported_modules(fake)
    assert violations([fake], ("autosqueeze.measure",))  # so the checks below can fail


def source_of(name: str) -> Path | None:
    rel = Path(*name.split(".")[1:])
    for candidate in (PACKAGE / rel.with_suffix(".py"), PACKAGE / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def reachable(start: Path) -> set[Path]:
    """Every package file ``start`` imports, directly or through other package modules."""
    seen, todo = {start}, [start]
    while todo:
        for name in imported_modules(todo.pop()):
            parts = name.split(".")
            # importing a.b.c runs a.b's __init__ too
            for src in (source_of(".".join(parts[:i])) for i in range(2, len(parts) + 1)):
                if src is not None and src not in seen and parts[0] == "autosqueeze":
                    seen.add(src)
                    todo.append(src)
    return seen


def test_apply_reaches_into_neither_search_nor_report():
    assert (PACKAGE / "apply.py").is_file() and not (PACKAGE / "rebuild.py").exists()
    assert violations(modules("apply.py"), ("autosqueeze.search", "autosqueeze.report")) == []
    through = sorted(module_name(p) for p in reachable(PACKAGE / "apply.py"))  # not even through another module
    assert {"autosqueeze.builder", "autosqueeze.artifact"} <= set(through)
    assert [m for m in through if m.startswith(("autosqueeze.search", "autosqueeze.report"))] == []


@pytest.mark.parametrize("forbidden", ["autosqueeze.search", "autosqueeze.report", "autosqueeze.cli",
                                       "autosqueeze.apply"])
def test_measure_is_below_search_report_and_the_commands(forbidden):
    assert violations(modules("measure"), (forbidden,)) == []


def test_nothing_imports_the_cli():
    users = [p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py" and module_name(p) != "autosqueeze.cli"]
    assert violations(users, ("autosqueeze.cli",)) == []


def test_search_reaches_methods_only_through_the_registry_and_the_context():
    """Teacher outputs, the layer map and the early stopper travel as typed MethodContext fields:
    search/ imports no method module's internals (distill's cache, ...)."""
    # decompose_svd's shape check reaches search/validate.py through the registry (MethodSpec.check_shapes)
    methods = sorted(p.stem for p in (PACKAGE / "methods").glob("*.py")
                     if p.stem not in ("__init__", "context", "registry"))
    assert "distill" in methods and "decompose_svd" in methods
    assert violations(modules("search"), tuple(f"autosqueeze.methods.{m}" for m in methods)) == []


def test_search_is_below_the_report_and_the_commands():
    """The search picks its final candidates with search.pareto, not the report's."""
    assert violations(modules("search"), ("autosqueeze.report", "autosqueeze.apply", "autosqueeze.bench",
                                          "autosqueeze.cli")) == []


def test_the_builder_and_everything_below_the_search_import_nothing_above():
    """build, artifact, runtimes, methods, measure, models ... import neither search/, report/ nor a command."""
    above = ("search", "report", "apply.py", "bench.py", "cli.py", "cli_args.py", "__init__.py", "__main__.py")
    below = [p for p in PACKAGE.rglob("*.py") if str(p.relative_to(PACKAGE)).partition("/")[0] not in above]
    assert {PACKAGE / "builder.py", PACKAGE / "artifact.py", PACKAGE / "runtimes" / "onnx_export.py"} <= set(below)
    assert violations(below, ("autosqueeze.search", "autosqueeze.report", "autosqueeze.apply", "autosqueeze.bench",
                              "autosqueeze.cli")) == []


def test_report_reads_studies_through_storage_and_the_trial_record_only():
    """The report opens a study with search.storage (no sampler), reads trials as TrialRecord and
    takes the front from search.pareto: nothing of the search itself (study, objective, space)."""
    allowed = ("autosqueeze.search.storage", "autosqueeze.search.trial_record", "autosqueeze.search.pareto")
    used = sorted(f"{module_name(p)} imports {m}" for p in modules("report") for m in imported_modules(p)
                  if (m == "autosqueeze.search" or m.startswith("autosqueeze.search."))
                  and not any(m == a or m.startswith(a + ".") for a in allowed))
    assert used == []
