"""One built model in the runtime it deploys with: the seam from a model to a measurement.

:func:`deploy` is the one way from a built model (or any model) to a runtime: a
:class:`TorchDeployment` is the PyTorch module itself; an :class:`OrtDeployment` is its ONNX
graph exported once, as its recipe deploys it (:func:`~autosqueeze.runtimes.onnx_export.export_for_deployment`:
int8 steps redone by ONNX Runtime, the recipe's deploy variant) — on first use, into a temporary
folder removed on ``close`` (or into ``path``, kept; or a graph already exported, ``onnx_path``) —
and its sessions. Either answers the same questions, so no caller asks which runtime it has:

- ``deployment(**batch)``: inference on prepared inputs (``.logits``);
- :meth:`~Deployment.evaluate` / :meth:`~Deployment.evaluate_with_stats`: the dev metric computed
  in that runtime (the session's predictions for ONNX Runtime), and early exit's exit statistics;
- :meth:`~Deployment.timing`: the latency paired call by call with the fp32 PyTorch teacher (or
  alone), through :mod:`autosqueeze.measure.paired`; :meth:`~Deployment.latency`: timed alone;
- what it is: :attr:`~Deployment.runtime`, :attr:`~Deployment.files` (what a saved folder holds
  to deploy it), :attr:`~Deployment.export_info`; how big it is: :attr:`~Deployment.size`.

:func:`autosqueeze.measure.assessment.assess` turns one into a ``Measurement``. A model whose
steps need another runtime (``quantize_static``: ONNX Runtime) is refused by :func:`deploy`
(:class:`RuntimeRefused`, one line).
"""
from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from ..capabilities import RuntimeBound
from ..errors import UserError
from ..measure import paired as paired_timing
from ..measure.latency import HardwareProfile, LatencySettings, LatencyStats, measure_latency
from ..measure.metrics import evaluate, evaluate_deployed
from ..measure.paired import Timing
from ..measure.size import SizeReport, model_size
from . import onnx_export
from .onnx_export import OnnxInfo
from .variants import DeployVariant, resolve_variant

__all__ = ["BACKENDS", "Deployment", "OrtDeployment", "Runtime", "RuntimeRefused", "TorchDeployment",
           "check_runtime", "deploy", "deploy_saved", "get_runtime", "runtime_of", "saved_runtime"]


class RuntimeRefused(UserError, ValueError):
    """The model can only be deployed (and timed) in another runtime than the one asked for."""


def check_runtime(model: nn.Module, runtime: str) -> None:
    """Refuse, in one line, to time or deploy ``model`` in ``runtime`` when one of its steps needs
    another (a :class:`~autosqueeze.capabilities.RuntimeBound` model: ``quantize_static``'s needs ONNX Runtime;
    its PyTorch model only simulates int8)."""
    if isinstance(model, RuntimeBound) and model.autosqueeze_requires_runtime not in (None, runtime):
        raise RuntimeRefused(model.autosqueeze_runtime_reason
                             or f"this model needs runtime {model.autosqueeze_requires_runtime}, not {runtime}")


def _vocab(model: Any) -> int:
    return int(getattr(getattr(model, "config", None), "vocab_size", 1000))


D = TypeVar("D", bound="Deployment")

class Deployment:
    """A model as one runtime deploys it (see the module docstring); use it as a context manager."""

    runtime: ClassVar[str] = ""
    graph_file: ClassVar[str | None] = None  # the file a saved folder deploys from (None: its weights)

    def __init__(self, model: nn.Module, profile: HardwareProfile, *, float_model: nn.Module | None = None,
                 recipe: Any = None) -> None:
        check_runtime(model, self.runtime)  # e.g. quantize_static: ONNX Runtime only
        self.model, self.float_model, self.recipe = model, float_model, recipe
        self.profile = dataclasses.replace(profile, runtime=self.runtime)

    def __enter__(self: D) -> D:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release what the deployment made (a temporary graph)."""

    def __call__(self, **batch: torch.Tensor) -> Any:
        raise NotImplementedError

    def eval(self) -> Deployment:
        """Itself (callers that put a model in eval mode may hold a deployment)."""
        return self

    @property
    def files(self) -> dict[str, Path]:
        """What a saved folder holds to deploy it, beyond its weights (file name -> where it is now)."""
        return {}

    @property
    def export_info(self) -> dict[str, Any] | None:
        """How the model was exported for this runtime, as a trial stores it (None: not exported)."""
        return None

    @property
    def size(self) -> SizeReport:
        """The model's size as deployed (with and without embeddings)."""
        return model_size(self.model)

    def evaluate_with_stats(self, data: Any, extra: Mapping[str, Sequence[Any]] | None = None,
                            batch_size: int = 64) -> tuple[dict[str, float], dict[str, Any] | None]:
        """(the task metrics on dev and ``extra`` computed in this runtime, exit statistics or None)."""
        raise NotImplementedError

    def evaluate(self, data: Any, extra: Mapping[str, Sequence[Any]] | None = None,
                 batch_size: int = 64) -> dict[str, float]:
        """The task metrics on ``data.dev`` (and ``extra``) computed in this runtime."""
        return self.evaluate_with_stats(data, extra, batch_size)[0]

    def timed_call(self) -> Callable[..., Any]:
        """What paired timing calls (the batch as keyword tensors)."""
        raise NotImplementedError

    def latency(self, settings: LatencySettings | None = None,
                inputs: list[dict[str, torch.Tensor]] | None = None) -> LatencyStats:
        """Timed alone on the profile (``inputs``: real batches, else synthetic ones of its shape)."""
        raise NotImplementedError

    def timing(self, teacher: nn.Module, settings: LatencySettings, baseline_ms: float,
               inputs: list[dict[str, torch.Tensor]] | None = None, *, paired: bool = True) -> Timing:
        """The :class:`Timing` against ``baseline_ms``: paired call by call with the fp32 PyTorch
        ``teacher`` whatever the runtime, so every speedup is a same-process ratio (``paired=False``:
        timed alone)."""
        if not paired:
            return Timing.unpaired(self.latency(settings, inputs), baseline_ms)
        return paired_timing.paired_timing(self.timed_call(), teacher, self.profile, settings, baseline_ms, inputs)


