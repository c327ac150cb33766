"""Execution back ends for latency and export: PyTorch eager, ONNX Runtime.

:func:`deploy` (:mod:`autosqueeze.runtimes.deployment`) is the one way from a built model to a
runtime: a :class:`Deployment` that runs, evaluates and times the model as that runtime deploys it
and says what it is (runtime, files, size); the search, ``apply``, ``bench``, the references and
the studies use it. ``onnxruntime`` needs the optional dependencies (``pip install
'autosqueeze[onnx]'``), imported only when used.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..measure.latency import HardwareProfile, LatencySettings, LatencyStats
from .deployment import (
    Deployment,
    OrtDeployment,
    Runtime,
    RuntimeRefused,
    TorchDeployment,
    check_runtime,
    deploy,
    get_runtime,
    runtime_of,
)
from .onnx_export import OnnxInfo, OnnxUnavailable, OnnxUnsupported, export_for_deployment, export_onnx
from .variants import DEFAULT_VARIANT, DeployVariant, active_variant, set_active_variant

log = logging.getLogger(__name__)
RUNTIMES = ("torch", "onnxruntime")

__all__ = ["DEFAULT_VARIANT", "RUNTIMES", "DeployVariant", "Deployment", "OnnxInfo", "OnnxUnavailable",
           "OnnxUnsupported", "OrtDeployment", "Runtime", "RuntimeRefused", "TorchDeployment", "active_variant",
           "check_runtime", "deploy", "deployed_latency", "export_for_deployment", "export_onnx", "get_runtime",
           "offered_runtimes", "ort_runner", "runtime_of", "set_active_variant", "step_refusal"]


def deployed_latency(model: nn.Module, profile: HardwareProfile, settings: LatencySettings | None = None,
                     inputs: list[dict[str, torch.Tensor]] | None = None, *, float_model: nn.Module | None = None,
                     recipe: Any = None, onnx_path: str | Path | None = None,
                     variant: DeployVariant | dict[str, Any] | None = None) -> LatencyStats:
    """Latency of ``model`` alone in the profile's runtime: :meth:`Deployment.latency` of
    :func:`deploy` (ONNX Runtime: exported as ``recipe`` deploys it, or ``onnx_path``)."""
    with deploy(model, recipe, profile, runtime=profile.runtime, onnx_path=onnx_path, variant=variant,
                float_model=float_model) as dep:
        return dep.latency(settings, inputs)


@contextlib.contextmanager
def ort_runner(model: nn.Module, profile: HardwareProfile, *, float_model: nn.Module | None = None,
               recipe: Any = None, onnx_path: str | Path | None = None,
               variant: DeployVariant | dict[str, Any] | None = None) -> Iterator[Callable[..., Any]]:
    """``model`` as ONNX Runtime deploys it, callable like a model (``runner(**batch)``), for
    paired timing: :meth:`OrtDeployment.timed_call` (spinning off)."""
    with OrtDeployment(model, profile, float_model=float_model, recipe=recipe, onnx_path=onnx_path,
                       variant=variant) as dep:
        yield dep.timed_call()


def step_refusal(method: str, params: dict[str, Any], runtime: str) -> str | None:
    """Why a recipe step cannot deploy in ``runtime``, known from the step alone (None: it may): the
    registry's answer (``MethodSpec.runtime_refusal``: the method's own runtime, as quantize_static is
    ONNX Runtime only; the units its params compute with, as bf16 has no ONNX Runtime kernel; and its
    ``runtime_limits``, the structures no ONNX graph expresses: early exit's per-batch depth, a CSR
    kernel). :func:`autosqueeze.runtimes.onnx_export.unsupported_reason` checks the built model.
    """
    from ..methods import get_method

    return get_method(method).runtime_refusal(params, runtime)


def offered_runtimes(steps: Any, runtimes: tuple[str, ...] | list[str]) -> list[str]:
    """The runtimes of ``runtimes`` (in order) that can deploy every step of ``steps`` (Steps, or
    dicts with ``method`` and ``params``)."""
    pairs = [(s["method"], s.get("params") or {}) if isinstance(s, dict) else (s.method, s.params) for s in steps]
    return [r for r in runtimes if not any(step_refusal(m, p, r) for m, p in pairs)]
