"""The public API: every name in ``autosqueeze.__all__`` imports, and ``import autosqueeze`` is cheap."""
from __future__ import annotations

import subprocess
import sys

import pytest

import autosqueeze


@pytest.mark.parametrize("name", autosqueeze.__all__)
def test_every_public_name_imports(name):
    assert getattr(autosqueeze, name) is not None
    assert name in dir(autosqueeze)


def test_all_lists_exactly_the_lazy_names():
    assert len(set(autosqueeze.__all__)) == len(autosqueeze.__all__)
    assert set(autosqueeze.__all__) == {"__version__", "load"} | set(autosqueeze._EXPORTS)


def test_star_import_and_unknown_names():
    namespace: dict = {}
    exec("from autosqueeze import *", namespace)
    assert {"load", "Recipe", "Step", "build", "run_search", "load_study_config", "get_teacher",
            "rebuild"} <= set(namespace)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        autosqueeze.nope  # noqa: B018


def test_names_are_the_defining_modules_objects():
    from autosqueeze.apply import rebuild
    from autosqueeze.builder import build
    from autosqueeze.recipe import Recipe

    assert autosqueeze.Recipe is Recipe and autosqueeze.build is build and autosqueeze.rebuild is rebuild


def test_import_is_lazy():
    code = "import sys, autosqueeze; print(sorted(m for m in ('torch', 'optuna', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
