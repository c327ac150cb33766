"""The layering rule (ARCHITECTURE.md): modules import only down the flow.

Parsed from the source (every ``import`` statement, function-level ones included), so a lazy
import inside a function counts the same as one at the top.
"""
from __future__ import annotations

import ast
import re
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
    above = ("search", "report", "apply.py", "bench.py", "cli.py", "cli_args.py", "scripting.py", "__init__.py",
             "__main__.py")
    below = [p for p in PACKAGE.rglob("*.py") if str(p.relative_to(PACKAGE)).partition("/")[0] not in above]
    assert {PACKAGE / "builder.py", PACKAGE / "artifact.py", PACKAGE / "runtimes" / "onnx_export.py"} <= set(below)
    assert violations(below, ("autosqueeze.search", "autosqueeze.report", "autosqueeze.apply", "autosqueeze.bench",
                              "autosqueeze.cli")) == []


def test_report_reads_studies_through_storage_and_the_trial_record_only():
    """The report opens a study with search.storage (no sampler), reads trials as TrialRecord and
    takes the front from search.pareto: nothing of the search itself (study, objective, space)."""
    allowed = ("autosqueeze.search.storage", "autosqueeze.search.trial_record", "autosqueeze.search.study_record",
               "autosqueeze.search.pareto")
    used = sorted(f"{module_name(p)} imports {m}" for p in modules("report") for m in imported_modules(p)
                  if (m == "autosqueeze.search" or m.startswith("autosqueeze.search."))
                  and not any(m == a or m.startswith(a + ".") for a in allowed))
    assert used == []


