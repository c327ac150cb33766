"""The dev metric of a recipe computed by the runtime it deploys with.

For ``torch`` that is the PyTorch model itself. For ``onnxruntime`` it is the exported graph:
the recipe's model goes through :func:`export_for_deployment` (int8 steps redone by ONNX
Runtime: dynamic int8, or QDQ static int8 with the recorded calibration) and the task metric
is computed from the ONNX Runtime session's logits, with the same metric code
(:func:`autosqueeze.measure.metrics.evaluate`) — so a point on the front is the deployed
artifact's accuracy, not an approximation of it by PyTorch kernels.

Both are :meth:`Deployment.evaluate <autosqueeze.runtimes.deployment.Deployment.evaluate>`;
:func:`evaluate_in_runtime` is that for one call (a model ONNX Runtime cannot run raises
:class:`OnnxUnsupported` with its one-line reason).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..measure.latency import HardwareProfile
from ..measure.metrics import evaluate
from .deployment import OrtDeployment, deploy


def runtime_session_model(onnx_path: str | Path, profile: HardwareProfile, config: Any = None) -> nn.Module:
    """A classifier-like wrapper around an ONNX Runtime session on ``profile`` (``.logits``)."""
    from .ort import OrtClassifier, make_session

    return OrtClassifier(make_session(onnx_path, profile), config)


def evaluate_in_runtime(model: nn.Module, profile: HardwareProfile, data: Any,
                        extra: Mapping[str, Sequence[Any]] | None = None, batch_size: int = 64, *,
                        float_model: nn.Module | None = None, recipe: Any = None, exporter: str | None = None,
                        onnx_path: str | Path | None = None) -> tuple[dict[str, float], dict[str, Any] | None]:
    """(metrics on ``data.dev`` and ``extra``, export info or None) of ``model`` as ``profile.runtime``
    runs it (PyTorch: the model itself, evaluated as :func:`evaluate` does). ``onnx_path``: an exported
    graph to use instead of exporting again."""
    with deploy(model, recipe, profile, runtime=profile.runtime, onnx_path=onnx_path, exporter=exporter,
                float_model=float_model) as dep:
        runs = dep.classifier(spinning=True) if isinstance(dep, OrtDeployment) else dep.model
        return evaluate(runs, data, extra, batch_size), dep.export_info
