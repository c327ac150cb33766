"""The method registry: the name used in recipes and search spaces → (Config class, apply).

Registration is explicit (each method module calls :func:`register` once, and
``methods/__init__.py`` imports the modules); there is no package walking. Duplicate and
unknown names are errors.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from torch import nn

from ..errors import UserError
from ..typecheck import type_problems
from .context import MethodContext


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
        return None

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
) -> MethodSpec:
    if name in _REGISTRY:
        raise MethodError(f"method {name!r} is already registered")
    if not dataclasses.is_dataclass(config_cls):
        raise MethodError(f"method {name!r}: config must be a dataclass")
    spec = MethodSpec(name, config_cls, apply, stage, version, trains, data_free, runtime, family, summary,
                      check_shapes, units_of, data_free_when)
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


def config_to_params(config: Any) -> dict[str, Any]:
    """A Config as JSON-safe params (tuples become lists)."""
    return {k: _jsonable(v) for k, v in dataclasses.asdict(config).items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value
