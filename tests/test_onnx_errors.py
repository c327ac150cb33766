"""A failed ONNX export is reported as one clean line: no graph dump, no terminal colour codes."""
from __future__ import annotations

import logging

import pytest

from autosqueeze.builder import build
from autosqueeze.recipe import Recipe, Step
from autosqueeze.runtimes import OnnxUnsupported, export_for_deployment, export_onnx, onnx_export
from tests import tiny

pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install 'autosqueeze[onnx]'")
DUMP = ("\x1b[1m\x1b[31mTorchExportError\x1b[0m: failed to export the model\n"
        + "\n".join(f"    %{i} = call_function[target=aten.mm](args=(%x, %w{i}))" for i in range(300)))


def _clean(message: str) -> None:
    assert "\n" not in message and "\x1b" not in message and len(message) <= 600, message


def test_exporter_failures_are_one_clean_line(monkeypatch, tmp_path, caplog):
    def explode(*args, **kwargs):
        raise RuntimeError(DUMP)

    monkeypatch.setattr(onnx_export, "_run_exporter", explode)
    with caplog.at_level(logging.DEBUG, logger=onnx_export.log.name), pytest.raises(OnnxUnsupported) as err:
        export_onnx(tiny.tiny_bert(layers=1), tmp_path / "m.onnx")
    _clean(str(err.value))
    assert "TorchExportError: failed to export the model" in str(err.value)
    assert "dynamo exporter" in str(err.value) and "torchscript exporter" in str(err.value)
    assert any(r.exc_info for r in caplog.records)  # the whole error is logged at debug (--verbose)


def test_quantizer_failures_are_one_clean_line(monkeypatch, tmp_path):
    from autosqueeze.runtimes import onnx_int8

    def explode(*args, **kwargs):
        raise ValueError(DUMP)

    monkeypatch.setattr(onnx_int8, "quantize_onnx_dynamic", explode)
    teacher = tiny.tiny_bert(layers=1)
    recipe = Recipe(steps=[Step("quantize_dynamic", {})])
    built = build(recipe, teacher, tiny.context(teacher))
    with pytest.raises(OnnxUnsupported, match="int8 quantization failed") as err:
        export_for_deployment(built.model, tmp_path / "q.onnx", float_model=built.float_model, recipe=recipe)
    _clean(str(err.value))


@pytest.mark.parametrize("steps", [[Step("cast_precision", {"dtype": "bf16"})],
                                   [Step("prune_unstructured", {"sparsity": 0.9, "kernel": "csr"})]])
def test_models_onnx_cannot_run_say_why_in_one_line(tmp_path, steps):
    teacher = tiny.tiny_bert(layers=1)
    built = build(Recipe(steps=steps), teacher, tiny.context(teacher))
    with pytest.raises(OnnxUnsupported) as err:
        export_for_deployment(built.model, tmp_path / "x.onnx")
    _clean(str(err.value))