class TorchDeployment(Deployment):
    """PyTorch eager: the module itself."""

    runtime = "torch"

    def __call__(self, **batch: torch.Tensor) -> Any:
        return self.model(**batch)

    def evaluate_with_stats(self, data: Any, extra: Mapping[str, Sequence[Any]] | None = None,
                            batch_size: int = 64) -> tuple[dict[str, float], dict[str, Any] | None]:
        """A model whose output depends on its batching (early exit) is evaluated at the profile's batch size."""
        return evaluate_deployed(self.model, data, extra, batch_size, self.profile.batch_size)

    def timed_call(self) -> Callable[..., Any]:
        return self.model

    def latency(self, settings: LatencySettings | None = None,
                inputs: list[dict[str, torch.Tensor]] | None = None) -> LatencyStats:
        return measure_latency(self.model, self.profile, inputs, settings=settings)


class OrtDeployment(Deployment):
    """The deployed ONNX graph of ``model`` (``float_model`` and ``recipe`` as for
    :func:`export_for_deployment`), exported on first use, and its ONNX Runtime sessions.
    ``variant`` (a :class:`DeployVariant` or its dict; default the recipe's, else the active one)
    says how the graph is built and run; ``onnx_path``: a graph already exported, used as it is."""

    runtime = "onnxruntime"
    graph_file = "model.onnx"

    def __init__(self, model: nn.Module, profile: HardwareProfile | None = None, *,
                 float_model: nn.Module | None = None, recipe: Any = None, exporter: str | None = None,
                 path: str | Path | None = None, onnx_path: str | Path | None = None,
                 variant: DeployVariant | dict[str, Any] | None = None) -> None:
        super().__init__(model, profile or HardwareProfile(), float_model=float_model, recipe=recipe)
        self.exporter = exporter
        self.variant = resolve_variant(variant, recipe)
        self._target = None if path is None else Path(path)
        self._given = None if onnx_path is None else Path(onnx_path)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._info: OnnxInfo | None = None
        self._classifier: nn.Module | None = None

    def close(self) -> None:
        """Remove the temporary graph (a ``path`` given at creation is kept)."""
        self._classifier = None
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
        """The graph's file (exported now if not yet, unless one was given)."""
        return self._given if self._given is not None else Path(self.info.path)

    @property
    def files(self) -> dict[str, Path]:
        return {"model.onnx": self.path}

    @property
    def export_info(self) -> dict[str, Any] | None:
        """The export as a trial or a manifest stores it (no temporary path); None for a given graph."""
        return None if self._given is not None else self.info_dict()

    def info_dict(self) -> dict[str, Any]:
        """The export as a trial or a manifest stores it (no temporary path)."""
        return {**self.info.to_dict(), "path": None}

    def session(self, *, spinning: bool = True) -> Any:
        """A new ONNX Runtime session on the graph, with the profile's threads."""
        from .ort import make_session

        return make_session(self.path, self.profile, spinning=spinning)

    def classifier(self, *, spinning: bool = False) -> nn.Module:
        """A session answering like a transformers classifier (``.logits``); spinning off by
        default, so that it can be timed interleaved with PyTorch calls."""
        from .ort import OrtClassifier

        return OrtClassifier(self.session(spinning=spinning), getattr(self.model, "config", None))

    def __call__(self, **batch: torch.Tensor) -> Any:
        if self._classifier is None:  # one session (spinning off: it may be timed interleaved with PyTorch)
            self._classifier = self.classifier()
        return self._classifier(**batch)

    def evaluate_with_stats(self, data: Any, extra: Mapping[str, Sequence[Any]] | None = None,
                            batch_size: int = 64) -> tuple[dict[str, float], dict[str, Any] | None]:
        """The task metrics of the session's predictions (no exit statistics: early exit does not export)."""
        return evaluate(self.classifier(spinning=True), data, extra, batch_size), None

    def timed_call(self) -> Callable[..., Any]:
        """The session called like a model, spinning off so that its idle pool threads do not steal
        the teacher's cores between the calls of a pair."""
        from .ort import OrtRunner

        return OrtRunner(self.session(spinning=False))

    def latency(self, settings: LatencySettings | None = None,
                inputs: list[dict[str, torch.Tensor]] | None = None) -> LatencyStats:
        from .ort import ort_latency

        return ort_latency(self.session(), self.profile, inputs, settings=settings, vocab_size=_vocab(self.model))


