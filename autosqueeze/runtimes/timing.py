"""A model timed the way its runtime deploys it, against the fp32 PyTorch teacher.

The runtime supplies the callable; :mod:`autosqueeze.measure.paired` times it. For PyTorch the
callable is the model itself; for ONNX Runtime, the graph exported as the recipe deploys it
(or a graph already exported) and its session with spinning off, so that its idle pool
threads do not steal the teacher's cores between the calls of a pair.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..measure import paired as paired_timing
from ..measure.latency import HardwareProfile, LatencySettings
from ..measure.paired import Timing
from . import check_runtime, deployed_latency, ort_runner

__all__ = ["deployed_callable", "timing_against_teacher"]


@contextlib.contextmanager
def deployed_callable(model: nn.Module, profile: HardwareProfile, *, float_model: nn.Module | None = None,
                      recipe: Any = None, onnx_path: str | Path | None = None) -> Iterator[Callable[..., Any]]:
    """What ``profile.runtime`` runs for ``model``, callable like a model: the model itself in
    PyTorch, :func:`ort_runner` in ONNX Runtime."""
    if profile.runtime == "torch":
        yield model
        return
    with ort_runner(model, profile, float_model=float_model, recipe=recipe, onnx_path=onnx_path) as runner:
        yield runner


def timing_against_teacher(model: nn.Module, teacher: nn.Module, profile: HardwareProfile, settings: LatencySettings,
                           baseline_ms: float, inputs: list[dict[str, torch.Tensor]] | None = None, *,
                           paired: bool = True, float_model: nn.Module | None = None, recipe: Any = None,
                           onnx_path: Any = None) -> Timing:
    """The :class:`~autosqueeze.measure.paired.Timing` of ``model`` in ``profile.runtime`` against
    ``baseline_ms`` (the fp32 PyTorch teacher's latency measured once for the study or in this process).

    Paired with the fp32 PyTorch ``teacher`` whatever the runtime: on ONNX Runtime the model is
    exported as the recipe deploys it (``onnx_path``: an exported graph to use instead) and its
    session, spinning off, alternates call by call with the PyTorch teacher, so every speedup
    is a same-process ratio. ``paired=False`` times the model alone in its runtime.
    """
    check_runtime(model, profile.runtime)  # e.g. quantize_static: ONNX Runtime only
    if not paired:
        stats = deployed_latency(model, profile, settings, inputs, float_model=float_model, recipe=recipe,
                                 onnx_path=onnx_path)
        return Timing.unpaired(stats, baseline_ms)
    with deployed_callable(model, profile, float_model=float_model, recipe=recipe, onnx_path=onnx_path) as call:
        return paired_timing.paired_timing(call, teacher, profile, settings, baseline_ms, inputs)
