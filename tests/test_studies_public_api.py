"""The study scripts (studies/) use autosqueeze's public API only: ``from autosqueeze import NAME``
with NAME in ``autosqueeze.__all__``, never a submodule (``autosqueeze.search.study``, ...)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import autosqueeze

STUDIES = Path(__file__).resolve().parent.parent / "studies"
SCRIPTS = sorted(STUDIES.rglob("*.py"))
SUBMODULE = re.compile(r"^\s*(from\s+autosqueeze\.\w|import\s+autosqueeze\.\w)", re.M)


def test_there_are_scripts():
    assert len(SCRIPTS) >= 10 and STUDIES / "headline" / "run.py" in SCRIPTS


def not_public(source: str, name: str = "<script>") -> list[str]:
    """Each import in ``source`` (function-level ones too) that is not a public name of autosqueeze."""
    bad = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.startswith("autosqueeze."):
                bad.append(f"line {node.lineno}: from {node.module} import ...")
            elif node.module == "autosqueeze":
                bad += [f"line {node.lineno}: {a.name} is not in autosqueeze.__all__" for a in node.names
                        if a.name not in autosqueeze.__all__]
        elif isinstance(node, ast.Import):
            bad += [f"line {node.lineno}: import {a.name}" for a in node.names if a.name.startswith("autosqueeze.")]
    return bad


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(STUDIES)))
def test_a_script_imports_public_names_only(path: Path) -> None:
    assert not_public(path.read_text(), str(path)) == []


@pytest.mark.parametrize("path", sorted(p for p in STUDIES.rglob("*") if p.suffix in (".sh", ".md", ".txt")
                                        and p.is_file() and p.stat().st_size < 1_000_000 and "results" not in p.parts),
                         ids=lambda p: str(p.relative_to(STUDIES)))
def test_embedded_python_imports_no_submodule(path: Path) -> None:
    """Shell scripts (and the code READMEs show) import the public API too."""
    assert SUBMODULE.findall(path.read_text(errors="replace")) == []


def test_the_check_sees_deep_imports_and_private_names() -> None:
    code = ("import autosqueeze\nimport autosqueeze.cli\nfrom autosqueeze import build, _EXPORTS\n"
            "def main():\n    from autosqueeze.search.study import prepare\n")
    assert not_public(code) == ["line 2: import autosqueeze.cli", "line 3: _EXPORTS is not in autosqueeze.__all__",
                                "line 5: from autosqueeze.search.study import ..."]
    assert len(SUBMODULE.findall(code)) == 2
    assert not_public("from autosqueeze import build, start_study_script\nimport autosqueeze as aq\n") == []


def test_a_script_starts_with_one_call(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """start_study_script: logging set, the study file read, the GLUE folder resolved on first use (the
    flag, else the study file's, else $AUTOSQUEEZE_GLUE_DIR), the machine described."""
    study = STUDIES / "headline" / "study.yaml"
    script = autosqueeze.start_study_script(study, str(tmp_path / "glue"))
    assert script.config.name == autosqueeze.load_study_config(study).name
    assert script.data_dir == str(tmp_path / "glue")
    monkeypatch.setenv("AUTOSQUEEZE_GLUE_DIR", str(tmp_path / "env"))
    expected = script.config.data_dir or str(tmp_path / "env")
    assert autosqueeze.StudyScript(script.config).data_dir == autosqueeze.resolve_data_dir(expected)
    machine = script.machine(threads=1, runtime="torch")
    assert machine == autosqueeze.hardware_fingerprint(1, "torch") or set(machine) == set(
        autosqueeze.hardware_fingerprint(1, "torch"))
