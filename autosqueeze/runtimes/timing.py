"""A model timed the way its runtime deploys it, against the fp32 PyTorch teacher.

The runtime supplies the callable (:meth:`~autosqueeze.runtimes.deployment.Deployment.timed_call`);
:mod:`autosqueeze.measure.paired` times it. For PyTorch the callable is the model itself; for ONNX
Runtime, the graph exported as the recipe deploys it (or a graph already exported) and its
session with spinning off, so that its idle pool threads do not steal the teacher's cores
between the calls of a pair. Both are :func:`~autosqueeze.runtimes.deployment.deploy`'s.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..measure.latency import HardwareProfile, LatencySettings
from ..measure.paired import Timing
from .deployment import deploy

__all__ = ["deployed_callable", "timing_against_teacher"]


@contextlib.contextmanager
def deployed_callable(model: nn.Module, profile: HardwareProfile, *, float_model: nn.Module | None = None,
                      recipe: Any = None, onnx_path: str | Path | None = None) -> Iterator[Callable[..., Any]]:
    """What ``profile.runtime`` runs for ``model``, callable like a model, for paired timing: the
    model itself in PyTorch, the session of its graph in ONNX Runtime."""
    with deploy(model, recipe, profile, runtime=profile.runtime, onnx_path=onnx_path, float_model=float_model) as dep:
        yield dep.timed_call()


def timing_against_teacher(model: nn.Module, teacher: nn.Module, profile: HardwareProfile, settings: LatencySettings,
                           baseline_ms: float, inputs: list[dict[str, torch.Tensor]] | None = None, *,
                           paired: bool = True, float_model: nn.Module | None = None, recipe: Any = None,
                           onnx_path: Any = None) -> Timing:
    """The :class:`~autosqueeze.measure.paired.Timing` of ``model`` in ``profile.runtime`` against
    ``baseline_ms`` (the fp32 PyTorch teacher's latency measured once for the study or in this process):
    :meth:`Deployment.timing` of :func:`deploy` (``onnx_path``: an exported graph to use instead).

    Paired with the fp32 PyTorch ``teacher`` whatever the runtime, so every speedup is a
    same-process ratio. ``paired=False`` times the model alone in its runtime.
    """
    with deploy(model, recipe, profile, runtime=profile.runtime, onnx_path=onnx_path, float_model=float_model) as dep:
        return dep.timing(teacher, settings, baseline_ms, inputs, paired=paired)
