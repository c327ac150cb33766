"""The method registry: the name used in recipes and search spaces → (Config class, apply), and
what the method can do.

Registration is explicit (each method module calls :func:`register` once, and
``methods/__init__.py`` imports the modules); there is no package walking. Duplicate and
unknown names are errors.

An entry declares what code outside ``methods/`` needs to know of a method, so that nothing
there compares method names: its stage, whether it trains or is data-free, the runtimes that
cannot deploy it (:meth:`MethodSpec.runtime_refusal`), the models it cannot take
(:meth:`MethodSpec.refusal`), the modules it adds that count their own size, whether ONNX
Runtime redoes its int8 on the float graph, the study's int8 reference (:func:`int8_reference`),
the recovery step finalize retrains (:func:`recovery_method`) and what a study prepares for it
(``study``: the elastic student). The hook types are in :mod:`.hooks`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from torch import nn

from ..arch import ArchAdapter, get_adapter
from ..errors import UnsupportedArchitectureError, UserError
from ..typecheck import type_problems
from .context import MethodContext
from .hooks import GraphInt8, ModelRefusal, RecoveryParams, RuntimeLimits, StudyHook


class Stage(IntEnum):
    """Where a method sits in a recipe. Steps must come in non-decreasing stage order:
    structure is cut first, then trained, then quantized (nothing prunes an int8 layer)."""

    DEPTH = 10  # whole layers: drop, share
    WIDTH = 20  # heads, FFN neurons
    DECOMPOSE = 30  # low-rank factorization
    SPARSIFY = 40  # unstructured pruning
    TRAIN = 50  # recovery: fine-tune / distil
    EXIT = 60  # dynamic inference heads
    QUANTIZE = 70  # precision of the deployed weights


class MethodError(UserError, ValueError):
    """A method cannot be applied: bad config, wrong model or wrong order."""


ApplyFn = Callable[[nn.Module, Any, MethodContext], nn.Module]
# (model, config) -> why the config cannot be applied to the model (None: it can), from its shapes alone
ShapeCheck = Callable[[nn.Module, Any], str | None]
# config -> the machine units it computes with, beyond what every CPU has ("bf16": bf16 matmul units)
UnitsOf = Callable[[Any], tuple[str, ...]]
UNIT_REFUSALS = {  # unit -> (runtime, why that runtime cannot deploy a step computing with it)
    "bf16": ("onnxruntime", "ONNX Runtime's CPU provider has no bf16 MatMul kernel"),
}


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type
    apply: ApplyFn
    stage: Stage
    version: int = 1
    trains: bool = False  # changes only weights by training: skipped when probing latency
    data_free: bool = False  # applying it in probe mode gives exactly the final model (no data, no training)
    runtime: str | None = None  # the only runtime that deploys it (None: any)
    family: str = ""  # survey family: quantization, pruning, distillation, ...
    summary: str = ""
    # a cheap model-aware check that search-space validation runs instead of applying the method
    # (None: validation applies it to a small stand-in of the model)
    check_shapes: ShapeCheck | None = None
    # the units a config computes with (None: none beyond plain fp32 / int8): the machine probe drops a
    # step whose every choice needs a unit the CPU lacks, and a runtime without kernels for it is not offered
    units_of: UnitsOf | None = None
    # a method data-free for some configs only (early_exit with training: elastic): which ones (``data_free``
    # True: all of them)
    data_free_when: Callable[[Any], bool] | None = None
    # --- what else it can do (read outside methods/ instead of its name)
    # config -> {runtime: why that runtime cannot deploy it} (early exit's per-batch depth, a CSR kernel: not ONNX)
    runtime_limits: RuntimeLimits | None = None
    # why a model of a family that allows the method cannot take it (the family's own refusals: ArchAdapter.refused)
    model_refusal: ModelRefusal | None = None
    # the module classes it puts into a model that say what they add to its size (capabilities.StoredSize: their
    # own stored bytes; capabilities.LookupTables: integer tables that count in bytes)
    size_modules: tuple[type, ...] = ()
    graph_int8: GraphInt8 | None = None  # int8 that ONNX Runtime redoes on the float graph (export_for_deployment)
    int8_reference: bool = False  # the plain int8 of the study's references (whose speedup says if int8 pays here)
    recovery: RecoveryParams | None = None  # the recovery step finalize retrains at the final budget: its params then
    final_as_is: bool = False  # trains itself at full fidelity: finalize leaves a recipe with it as it is (QAT)
    legacy_units: bool = False  # its units dropped steps before the machine probe's units rule (older studies)
    study: StudyHook | None = None  # what a study makes for it before its first trial (the elastic student)

    def is_data_free(self, params: dict[str, Any] | None) -> bool:
        """Whether a step with ``params`` is data-free (applying it in probe mode gives the final model):
        ``data_free``, or ``data_free_when`` of its config (False for params that make no valid config)."""
        if self.data_free or self.data_free_when is None:
            return self.data_free
        try:
            return bool(self.data_free_when(self.make_config(params)))
        except MethodError:
            return False

    def units(self, params: dict[str, Any] | None) -> tuple[str, ...]:
        """The machine units a step with ``params`` computes with (``("bf16",)``; () for none, or for
        params that make no valid config: the config check says why elsewhere)."""
        if self.units_of is None:
            return ()
        try:
            return tuple(self.units_of(self.make_config(params)))
        except MethodError:
            return ()

    def runtime_refusal(self, params: dict[str, Any] | None, runtime: str) -> str | None:
        """Why a step with ``params`` cannot deploy in ``runtime``, from the registry alone: the method's
        own runtime, or a unit it computes with that the runtime has no kernel for (None: it may)."""
        if self.runtime not in (None, runtime):  # the method's own runtime, declared in its entry
            return f"{self.name} deploys only with {self.runtime}"
        for unit in self.units(params):
            refused, why = UNIT_REFUSALS.get(unit, ("", ""))
            if refused == runtime:
                return why
        if self.runtime_limits is not None:
            try:
                return self.runtime_limits(self.make_config(params)).get(runtime)
            except MethodError:
                return None  # params that make no config: the config check says why elsewhere
        return None

    def refusal(self, model: nn.Module, adapter: ArchAdapter | None = None) -> str | None:
        """Why ``model`` cannot take this method (None: it can): its architecture family refuses it
        (``ArchAdapter.refused``), or this model of the family (``model_refusal``)."""
        adapter = adapter or get_adapter(model)
        why = adapter.refusal(self.name)
        if why is None and self.model_refusal is not None:
            why = self.model_refusal(adapter, model)
        return why

    def check_model(self, model: nn.Module, adapter: ArchAdapter | None = None) -> None:
        """Raise a one-line UnsupportedArchitectureError when ``model`` cannot take this method."""
        adapter = adapter or get_adapter(model)
        why = self.refusal(model, adapter)
        if why is not None:
            raise UnsupportedArchitectureError(f"{self.name} is not supported for {adapter.family} models: {why}")

    def make_config(self, params: dict[str, Any] | None) -> Any:
        """Build and validate the method's Config from a plain dict (recipe or search)."""
        params = dict(params or {})
        known = {f.name for f in dataclasses.fields(self.config_cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise MethodError(
                f"method {self.name!r} has no parameter(s) {unknown}; known: {sorted(known)}"
            )
        wrong = type_problems(self.config_cls, params)
        if wrong:
            raise MethodError(f"method {self.name!r}: {'; '.join(wrong)}")
        try:
            return self.config_cls(**params)
        except (TypeError, ValueError) as err:
            raise MethodError(f"method {self.name!r}: {err}") from err


_REGISTRY: dict[str, MethodSpec] = {}


def register(
    name: str,
    config_cls: type,
    apply: ApplyFn,
    *,
    stage: Stage,
    version: int = 1,
    trains: bool = False,
    data_free: bool = False,
    runtime: str | None = None,
    family: str = "",
    summary: str = "",
    check_shapes: ShapeCheck | None = None,
    units_of: UnitsOf | None = None,
    data_free_when: Callable[[Any], bool] | None = None,
    runtime_limits: RuntimeLimits | None = None,
    model_refusal: ModelRefusal | None = None,
    size_modules: tuple[type, ...] = (),
    graph_int8: GraphInt8 | None = None,
    int8_reference: bool = False,
    recovery: RecoveryParams | None = None,
    final_as_is: bool = False,
    legacy_units: bool = False,
    study: StudyHook | None = None,
) -> MethodSpec:
    if name in _REGISTRY:
        raise MethodError(f"method {name!r} is already registered")
    if not dataclasses.is_dataclass(config_cls):
        raise MethodError(f"method {name!r}: config must be a dataclass")
    spec = MethodSpec(name, config_cls, apply, stage, version, trains, data_free, runtime, family, summary,
                      check_shapes, units_of, data_free_when, runtime_limits, model_refusal, size_modules,
                      graph_int8, int8_reference, recovery, final_as_is, legacy_units, study)
    _REGISTRY[name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MethodError(
            f"unknown method {name!r}; registered methods: {', '.join(sorted(_REGISTRY))}"
        ) from None


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def method_specs() -> list[MethodSpec]:
    """Every registered entry, by name."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def _sole(what: str, test: Callable[[MethodSpec], bool]) -> MethodSpec:
    found = [spec for spec in method_specs() if test(spec)]
    if len(found) != 1:
        raise MethodError(f"{len(found)} registered methods are {what} ({[s.name for s in found]}); there must be one")
    return found[0]


def int8_reference() -> MethodSpec:
    """The method of the study's plain int8 references (``quantize_dynamic``): where its reference
    runs no faster than fp32, the study's steps of it are not offered (search/machine.py)."""
    return _sole("the int8 reference", lambda spec: spec.int8_reference)


def recovery_method() -> MethodSpec:
    """The recovery step finalize retrains at the final budget (``distill``)."""
    return _sole("the recovery step", lambda spec: spec.recovery is not None)


def graph_int8_methods() -> tuple[str, ...]:
    """The methods whose int8 ONNX Runtime redoes on the float graph (``graph_int8``)."""
    return tuple(spec.name for spec in method_specs() if spec.graph_int8 is not None)


def config_to_params(config: Any) -> dict[str, Any]:
    """A Config as JSON-safe params (tuples become lists)."""
    return {k: _jsonable(v) for k, v in dataclasses.asdict(config).items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value
