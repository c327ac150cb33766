"""The dev metric computed by the runtime's own model (runtimes/predict.py)."""
from __future__ import annotations

import pytest

from autosqueeze.arch import get_adapter
from autosqueeze.builder import build
from autosqueeze.measure import HardwareProfile
from autosqueeze.measure.metrics import evaluate
from autosqueeze.methods import MethodContext
from autosqueeze.recipe import Recipe, Step
from autosqueeze.runtimes import RuntimeRefused
from autosqueeze.runtimes import predict as predict_module
from autosqueeze.runtimes.ort import OrtClassifier
from tests.tiny import teacher_and_words_data

pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install 'autosqueeze[onnx]'")
TORCH = HardwareProfile(threads=1, seq_len=16)
ORT = HardwareProfile(threads=1, seq_len=16, runtime="onnxruntime")


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    return teacher_and_words_data(tiny_model_dir)


def _built(teacher, data, steps):
    recipe = Recipe(steps=steps)
    ctx = MethodContext(adapter=get_adapter(teacher), teacher=teacher, train_batches=data.train_batches)
    return recipe, build(recipe, teacher, ctx)


def test_onnx_runtime_metrics_come_from_the_session(setup, monkeypatch):
    teacher, data = setup
    recipe, b = _built(teacher, data, [Step("drop_layers", {"keep": 2}), Step("quantize_static", {"sentences": 8})])
    seen = []

    def spy(model, *args, **kwargs):
        seen.append(model)
        return evaluate(model, *args, **kwargs)

    monkeypatch.setattr(predict_module, "evaluate", spy)
    metrics, info = predict_module.evaluate_in_runtime(b.model, ORT, data, {"again": data.dev[:8]}, 8,
                                                       float_model=b.float_model, recipe=recipe,
                                                       exporter="torchscript")
    assert len(seen) == 1 and isinstance(seen[0], OrtClassifier)  # ONNX Runtime's predictions, not PyTorch's
    assert info is not None and info["quantized"] and info["quantized_nodes"] == 2 * 6 and info["path"] is None
    assert {"accuracy", "accuracy_again"} <= set(metrics) and 0.0 <= metrics["accuracy"] <= 1.0
    with pytest.raises(RuntimeRefused, match="quantize_static needs runtime onnxruntime"):
        predict_module.evaluate_in_runtime(b.model, TORCH, data)


def test_a_float_structure_scores_the_same_in_both_runtimes(setup):
    teacher, data = setup
    recipe, b = _built(teacher, data, [Step("prune_structured", {"heads_keep": [1, 2, 4], "ffn_keep": 0.5})])
    in_torch, none = predict_module.evaluate_in_runtime(b.model, TORCH, data, batch_size=8)
    in_ort, info = predict_module.evaluate_in_runtime(b.model, ORT, data, batch_size=8, recipe=recipe,
                                                      exporter="torchscript")
    assert none is None and info is not None and not info["quantized"]
    assert in_ort == in_torch  # fp32 graph: the same predictions
