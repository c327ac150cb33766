"""What a built model, or a module in it, says about itself: declared once, as typed protocols.

The methods build modules and models that answer these protocols (a module class declares the
ones it implements as bases; a flag a method sets on a built model is set through the setters
here); ``measure/`` and ``runtimes/`` ask with ``isinstance``, never by an attribute's name.
This module imports nothing of the package, so every layer may use it.

The members keep their ``autosqueeze_`` names: a saved folder stores a model's flags under them
(the manifest's ``flags``, see ``quant_state.pack``), so folders saved before still load, and the
prefix keeps them apart from any attribute of a transformers model.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

__all__ = ["ExitStats", "LookupTables", "LowPrecision", "RealInputs", "RuntimeBound", "StaticInt8", "StoredSize",
           "attach_exit_stats", "bind_runtime", "mark_real_inputs"]


# --- modules ---------------------------------------------------------------------------------
@runtime_checkable
class StoredSize(Protocol):
    """A module that stores its weights in a format of its own (a sparse matrix, packed int4, int8
    with scales): ``measure.size`` counts what it says, and not its parameters again."""

    def autosqueeze_nbytes(self) -> int:
        """Bytes it stores."""
        ...

    def autosqueeze_params(self) -> int:
        """Elements it stores (the weights it stands for, as counted in a model's size)."""
        ...


@runtime_checkable
class LookupTables(Protocol):
    """A module that needs integer tables (a vocabulary id map): their bytes count in the model's
    size, though they are not weights."""

    autosqueeze_lookup_buffers: tuple[str, ...]  # the names of those buffers


@runtime_checkable
class LowPrecision(Protocol):
    """autosqueeze's own low-precision module (cast, weight-only, static int8): its weights are not
    trained and no later step quantizes it again; the saved format packs it."""

    autosqueeze_quantized: bool


@runtime_checkable
class StaticInt8(Protocol):
    """A static int8 Linear with a calibrated input range: ONNX Runtime's QDQ graph quantizes that
    layer's input with the same range."""

    autosqueeze_static_int8: bool
    rmin: float
    rmax: float


# --- built models (flags set on the model by the method that built it; saved with the folder) ----
@runtime_checkable
class RealInputs(Protocol):
    """A model whose cost depends on its inputs (early exit): timed and evaluated on real dev
    batches at the profile's batch size (``measure.latency.needs_real_inputs``)."""

    autosqueeze_needs_real_inputs: bool


@runtime_checkable
class ExitStats(Protocol):
    """A dynamic-inference model that counts the layers its calls ran (early exit)."""

    def autosqueeze_exit_stats(self) -> dict[str, Any]:
        """What the calls since the last reset ran: ``mean_exit_layer``, ``calls``, ``histogram`` ..."""
        ...

    def autosqueeze_reset_exit_stats(self) -> None:
        ...


@runtime_checkable
class RuntimeBound(Protocol):
    """A model that only one runtime deploys (static int8: ONNX Runtime; its PyTorch model only
    simulates the int8 graph): deploying or timing it elsewhere is refused with the reason."""

    autosqueeze_requires_runtime: str
    autosqueeze_runtime_reason: str


def mark_real_inputs(model: Any) -> None:
    """Declare ``model`` a :class:`RealInputs` model."""
    model.autosqueeze_needs_real_inputs = True


def attach_exit_stats(model: Any, stats: Callable[[], dict[str, Any]], reset: Callable[[], None]) -> None:
    """Make ``model`` an :class:`ExitStats` model, answering with ``stats`` and ``reset``."""
    model.autosqueeze_exit_stats = stats
    model.autosqueeze_reset_exit_stats = reset


def bind_runtime(model: Any, runtime: str, reason: str) -> None:
    """Make ``model`` a :class:`RuntimeBound` model: deployed only by ``runtime``, else refused with ``reason``."""
    model.autosqueeze_requires_runtime = runtime
    model.autosqueeze_runtime_reason = reason
