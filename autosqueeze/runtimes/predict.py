"""The dev metric of a recipe computed by the runtime it deploys with.

For ``torch`` that is the PyTorch model itself. For ``onnxruntime`` it is the exported graph:
the recipe's model goes through :func:`export_for_deployment` (int8 steps redone by ONNX
Runtime: dynamic int8, or QDQ static int8 with the recorded calibration) and the task metric
is computed from the ONNX Runtime session's logits, with the same metric code
(:func:`autosqueeze.measure.metrics.evaluate`) — so a point on the front is the deployed
artifact's accuracy, not an approximation of it by PyTorch kernels.

The search objective and ``apply`` call :func:`evaluate_in_runtime` (given ``onnx_path``, the
graph a trial was already timed on: :class:`autosqueeze.runtimes.deployed.OrtDeployment`); it
returns the metrics and, for ONNX Runtime, the export's :class:`OnnxInfo` as a dict (which
exporter, how many int8 nodes, the float graph's difference from PyTorch). A model ONNX
Runtime cannot run raises :class:`OnnxUnsupported` with its one-line reason.
"""
from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..measure.latency import HardwareProfile
from ..measure.metrics import evaluate
from . import check_runtime
from .onnx_export import export_for_deployment


def runtime_session_model(onnx_path: str | Path, profile: HardwareProfile, config: Any = None) -> nn.Module:
    """A classifier-like wrapper around an ONNX Runtime session on ``profile`` (``.logits``)."""
    from .ort import OrtClassifier, make_session

    return OrtClassifier(make_session(onnx_path, profile), config)


def evaluate_in_runtime(model: nn.Module, profile: HardwareProfile, data: Any,
                        extra: Mapping[str, Sequence[Any]] | None = None, batch_size: int = 64, *,
                        float_model: nn.Module | None = None, recipe: Any = None, exporter: str | None = None,
                        onnx_path: str | Path | None = None) -> tuple[dict[str, float], dict[str, Any] | None]:
    """(metrics on ``data.dev`` and ``extra``, export info or None) of ``model`` as ``profile.runtime``
    runs it. ``onnx_path``: an exported graph to use instead of exporting again."""
    check_runtime(model, profile.runtime)
    if profile.runtime == "torch":
        return evaluate(model, data, extra, batch_size), None
    config = getattr(model, "config", None)
    if onnx_path is not None:
        return evaluate(runtime_session_model(onnx_path, profile, config), data, extra, batch_size), None
    with tempfile.TemporaryDirectory(prefix="autosqueeze-eval-") as tmp:
        info = export_for_deployment(model, Path(tmp) / "model.onnx", float_model=float_model, recipe=recipe,
                                     exporter=exporter)
        metrics = evaluate(runtime_session_model(info.path, profile, config), data, extra, batch_size)
    return metrics, {**info.to_dict(), "path": None}
