"""The seam from a built model to a runtime to a measurement: ``runtimes.deploy`` -> Deployment ->
``measure.assess`` -> Measurement, and a Measurement's round trip through trials and recipes."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autosqueeze.arch import get_adapter
from autosqueeze.builder import build
from autosqueeze.measure import HardwareProfile, LatencySettings, model_size
from autosqueeze.measure.assessment import RECORDED, Measurement, assess
from autosqueeze.measure.metrics import evaluate
from autosqueeze.measure.size import SizeReport
from autosqueeze.measure.timing import Ratio
from autosqueeze.methods import MethodContext
from autosqueeze.recipe import Recipe, Step, load_recipe
from autosqueeze.runtimes import Deployment, deploy, get_runtime
from autosqueeze.runtimes.deployment import OrtDeployment
from tests.tiny import teacher_and_words_data

PROFILE = HardwareProfile(threads=1, seq_len=16)
FAST = LatencySettings(warmup=1, repeats=3, min_time_s=0.0, idle_wait_s=0.0)


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    return teacher_and_words_data(tiny_model_dir)


def _built(teacher, steps, runtime="torch"):
    recipe = Recipe(steps=steps, profile={"runtime": runtime})
    return recipe, build(recipe, teacher, MethodContext(adapter=get_adapter(teacher), teacher=teacher))


def _batch(data):
    return {k: v for k, v in next(iter(data.eval_batches(batch_size=3))).items() if k != "labels"}


def test_a_torch_deployment_is_the_module_itself(setup):
    teacher, data = setup
    recipe, built = _built(teacher, [Step("drop_layers", {"keep": 1})])
    with deploy(built, recipe, PROFILE) as dep:
        assert isinstance(dep, Deployment) and dep.runtime == "torch" and dep.profile.runtime == "torch"
        assert dep.files == {} and dep.graph_file is None and dep.export_info is None
        b = _batch(data)
        with torch.inference_mode():
            assert torch.equal(dep(**b).logits, built.model(**b).logits)
        assert dep.evaluate(data) == evaluate(built.model, data)  # the metric as the old path computed it
        assert dep.size == model_size(built.model)
        timing = dep.timing(teacher, FAST, 10.0)
        assert timing.speedup > 0 and timing.baseline_ms == 10.0 and timing.speedup_p10 is not None
        assert dep.latency(FAST).median_ms > 0
    with pytest.raises(ValueError, match="unknown runtime 'tvm'"):
        deploy(built, recipe, PROFILE, runtime="tvm")


def test_an_onnxruntime_deployment_is_its_graph_exported_once(setup, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from autosqueeze.runtimes import onnx_export
    from autosqueeze.runtimes.ort import OrtClassifier, make_session

    teacher, data = setup
    recipe, built = _built(teacher, [Step("drop_layers", {"keep": 1})], runtime="onnxruntime")
    exports: list[str] = []
    real = onnx_export.export_for_deployment
    monkeypatch.setattr(onnx_export, "export_for_deployment",
                        lambda model, path, **kw: exports.append(str(path)) or real(model, path, **kw))  # type: ignore[func-returns-value]
    with deploy(built, recipe, PROFILE) as dep:  # the recipe's runtime
        assert isinstance(dep, OrtDeployment)
        assert dep.runtime == "onnxruntime" and dep.profile.runtime == "onnxruntime" and not exports  # lazy
        b = _batch(data)
        with torch.inference_mode():
            assert torch.allclose(dep(**b).logits, built.model(**b).logits, atol=1e-4)  # fp32: same logits
        metrics = dep.evaluate(data)
        # the old path: the export's session wrapped as a classifier, evaluated by the same metric code
        assert metrics == evaluate(OrtClassifier(make_session(dep.path, dep.profile)), data)
        assert metrics == evaluate(built.model, data)  # an fp32 graph predicts as PyTorch does
        assert dep.timing(teacher, FAST, 10.0).speedup > 0 and dep.latency(FAST).median_ms > 0
        graph = dep.files["model.onnx"]
        assert graph.is_file() and dep.graph_file == "model.onnx" == get_runtime("onnxruntime").graph_file
        assert dep.export_info is not None and dep.export_info["path"] is None and not dep.export_info["quantized"]
        assert dep.size == model_size(built.model)
        assert len(exports) == 1  # called, evaluated, timed and listed: one export
    assert not graph.exists()  # the temporary graph goes with the deployment
    kept = deploy(built, recipe, PROFILE, path=tmp_path / "m.onnx")
    assert kept.files == {"model.onnx": tmp_path / "m.onnx"} and (tmp_path / "m.onnx").is_file()
    kept.close()
    assert (tmp_path / "m.onnx").is_file()  # a path given is kept
    given = deploy(built, recipe, PROFILE, onnx_path=tmp_path / "m.onnx")  # a graph already exported
    assert given.evaluate(data) == metrics and given.export_info is None and len(exports) == 2


def test_an_int8_recipe_deploys_its_int8_graph_and_assesses(setup):
    pytest.importorskip("onnxruntime")
    teacher, data = setup
    recipe, built = _built(teacher, [Step("drop_layers", {"keep": 1}), Step("quantize_dynamic", {})])
    with deploy(built, recipe, PROFILE, runtime="onnxruntime") as dep:
        assert isinstance(dep, OrtDeployment)
        m = assess(dep, data=data, main_metric="accuracy", teacher=teacher, settings=FAST, baseline_ms=10.0,
                   teacher_size=model_size(teacher))
        assert dep.info.quantized and m.onnx == dep.export_info
    assert m.runtime == "onnxruntime" and m.metric == m.metrics["accuracy"] and m.paired and m.baseline_ms == 10.0
    assert m.latency_ms == pytest.approx(10.0 / m.speedup.median) and m.speedup.p10 <= m.speedup.p90
    assert m.size == model_size(built.model) and 0 < m.size_pct["total"] < 100


def _measurement() -> Measurement:
    return Measurement(runtime="onnxruntime", metric=0.75, metrics={"accuracy": 0.75, "accuracy_again": 0.5},
                       latency_ms=2.5, speedup=Ratio(4.0, 3.5, 4.5), paired=True,
                       latency={"median_ms": 2.5, "p10_ms": 2.0, "p90_ms": 3.0, "scale": 1.1},
                       latency_measured={"median_ms": 2.3}, latency_measured_ms=2.3, teacher_paired_ms=9.0,
                       baseline_ms=10.0, size=SizeReport(1000, 400, 250, 100),
                       size_pct={"total": 40.0, "non_embedding": 20.0}, onnx={"quantized": True, "path": None})


def test_a_measurement_round_trips_through_its_stored_form_and_reads_old_ones():
    m = _measurement()
    stored = m.to_dict()
    assert stored["speedup"] == 4.0 and stored["speedup_spread"] == {"p10": 3.5, "p90": 4.5}
    assert stored["size"]["non_embedding_bytes"] == 600 and "paired" not in stored
    assert Measurement.from_dict(stored) == m
    # a trial or recipe written before the spread was stored (and with keys this type does not know)
    old = Measurement.from_dict({"metric": 0.5, "speedup": 2.0, "latency_ms": 5.0, "fidelity": "final"})
    assert old.speedup == Ratio.exact(2.0) and not old.paired and old.extra == {"fidelity": "final"}
    assert old.to_dict() == {"metric": 0.5, "speedup": 2.0, "latency_ms": 5.0, "fidelity": "final"}


def test_a_measurement_round_trips_through_a_recipe_and_a_trial_record(tmp_path: Path):
    from autosqueeze.search.trial_record import TrialRecord

    m = _measurement()
    recipe = Recipe(steps=[Step("quantize_dynamic", {})])
    recipe.measured = m.recorded()
    assert set(recipe.measured) == set(RECORDED)  # the keys recipes have always recorded
    recipe.save(tmp_path / "r.yaml")
    back = Measurement.from_dict(load_recipe(tmp_path / "r.yaml").measured)
    assert (back.metric, back.metrics, back.latency_ms, back.size) == (m.metric, m.metrics, m.latency_ms, m.size)
    assert back.speedup is not None and back.speedup.median == m.speedup.median  # the median (no spread recorded)
    assert back == Measurement.from_dict(m.to_dict(RECORDED))
    record = TrialRecord(status="complete").with_result(m)
    assert record.speedup == 4.0 and record.speedup_spread == {"p10": 3.5, "p90": 4.5} and record.onnx == m.onnx
    assert record.measurement == m