# --- the import graph: no circles ------------------------------------------------------------
# The one pair of parts still importing each other's way, to be cut (then removed from here; a new
# pair fails the test): the elastic step (methods/elastic.py) and the elastic student (elastic/).
KNOWN_PACKAGE_PAIRS = [("elastic", "methods")]


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (lazy ones too). ``from . import sibling`` and the
    like do not count as importing the module's own parent packages (Python runs those first)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        me = module_name(path)
        parents = {".".join(me.split(".")[:i]) for i in range(1, me.count(".") + 1)}
        graph[me] = set()
        for name in imported_modules(path):
            if not name.startswith("autosqueeze."):
                continue
            src = source_of(name)
            target = module_name(src) if src is not None else None
            if target is not None and target != me and target not in parents:
                graph[me].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one node (Tarjan), each sorted, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def package_pairs(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Pairs of top-level parts of the package (``measure``, ``runtimes``, ``apply``, ...) that import each other."""
    def part(m: str) -> str:
        return m.split(".")[1] if "." in m else m

    edges = {(part(a), part(b)) for a, outs in graph.items() for b in outs if part(a) != part(b)}
    return sorted({tuple(sorted(e)) for e in edges if (e[1], e[0]) in edges})  # type: ignore[misc]


def test_the_circle_finder_sees_circles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(graph) == [["a", "b", "c"]]
    assert package_pairs({"x.m.one": {"x.r.two"}, "x.r.two": {"x.m.three"}, "x.m.three": set()}) == [("m", "r")]


def test_no_import_circles_between_modules():
    """arch/adapter and arch/runners, runtimes/onnx_export and runtimes/onnx_int8 (and fusion) no
    longer import each other (what they share is below them: errors.UnsupportedArchitectureError,
    runners.ArchAdapter as a protocol, runtimes/onnx_base.py); no module is on a circle."""
    graph = import_graph()
    assert "autosqueeze.arch.adapter" not in graph["autosqueeze.arch.runners"]
    assert "autosqueeze.runtimes.onnx_export" not in graph["autosqueeze.runtimes.onnx_int8"]
    assert "autosqueeze.runtimes.onnx_export" not in graph["autosqueeze.runtimes.fusion"]
    assert circles(graph) == []


def test_no_two_parts_of_the_package_import_each_other():
    """measure and runtimes, methods and measure: one way only (the known pair excepted)."""
    assert package_pairs(import_graph()) == KNOWN_PACKAGE_PAIRS


def test_measure_times_callables_only():
    """measure/ imports nothing of the runtimes, the methods, the elastic student, the builder or
    the saved folder: a runtime hands it a callable (runtimes.timing, runtimes.references)."""
    above = ("autosqueeze.runtimes", "autosqueeze.methods", "autosqueeze.elastic", "autosqueeze.builder",
             "autosqueeze.artifact")
    assert violations(modules("measure"), above) == []


# --- the runtime seam ------------------------------------------------------------------------
RUNTIME_BRANCH = re.compile(r"runtime\s*[!=]=")


def runtime_branches(paths: list[Path]) -> list[str]:
    """``file:line`` of every ``runtime ==`` / ``runtime !=`` comparison in ``paths``."""
    return [f"{p.relative_to(PACKAGE.parent)}:{n}" for p in paths
            for n, line in enumerate(p.read_text().splitlines(), 1) if RUNTIME_BRANCH.search(line)]


def test_the_runtime_branch_finder_sees_branches():
    fake = PACKAGE.parent / "tests" / "test_layering.py"  # this file writes one in its pattern's test
    assert runtime_branches([fake]) and RUNTIME_BRANCH.search('if profile.runtime == "onnxruntime":')


def test_no_runtime_branch_outside_the_runtimes():
    """Which runtime a model runs in is decided behind ``runtimes.deploy`` (a Deployment runs, evaluates
    and times itself) and the runtime objects of runtimes/deployment.py: nothing of the package outside
    runtimes/, and no study script, compares a runtime's name (``runtime ==`` / ``runtime !=``)."""
    outside = [p for p in PACKAGE.rglob("*.py") if "runtimes" not in p.relative_to(PACKAGE).parts]
    studies = sorted((PACKAGE.parent / "studies").rglob("*.py"))
    assert studies and outside
    assert runtime_branches(outside + studies) == []


# --- what a method can do is in its registry entry, not in its name ---------------------------
def registered_names() -> set[str]:
    """The built-in methods' names, read from their ``register("name", ...)`` calls (nothing imported)."""
    names = set()
    for path in modules("methods"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "register" \
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    return names


# Where a built-in method's name may be written outside methods/: file -> the names (and why). Names, not
# checks: data about an architecture, a study file's section, the export map's package path, a folder.
METHOD_NAMES_ALLOWED = {
    "arch/families.py": {"early_exit", "share_layers", "elastic"},  # ModernBERT's refused methods (checked below)
    "study_config.py": {"elastic"},  # the study file's ``elastic:`` settings section (a key)
    "__init__.py": {"elastic"},  # the export map: the autosqueeze.elastic package
    "elastic/store.py": {"elastic"},  # the students' cache folder, $AUTOSQUEEZE_CACHE/elastic (stored layout)
    "elastic/train.py": {"elastic"},  # the student's training progress label
}


def method_name_strings(paths: list[Path], names: set[str]) -> list[str]:
    """``file:line name`` of every string constant in ``paths`` that is exactly one of ``names``."""
    return sorted(f"{p.relative_to(PACKAGE)}:{node.lineno} {node.value}" for p in paths
                  for node in ast.walk(ast.parse(p.read_text(), str(p)))
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names
                  and node.value not in METHOD_NAMES_ALLOWED.get(str(p.relative_to(PACKAGE)), ()))


def test_the_method_name_finder_sees_names():
    names = registered_names()
    assert {"elastic", "distill", "quantize_dynamic", "early_exit", "prune_unstructured"} <= names
    assert len(names) >= 15
    found = method_name_strings([PACKAGE / "methods" / "distill.py"], names)  # a method's own module names it
    assert any(f.endswith(" distill") for f in found)
    assert method_name_strings([PACKAGE / "arch" / "families.py"], names) == []  # allowed there


def test_no_method_name_outside_the_methods():
    """Code outside methods/ asks a method's registry entry (``get_method(name)``: its stage, runtimes,
    study hook, int8 reference, recovery step ...), never compares or spells a built-in method's name,
    but in the few places listed in METHOD_NAMES_ALLOWED."""
    outside = [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] != "methods"]
    assert outside and all(set(v) <= registered_names() for v in METHOD_NAMES_ALLOWED.values())
    assert method_name_strings(outside, registered_names()) == []


def test_the_families_refuse_registered_methods_only():
    """An architecture's refused methods are names (data about the family), each a registered method."""
    refused = [n.elts[0].value for n in ast.walk(ast.parse((PACKAGE / "arch" / "families.py").read_text()))
               if isinstance(n, ast.keyword) and n.arg == "refused" and isinstance(n.value, ast.Tuple)
               for n in n.value.elts if isinstance(n, ast.Tuple) and isinstance(n.elts[0], ast.Constant)]
    assert refused and set(refused) <= registered_names()


# --- the capabilities protocol: declared once, read with isinstance -----------------------------
PROTOCOL_MODULE = PACKAGE / "capabilities.py"


def undeclared_attribute_uses(paths: list[Path]) -> list[str]:
    """``file:line`` of every ``getattr`` / ``hasattr`` / ``setattr`` / ``delattr`` of a literal
    ``"autosqueeze_..."`` name, and every assignment to an ``x.autosqueeze_...`` attribute."""
    out = []
    for p in paths:
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) >= 2 \
                    and node.func.id in ("getattr", "hasattr", "setattr", "delattr") \
                    and isinstance(node.args[1], ast.Constant) and str(node.args[1].value).startswith("autosqueeze_"):
                out.append(f"{p.name}:{node.lineno}")
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
            out += [f"{p.name}:{t.lineno}" for t in targets
                    if isinstance(t, ast.Attribute) and t.attr.startswith("autosqueeze_")]
    return sorted(out)


def test_the_attribute_finder_sees_undeclared_uses(tmp_path):
    fake = tmp_path / "fake.py"
    fake.write_text('a = getattr(m, "autosqueeze_nbytes", None)\nm.autosqueeze_needs_real_inputs = True\n'
                    'class C:\n    autosqueeze_quantized = True\n')
    assert undeclared_attribute_uses([fake]) == ["fake.py:1", "fake.py:2"]  # a class declaring one is not a use
    assert undeclared_attribute_uses([PROTOCOL_MODULE])  # where the setters live


def test_autosqueeze_attributes_only_through_the_protocol_module():
    """What a model or module says about itself (size, real inputs, exit counts, runtime, static int8
    ranges) is a protocol of autosqueeze/capabilities.py: read with isinstance, set through its setters;
    no module reads or sets an ``autosqueeze_*`` attribute by name. The protocol module imports nothing
    of the package (every layer may use it)."""
    others = [p for p in PACKAGE.rglob("*.py") if p != PROTOCOL_MODULE]
    assert undeclared_attribute_uses(others) == []
    assert [m for m in imported_modules(PROTOCOL_MODULE) if m.startswith("autosqueeze")] == []
