"""Every registered method on every supported architecture: config round-trip, apply on a tiny
random model of that architecture, forward pass, declared effect — or a one-line refusal.

Each method has a case file ``tests/cases/case_<method>.py`` with ``CASES`` (a list of
params dicts) and ``check(teacher, model, config, decisions)`` that asserts the effect the
method claims (fewer layers, int8 weights, unchanged output when lossless …), written against
the architecture adapter so it holds for every family in ``tiny.ARCHS``. A registered method
without a case file fails this test. A method the registry entry refuses for a model
(``MethodSpec.refusal``: its family's refusal, or the entry's own) must be refused by
``apply_recipe`` with one line naming both. The modules a method adds that say what they add to
the model's size (``capabilities.StoredSize`` / ``LookupTables``) are those its entry declares.
"""
from __future__ import annotations

import importlib

import pytest
import torch

from autosqueeze.arch import UnsupportedArchitectureError, get_adapter
from autosqueeze.capabilities import LookupTables, StoredSize
from autosqueeze.methods import get_method, method_names
from autosqueeze.recipe import Recipe, Step, apply_recipe
from tests import tiny


def _cases():
    out = []
    for name in method_names():
        try:
            mod = importlib.import_module(f"tests.cases.case_{name}")
        except ModuleNotFoundError:
            out.append(pytest.param("bert", name, None, None, id=f"{name}-missing"))
            continue
        for arch in tiny.ARCHS:
            for i, params in enumerate(mod.CASES):
                known = KNOWN_GAPS.get(f"{arch}-{name}-{i}")
                marks = [pytest.mark.xfail(reason=known, strict=True)] if known else []
                out.append(pytest.param(arch, name, params, mod, id=f"{arch}-{name}-{i}", marks=marks))
    return out


# Case ids ("<arch>-<method>-<i>") expected to fail, each with the reason (strict xfail). Empty: the
# quantizers' checks compare logits relative to the teacher's logit scale (tiny random ModernBERT's
# LayerNorm head puts its logits ~100x above BERT's tanh pooler) and against an independent rounding.
KNOWN_GAPS: dict[str, str] = {}


def make_teacher(case, arch: str):
    maker = getattr(case, "make_teacher", None)
    return maker(arch) if maker is not None else tiny.tiny_model(arch)


def assert_refused(name: str, err: Exception, teacher) -> None:
    text = str(err)
    family = get_adapter(teacher).family
    assert "\n" not in text and name in text and family in text and len(text) < 300, text


@pytest.mark.parametrize("arch,name,params,case", _cases())
def test_method_contract(arch, name, params, case, tmp_path, monkeypatch):
    assert case is not None, f"method {name!r} has no tests/cases/case_{name}.py"
    teacher = make_teacher(case, arch)
    if get_method(name).refusal(teacher) is not None:
        recipe = Recipe(steps=[Step(name, params)])
        with pytest.raises(UnsupportedArchitectureError) as err:
            apply_recipe(recipe, teacher, tiny.context(teacher))
        assert_refused(name, err.value, teacher)
        return
    if hasattr(case, "prepare"):  # a case that needs more than params (elastic: a cached student)
        params = case.prepare(params, tmp_path, monkeypatch, make_teacher(case, arch))
    spec = get_method(name)
    config = spec.make_config(params)
    # round trip through a recipe file
    recipe = Recipe(steps=[Step(name, params, spec.version)])
    recipe.save(tmp_path / "r.yaml")
    from autosqueeze.recipe import load_recipe

    assert load_recipe(tmp_path / "r.yaml") == recipe
    assert Step(name, params, spec.version).normalized().config() == config
    # apply on the tiny model
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
    # the modules that say what they add to the model's size are the ones its registry entry declares
    undeclared = {type(m).__name__ for m in model.modules()
                  if isinstance(m, (StoredSize, LookupTables)) and not isinstance(m, spec.size_modules)}
    assert not undeclared, f"{name} adds {undeclared}, which its registry entry's size_modules does not declare"


def test_unknown_method_and_param_are_refused():
    from autosqueeze.methods import MethodError

    with pytest.raises(MethodError, match="unknown method"):
        get_method("no_such_method")
    with pytest.raises(MethodError, match="no parameter"):
        get_method("drop_layers").make_config({"keep": 2, "bogus": 1})


def test_unsupported_architecture_is_one_line():
    with pytest.raises(UnsupportedArchitectureError, match=r"^architecture 'gpt2' is not supported; supported "
                                                           r"model types: .*modernbert.*mpnet"):
        get_adapter("gpt2")
