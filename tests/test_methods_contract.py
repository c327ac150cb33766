"""Every registered method: config round-trip, apply on a tiny BERT, forward pass, declared effect.

Each method has a case file ``tests/cases/case_<method>.py`` with ``CASES`` (a list of
params dicts) and ``check(teacher, model, config, decisions)`` that asserts the effect the
method claims (fewer layers, int8 weights, unchanged output when lossless …). A registered
method without a case file fails this test.
"""
from __future__ import annotations

import importlib

import pytest
import torch

from autosqueeze.methods import get_method, method_names
from autosqueeze.recipe import Recipe, Step, apply_recipe
from tests import tiny


def _cases():
    out = []
    for name in method_names():
        try:
            mod = importlib.import_module(f"tests.cases.case_{name}")
        except ModuleNotFoundError:
            out.append(pytest.param(name, None, None, id=f"{name}-missing"))
            continue
        for i, params in enumerate(mod.CASES):
            out.append(pytest.param(name, params, mod, id=f"{name}-{i}"))
    return out


@pytest.mark.parametrize("name,params,case", _cases())
def test_method_contract(name, params, case, tmp_path, monkeypatch):
    assert case is not None, f"method {name!r} has no tests/cases/case_{name}.py"
    if hasattr(case, "prepare"):  # a case that needs more than params (elastic: a cached student)
        params = case.prepare(params, tmp_path, monkeypatch)
    spec = get_method(name)
    config = spec.make_config(params)
    # round trip through a recipe file
    recipe = Recipe(steps=[Step(name, params, spec.version)])
    recipe.save(tmp_path / "r.yaml")
    from autosqueeze.recipe import load_recipe

    assert load_recipe(tmp_path / "r.yaml") == recipe
    assert Step(name, params, spec.version).normalized().config() == config
    # apply on a tiny BERT
    teacher = getattr(case, "make_teacher", tiny.tiny_bert)()
    before = {k: v.clone() for k, v in teacher.state_dict().items() if isinstance(v, torch.Tensor)}
    model, decisions = apply_recipe(recipe, teacher, tiny.context(teacher))
    for k, v in teacher.state_dict().items():  # the teacher is never modified
        if isinstance(v, torch.Tensor):
            assert torch.equal(before[k], v), f"{name} modified the teacher's {k}"
    b = tiny.batch()
    out = tiny.logits(model, b)
    assert out.shape == (b["input_ids"].shape[0], teacher.config.num_labels)
    assert torch.isfinite(out).all()
    case.check(teacher, model, config, decisions[0])


def test_unknown_method_and_param_are_refused():
    from autosqueeze.methods import MethodError

    with pytest.raises(MethodError, match="unknown method"):
        get_method("no_such_method")
    with pytest.raises(MethodError, match="no parameter"):
        get_method("drop_layers").make_config({"keep": 2, "bogus": 1})
