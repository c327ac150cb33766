"""One built model as ONNX Runtime deploys it: exported once, then timed and evaluated from that graph.

:class:`OrtDeployment` exports a model the way its recipe deploys it
(:func:`~autosqueeze.runtimes.onnx_export.export_for_deployment`: int8 steps redone by ONNX
Runtime) on first use, into a temporary folder it removes on ``close`` (or into ``path``, kept).
The same file then serves every use: the latency paired call by call with the fp32 PyTorch
teacher (:meth:`timing`, as the search and ``apply`` time a candidate), the dev metric computed
from the session's logits (:meth:`evaluate`), and a classifier-like session to time interleaved
with other models (:meth:`classifier`, spinning off). ``variant`` (a
:class:`~autosqueeze.runtimes.variants.DeployVariant` or its dict; default the recipe's, else the active one) says
how the graph is built and run, and is recorded in :attr:`info` (``info.variant``). The search
objective uses it so that an ONNX Runtime trial is exported once; the methods table's ONNX
Runtime column and the headline study's deployed points are built on it.
"""
from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..measure.latency import HardwareProfile, LatencySettings
from ..measure.metrics import evaluate
from ..measure.paired import Timing
from . import onnx_export
from .onnx_export import OnnxInfo
from .timing import timing_against_teacher
from .variants import DeployVariant, resolve_variant

__all__ = ["OrtDeployment"]


class OrtDeployment:
    """The deployed ONNX graph of ``model`` (``float_model`` and ``recipe`` as for
    :func:`export_for_deployment`), exported on first use; use it as a context manager."""

    def __init__(self, model: nn.Module, *, float_model: nn.Module | None = None, recipe: Any = None,
                 exporter: str | None = None, path: str | Path | None = None,
                 variant: DeployVariant | dict[str, Any] | None = None) -> None:
        self.model, self.float_model, self.recipe, self.exporter = model, float_model, recipe, exporter
        self.variant = resolve_variant(variant, recipe)
        self._target = None if path is None else Path(path)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._info: OnnxInfo | None = None

    def __enter__(self) -> OrtDeployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the temporary graph (a ``path`` given at creation is kept)."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp, self._info = None, None

    @property
    def info(self) -> OnnxInfo:
        """The export (done now if not yet): which exporter, int8 nodes, difference from PyTorch.
        Raises :class:`OnnxUnsupported` / :class:`OnnxUnavailable` when the model cannot deploy in ONNX Runtime."""
        if self._info is None:
            target = self._target
            if target is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="autosqueeze-onnx-")
                target = Path(self._tmp.name) / "model.onnx"
            self._info = onnx_export.export_for_deployment(self.model, target, float_model=self.float_model,
                                                           recipe=self.recipe, exporter=self.exporter,
                                                           variant=self.variant)
        return self._info

    @property
    def path(self) -> Path:
        return Path(self.info.path)

    def info_dict(self) -> dict[str, Any]:
        """The export as a trial or a manifest stores it (no temporary path)."""
        return {**self.info.to_dict(), "path": None}

    def classifier(self, profile: HardwareProfile, *, spinning: bool = False) -> nn.Module:
        """The session answering like a transformers classifier (``.logits``); spinning off by
        default, so that it can be timed interleaved with PyTorch calls."""
        from .ort import OrtClassifier, make_session

        return OrtClassifier(make_session(self.path, profile, spinning=spinning, opt_level=self.variant.opt_level),
                             getattr(self.model, "config", None))

    def evaluate(self, profile: HardwareProfile, data: Any, extra: Mapping[str, Sequence[Any]] | None = None,
                 batch_size: int = 64) -> dict[str, float]:
        """The task metrics (dev and ``extra`` splits) of the session's predictions."""
        return evaluate(self.classifier(profile, spinning=True), data, extra, batch_size)

    def timing(self, teacher: nn.Module, profile: HardwareProfile, settings: LatencySettings, baseline_ms: float,
               inputs: list[dict[str, torch.Tensor]] | None = None, *, paired: bool = True) -> Timing:
        """The graph's :class:`Timing` on ``profile`` (ONNX Runtime), paired call by call with the
        fp32 PyTorch ``teacher`` (``paired=False``: timed alone), against ``baseline_ms``."""
        import dataclasses

        ort = dataclasses.replace(profile, runtime="onnxruntime")
        return timing_against_teacher(self.model, teacher, ort, settings, baseline_ms, inputs, paired=paired,
                                      float_model=self.float_model, recipe=self.recipe, onnx_path=self.path)