@dataclass(frozen=True)
class Runtime:
    """An execution back end: its name, how it deploys a model, its label and int8 reference."""

    name: str
    label: str
    deployment: type[Deployment]
    int8_reference: str  # the study reference of the teacher's plain int8 in this runtime (refs' key)

    @property
    def graph_file(self) -> str | None:
        """The file a saved folder deploys from (None: the folder's weights, loaded by ``autosqueeze.load``)."""
        return self.deployment.graph_file


BACKENDS: dict[str, Runtime] = {
    "torch": Runtime("torch", "PyTorch", TorchDeployment, "torch_int8"),
    "onnxruntime": Runtime("onnxruntime", "ONNX Runtime", OrtDeployment, "ort_int8"),
}


def get_runtime(name: str) -> Runtime:
    """The runtime named ``name`` (``ValueError`` for an unknown one)."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown runtime {name!r}; choose one of {tuple(BACKENDS)}") from None


def runtime_of(recipe: Any = None, profile: HardwareProfile | None = None) -> str:
    """The runtime a recipe deploys with: its profile's, else ``profile``'s, else PyTorch."""
    named = ((getattr(recipe, "profile", None) or {}).get("runtime")) if recipe is not None else None
    return named or (profile.runtime if profile is not None else "torch")


def saved_runtime(folder: str | Path, runtime: str | None) -> str:
    """The runtime a saved folder deploys with: ``runtime`` (its recipe's) when the folder holds the
    file that runtime deploys from (ONNX Runtime: ``model.onnx``), else PyTorch (its weights)."""
    try:
        file = get_runtime(runtime).graph_file if runtime else None
    except ValueError:
        return "torch"
    return runtime if runtime and (file is None or (Path(folder) / file).is_file()) else "torch"


def deploy_saved(folder: str | Path, model: nn.Module, profile: HardwareProfile | None = None,
                 runtime: str | None = None) -> Deployment:
    """A saved folder's model (``model``, loaded from it) as the folder deploys it (:func:`saved_runtime`
    of ``runtime``, its recipe's): ONNX Runtime runs the folder's own ``model.onnx``."""
    kind = get_runtime(saved_runtime(folder, runtime))
    graph = Path(folder) / kind.graph_file if kind.graph_file else None
    return deploy(model, None, profile, runtime=kind.name, onnx_path=graph)


def deploy(built: Any, recipe: Any = None, profile: HardwareProfile | None = None, *, runtime: str | None = None,
           path: str | Path | None = None, onnx_path: str | Path | None = None, exporter: str | None = None,
           variant: DeployVariant | dict[str, Any] | None = None,
           float_model: nn.Module | None = None) -> Deployment:
    """``built`` (a :class:`~autosqueeze.builder.Built`, or a model) as ``runtime`` deploys it —
    default the recipe's runtime, else the profile's — on ``profile`` (its threads, batch and
    sequence shape; default :class:`HardwareProfile`). ONNX Runtime: the graph is exported as
    ``recipe`` deploys it, on first use (into ``path`` when given, kept; else a temporary file
    removed on ``close``), or ``onnx_path`` is used as it is; ``exporter`` and ``variant`` as for
    :func:`export_for_deployment` (``float_model``: the model before its quantization steps, default
    ``built.float_model``). Raises :class:`RuntimeRefused` for a model that needs another runtime."""
    model = getattr(built, "model", built)
    float_model = float_model if float_model is not None else getattr(built, "float_model", None)
    profile = profile or HardwareProfile()
    kind = get_runtime(runtime or runtime_of(recipe, profile)).deployment
    if kind is OrtDeployment:
        return OrtDeployment(model, profile, float_model=float_model, recipe=recipe, exporter=exporter, path=path,
                             onnx_path=onnx_path, variant=variant)
    return kind(model, profile, float_model=float_model, recipe=recipe)
