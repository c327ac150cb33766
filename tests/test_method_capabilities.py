"""What a method can do is declared in its registry entry, and what a built model can say about
itself is a protocol of ``autosqueeze.capabilities``: the code outside ``methods/`` asks these,
never a method's name (``tests/test_layering.py`` checks the names). Tiny models, seconds each."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from autosqueeze.capabilities import ExitStats, LookupTables, LowPrecision, RealInputs, RuntimeBound, StoredSize
from autosqueeze.errors import ConfigError, UnsupportedArchitectureError
from autosqueeze.measure import model_size
from autosqueeze.measure.assessment import Measurement
from autosqueeze.measure.latency import needs_real_inputs
from autosqueeze.methods import (
    MethodError,
    get_method,
    graph_int8_methods,
    int8_reference,
    method_specs,
    recovery_method,
    registry,
)
from autosqueeze.methods.hooks import Prepared, StudyInputs
from autosqueeze.recipe import Recipe, Step, apply_recipe
from autosqueeze.runtimes import RuntimeRefused, check_runtime, offered_runtimes, step_refusal
from autosqueeze.search.trial_result import TrialResult
from autosqueeze.study_config import FinalizeSettings
from tests import tiny

BOTH = ("torch", "onnxruntime")


# --- the roles there is one of --------------------------------------------------------------
def test_the_roles_there_is_one_of_are_declared_once():
    assert int8_reference().name == "quantize_dynamic" and int8_reference().graph_int8 == "dynamic"
    assert recovery_method().name == "distill" and recovery_method().trains
    assert graph_int8_methods() == ("quantize_dynamic", "quantize_static")
    assert get_method("quantize_static").graph_int8 == "static"
    assert [s.name for s in method_specs() if s.study is not None] == ["elastic"]
    assert [s.name for s in method_specs() if s.final_as_is] == ["qat"]
    assert [s.name for s in method_specs() if s.legacy_units] == ["cast_precision"]


def test_a_missing_or_doubled_role_is_an_error(monkeypatch):
    distill = get_method("distill")
    monkeypatch.setitem(registry._REGISTRY, "distill", dataclasses.replace(distill, recovery=None))
    with pytest.raises(MethodError, match="0 registered methods are the recovery step"):
        recovery_method()
    monkeypatch.setitem(registry._REGISTRY, "quantize_static",
                        dataclasses.replace(get_method("quantize_static"), int8_reference=True))
    with pytest.raises(MethodError, match="2 registered methods are the int8 reference"):
        int8_reference()


# --- runtimes ---------------------------------------------------------------------------------
def test_runtime_limits_refuse_what_no_onnx_graph_expresses():
    early = get_method("early_exit")
    assert early.runtime_refusal({}, "onnxruntime") == \
        "early exit decides its depth per batch: an ONNX graph would freeze one path"
    assert early.runtime_refusal({}, "torch") is None
    sparse = get_method("prune_unstructured")
    assert sparse.runtime_refusal({"kernel": "csr"}, "onnxruntime") == "CSR sparse kernels have no ONNX operator"
    assert sparse.runtime_refusal({"kernel": "dense"}, "onnxruntime") is None
    assert sparse.runtime_refusal({"kernel": "csr"}, "torch") is None
    assert sparse.runtime_refusal({"kernel": "no such kernel"}, "onnxruntime") is None  # the config check says why
    # the order: the method's own runtime first, then its units, then its limits
    assert get_method("quantize_static").runtime_refusal({}, "torch") == "quantize_static deploys only with onnxruntime"
    assert step_refusal("cast_precision", {"dtype": "bf16"}, "onnxruntime").startswith("ONNX Runtime's CPU")
    assert offered_runtimes([Step("prune_unstructured", {"kernel": "csr", "sparsity": 0.5})], BOTH) == ["torch"]


def test_runtime_limits_are_read_from_the_entry(monkeypatch):
    """A limit declared in an entry is what step_refusal answers (no name known to runtimes/)."""
    spec = get_method("drop_layers")
    assert step_refusal("drop_layers", {"keep": 1}, "onnxruntime") is None
    monkeypatch.setitem(registry._REGISTRY, "drop_layers",
                        dataclasses.replace(spec, runtime_limits=lambda c: {"onnxruntime": f"keep {c.keep}: no"}))
    assert step_refusal("drop_layers", {"keep": 1}, "onnxruntime") == "keep 1: no"
    assert offered_runtimes([Step("drop_layers", {"keep": 1})], BOTH) == ["torch"]


# --- architectures -----------------------------------------------------------------------------
def test_a_model_the_entry_refuses_and_a_family_that_refuses_the_method():
    elastic = get_method("elastic")
    deberta = tiny.tiny_model("deberta-v2")
    assert elastic.refusal(deberta) is None  # shared attention keys: the student slices it
    deberta.config.share_att_key = False
    separate = type(deberta)(deberta.config).eval()
    why = elastic.refusal(separate)
    assert why is not None and "share_att_key: false" in why
    with pytest.raises(UnsupportedArchitectureError, match=r"^elastic is not supported for deberta-v2 models: its "):
        elastic.check_model(separate)
    modern = tiny.tiny_model("modernbert")
    assert "fused Wqkv" in (elastic.refusal(modern) or "")  # the family's own list (arch/families.py)
    assert get_method("drop_layers").refusal(separate) is None and get_method("drop_layers").refusal(modern) is None
    with pytest.raises(UnsupportedArchitectureError, match="^early_exit is not supported for modernbert models"):
        apply_recipe(Recipe(steps=[Step("early_exit", {})]), modern, tiny.context(modern))


# --- what a method adds to the model's size ----------------------------------------------------
def test_size_modules_are_declared_protocol_classes():
    declared = {cls for spec in method_specs() for cls in spec.size_modules}
    assert {c.__name__ for c in declared} == {"SparseLinear", "WeightOnlyLinear", "WeightOnlyEmbedding",
                                              "StaticInt8Linear", "PrunedVocabEmbedding"}
    for cls in declared:  # declared as a base, not only shaped like one
        assert StoredSize in cls.__mro__ or LookupTables in cls.__mro__, cls


def test_a_module_that_stores_its_own_format_is_counted_by_what_it_says(monkeypatch):
    teacher = tiny.tiny_bert()
    model, _ = apply_recipe(Recipe(steps=[Step("quantize_weights", {"bits": 4})]), teacher, tiny.context(teacher))
    own = [m for m in model.modules() if isinstance(m, StoredSize)]
    assert own and all(isinstance(m, get_method("quantize_weights").size_modules) for m in own)
    assert all(isinstance(m, LowPrecision) and m.autosqueeze_quantized for m in own)
    size = model_size(model)
    said = sum(m.autosqueeze_nbytes() for m in own), sum(m.autosqueeze_params() for m in own)
    for cls in {type(m) for m in own}:  # the modules say something else: the size follows what they say
        monkeypatch.setattr(cls, "autosqueeze_nbytes", lambda self: 1000)
        monkeypatch.setattr(cls, "autosqueeze_params", lambda self: 7)
    again = model_size(model)
    assert again.total_bytes == size.total_bytes - said[0] + 1000 * len(own)
    assert again.params == size.params - said[1] + 7 * len(own)
    assert not isinstance(torch.nn.Linear(2, 2), (StoredSize, LookupTables, LowPrecision))


def test_lookup_tables_count_in_bytes_not_weights():
    from autosqueeze.measure.size import _module_cost
    from autosqueeze.methods.prune_vocab import PrunedVocabEmbedding

    emb = PrunedVocabEmbedding(torch.nn.Embedding(10, 4), torch.arange(50) % 10)
    assert isinstance(emb, LookupTables) and emb.autosqueeze_lookup_buffers == ("remap",)
    assert _module_cost(emb, {}) == (40, 40 * 4 + 50 * 4)  # the table's 40 weights, and the int32 map's 50 ids


# --- a built model's own flags ---------------------------------------------------------------
def test_early_exit_and_static_int8_models_declare_themselves():
    teacher = tiny.tiny_bert()
    plain, _ = apply_recipe(Recipe(steps=[Step("drop_layers", {"keep": 2})]), teacher, tiny.context(teacher))
    assert not isinstance(plain, (RealInputs, ExitStats, RuntimeBound)) and not needs_real_inputs(plain)
    early, _ = apply_recipe(Recipe(steps=[Step("early_exit", {"steps": 0})]), teacher, tiny.context(teacher))
    assert isinstance(early, RealInputs) and isinstance(early, ExitStats) and needs_real_inputs(early)
    early.autosqueeze_reset_exit_stats()
    assert early.autosqueeze_exit_stats()["calls"] == 0
    static, _ = apply_recipe(Recipe(steps=[Step("quantize_static", {"sentences": 4})]), teacher,
                             tiny.context(teacher))
    assert isinstance(static, RuntimeBound) and static.autosqueeze_requires_runtime == "onnxruntime"
    with pytest.raises(RuntimeRefused, match="^quantize_static needs runtime onnxruntime"):
        check_runtime(static, "torch")
    check_runtime(static, "onnxruntime")
    check_runtime(plain, "torch")


# --- finalize: the recovery step -----------------------------------------------------------------
def test_finalize_retrains_through_the_recovery_entry(monkeypatch):
    from autosqueeze.search.finalize import final_recipe

    budget = FinalizeSettings(steps=7, lr=1e-4, temperature=2.0, alpha_hidden=0.5, bf16=True)
    sliced = Recipe(steps=[Step("drop_layers", {"keep": 2}), Step("quantize_dynamic", {})])
    got = final_recipe(sliced, budget)
    assert [s.method for s in got.steps] == ["drop_layers", "distill", "quantize_dynamic"]
    assert got.steps[1].params == {"steps": 7, "lr": 1e-4, "temperature": 2.0, "alpha_logits": 1.0,
                                   "alpha_hidden": 0.5, "bf16": True}
    own = Recipe(steps=[Step("drop_layers", {"keep": 2}), Step("distill", {"steps": 3, "temperature": 4.0})])
    assert final_recipe(own, dataclasses.replace(budget, bf16=False)).steps[1].params == \
        {"steps": 7, "temperature": 4.0}
    qat = Recipe(steps=[Step("drop_layers", {"keep": 2}), Step("qat", {"steps": 2})])
    assert final_recipe(qat, budget) is qat  # final_as_is
    monkeypatch.setitem(registry._REGISTRY, "qat", dataclasses.replace(get_method("qat"), final_as_is=False))
    assert [s.method for s in final_recipe(qat, budget).steps] == ["drop_layers", "distill", "qat"]


# --- the study hook: the elastic student ------------------------------------------------------
@dataclass(frozen=True)
class Planned:  # a space step as the hook sees it (search.space.StepSpace is one)
    id: str
    method: str
    values: dict[str, tuple[Any, ...]]

    def may_take(self, param: str) -> tuple[Any, ...]:
        return self.values.get(param, ())


def test_the_elastic_hook_settles_the_exits_by_the_space():
    from autosqueeze.elastic.train import ElasticSettings

    settle = get_method("elastic").study.settle  # type: ignore[union-attr]
    assert settle is not None
    exits = Planned("exits", "early_exit", {"training": ("joint", "elastic")})
    sliced = Planned("slice", "elastic", {})
    left_out = ElasticSettings(exits=None)
    assert settle([sliced], left_out, "space.yaml", "study.yaml") is left_out  # nothing asks for exits
    assert settle([sliced, exits], left_out, "space.yaml", "study.yaml").exits is True
    on = ElasticSettings(exits=True)
    assert settle([sliced, exits], on, "space.yaml", "study.yaml") is on
    with pytest.raises(ConfigError, match=r"^space.yaml: step 'exits' .*needs an elastic step before it"):
        settle([exits], left_out, "space.yaml", "study.yaml")
    with pytest.raises(ConfigError, match=r"elastic: \{exits: true\} in study.yaml"):
        settle([sliced, exits], ElasticSettings(exits=False), "space.yaml", "study.yaml")


def test_the_elastic_hook_prepares_binds_and_ensures(monkeypatch):
    from autosqueeze import apply as apply_mod
    from autosqueeze.elastic import store
    from autosqueeze.elastic.train import ElasticSettings
    from autosqueeze.search.objective import bind_prepared

    made: list[Any] = []

    def fake_student(teacher, teacher_hash, data, settings, train_subset, progress):
        made.append((teacher_hash, settings, train_subset))
        return SimpleNamespace(key="sst2-0123456789ab", info={"train_s": 12.5})

    monkeypatch.setattr("autosqueeze.elastic.get_elastic_student", fake_student)
    teacher = tiny.tiny_bert()
    inputs = StudyInputs(teacher=teacher, teacher_hash="abc", data=SimpleNamespace(), train_subset=64)  # type: ignore[arg-type]
    settings = ElasticSettings(steps=3)
    prepared = get_method("elastic").study.prepare(inputs, settings)  # type: ignore[union-attr]
    assert prepared == Prepared(params={"student": "sst2-0123456789ab"},
                                record={"key": "sst2-0123456789ab", "settings": settings.to_dict(), "train_s": 12.5})
    assert made == [("abc", settings, 64)]
    recipe = Recipe(steps=[Step("elastic", {"layers": 2}), Step("quantize_dynamic", {})])
    bound = bind_prepared(recipe, {"elastic": prepared.params})
    assert bound.steps[0].params == {"layers": 2, "student": "sst2-0123456789ab"} and bound.steps[1] == recipe.steps[1]
    assert bind_prepared(Recipe(steps=[Step("drop_layers", {"keep": 1})]), {}).steps[0].params == {"keep": 1}
    with pytest.raises(RuntimeError, match="elastic steps but the study prepared nothing"):
        bind_prepared(recipe, {})
    ensured: list[Any] = []
    monkeypatch.setattr(store, "ensure_students", lambda keys, record, *rest: ensured.append((keys, record)))
    bound.teacher = {"elastic": prepared.record}
    apply_mod.ensure_prepared(bound, inputs)
    assert ensured == [({"sst2-0123456789ab"}, prepared.record)]
    apply_mod.ensure_prepared(Recipe(steps=[Step("drop_layers", {"keep": 1})]), inputs)
    assert len(ensured) == 1  # no hooked step: nothing to make


# --- evaluate_recipe's typed result ------------------------------------------------------------
def test_a_trial_result_stores_the_attributes_a_trial_always_stored():
    measured = Measurement.from_dict({"runtime": "torch", "metric": 0.8, "metrics": {"accuracy": 0.8},
                                      "latency_ms": 5.0, "speedup": 2.0, "speedup_spread": {"p10": 1.9, "p90": 2.1},
                                      "baseline_ms": 10.0})
    result = TrialResult("complete", measured, probe_s=1.0, trial_s=3.0, early_stop=[])
    stored = result.to_dict()
    assert stored == {**measured.to_dict(), "status": "complete", "probe_s": 1.0, "trial_s": 3.0, "early_stop": []}
    assert result.metric == 0.8 and result.latency_ms == 5.0 and result.speedup == 2.0
    again = TrialResult.from_dict({**stored, "unknown_key": 1})
    assert again.to_dict() == {**stored, "unknown_key": 1} and again.status == "complete"
    over = TrialResult("over_budget", dataclasses.replace(measured, metric=None, metrics=None), probe_s=1.0)
    assert "metric" not in over.to_dict() and over.metric is None and "stopped_at" not in over.to_dict()
