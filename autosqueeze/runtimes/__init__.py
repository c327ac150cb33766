"""Execution back ends for latency and export: PyTorch eager, ONNX Runtime.

:func:`deployed_latency` is the one entry point the search and ``apply`` use: it times the
model the way the hardware profile's ``runtime`` deploys it. ``onnxruntime`` needs the
optional dependencies (``pip install 'autosqueeze[onnx]'``), imported only when used.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..measure.latency import HardwareProfile, LatencySettings, LatencyStats, measure_latency
from .onnx_export import OnnxInfo, OnnxUnavailable, OnnxUnsupported, export_for_deployment, export_onnx
from .variants import DEFAULT_VARIANT, DeployVariant, active_variant, set_active_variant

log = logging.getLogger(__name__)
RUNTIMES = ("torch", "onnxruntime")

__all__ = ["DEFAULT_VARIANT", "RUNTIMES", "DeployVariant", "OnnxInfo", "OnnxUnavailable", "OnnxUnsupported",
           "RuntimeRefused", "active_variant", "check_runtime", "set_active_variant",
           "deployed_latency", "export_for_deployment", "export_onnx", "offered_runtimes", "ort_runner", "step_refusal"]


class RuntimeRefused(UserError, ValueError):
    """The model can only be deployed (and timed) in another runtime than the one asked for."""


def check_runtime(model: nn.Module, runtime: str) -> None:
    """Refuse, in one line, to time or deploy ``model`` in ``runtime`` when one of its steps needs
    another (``quantize_static``: ONNX Runtime; its PyTorch model only simulates int8)."""
    need = getattr(model, "autosqueeze_requires_runtime", None)
    if need is not None and need != runtime:
        raise RuntimeRefused(getattr(model, "autosqueeze_runtime_reason", None)
                             or f"this model needs runtime {need}, not {runtime}")


def deployed_latency(model: nn.Module, profile: HardwareProfile, settings: LatencySettings | None = None,
                     inputs: list[dict[str, torch.Tensor]] | None = None, *, float_model: nn.Module | None = None,
                     recipe: Any = None, onnx_path: str | Path | None = None,
                     variant: DeployVariant | dict[str, Any] | None = None) -> LatencyStats:
    """Latency of ``model`` in the profile's runtime.

    ``torch``: :func:`measure_latency` on the model as it is. ``onnxruntime``: the model is
    exported (with ``recipe`` and ``float_model`` when the recipe quantizes with PyTorch's
    dynamic int8, which is then redone by onnxruntime.quantization) — or ``onnx_path`` is
    used when given — and an ONNX Runtime session with ``profile.threads`` intra-op threads
    is timed on the same inputs. ``variant``: how the graph is built and run (default: the
    active deploy variant, :mod:`autosqueeze.runtimes.variants`).
    """
    if profile.runtime == "torch":
        check_runtime(model, "torch")
        return measure_latency(model, profile, inputs, settings=settings)
    if profile.runtime != "onnxruntime":
        raise ValueError(f"unknown runtime {profile.runtime!r}; choose one of {RUNTIMES}")
    from .ort import make_session, ort_latency

    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 1000))
    if onnx_path is not None:
        return ort_latency(make_session(onnx_path, profile), profile, inputs, settings=settings, vocab_size=vocab)
    with tempfile.TemporaryDirectory(prefix="autosqueeze-onnx-") as tmp:
        info = export_for_deployment(model, Path(tmp) / "model.onnx", float_model=float_model, recipe=recipe,
                                     variant=variant)
        log.debug("timing %s (%s exporter, int8=%s)", info.path, info.exporter, info.quantized)
        session = make_session(info.path, profile)
        return ort_latency(session, profile, inputs, settings=settings, vocab_size=vocab)


@contextlib.contextmanager
def ort_runner(model: nn.Module, profile: HardwareProfile, *, float_model: nn.Module | None = None,
               recipe: Any = None, onnx_path: str | Path | None = None,
               variant: DeployVariant | dict[str, Any] | None = None) -> Iterator[Callable[..., Any]]:
    """``model`` as ONNX Runtime deploys it, callable like a model (``runner(**batch)``), for
    paired timing: exported as its recipe deploys it (or ``onnx_path``), on a session with
    spinning off (see :func:`autosqueeze.runtimes.ort.make_session`)."""
    from .ort import OrtRunner, make_session

    if onnx_path is not None:
        yield OrtRunner(make_session(onnx_path, profile, spinning=False))
        return
    with tempfile.TemporaryDirectory(prefix="autosqueeze-onnx-") as tmp:
        info = export_for_deployment(model, Path(tmp) / "model.onnx", float_model=float_model, recipe=recipe,
                                     variant=variant)
        log.debug("paired timing of %s (%s exporter, int8=%s)", info.path, info.exporter, info.quantized)
        yield OrtRunner(make_session(info.path, profile, spinning=False))


def step_refusal(method: str, params: dict[str, Any], runtime: str) -> str | None:
    """Why a recipe step cannot deploy in ``runtime``, known from the step alone (None: it may).

    The registry's answer first (``MethodSpec.runtime_refusal``: the method's own runtime, as
    quantize_static is ONNX Runtime only, and the units its params compute with, as bf16 has no
    ONNX Runtime kernel), then for ONNX Runtime the structures no graph expresses (see
    :func:`autosqueeze.runtimes.onnx_export.unsupported_reason`, which checks the built model).
    """
    from ..methods import get_method

    why = get_method(method).runtime_refusal(params, runtime)
    if why is not None:
        return why
    if runtime == "onnxruntime":
        if method == "early_exit":
            return "early exit decides its depth per batch: an ONNX graph would freeze one path"
        if method == "prune_unstructured" and params.get("kernel") == "csr":
            return "CSR sparse kernels have no ONNX operator"
    return None


def offered_runtimes(steps: Any, runtimes: tuple[str, ...] | list[str]) -> list[str]:
    """The runtimes of ``runtimes`` (in order) that can deploy every step of ``steps`` (Steps, or
    dicts with ``method`` and ``params``)."""
    pairs = [(s["method"], s.get("params") or {}) if isinstance(s, dict) else (s.method, s.params) for s in steps]
    return [r for r in runtimes if not any(step_refusal(m, p, r) for m, p in pairs)]
