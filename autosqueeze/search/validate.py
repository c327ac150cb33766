"""Model-aware validation of a search space, run once before any trial.

:func:`load_space` checks what a space file says on its own (methods, knobs, ranges,
order). Whether its ranges fit the study's model — ``drop_layers.keep`` above the model's
depth, ``prune_structured.heads_keep`` above its head count, an SVD rank that would shrink
no matrix — is only known with the model at hand: :func:`validate_for_model` applies every
structural step alone to a copy of the model, once with all its knobs at the low end of
their ranges and once per other extreme of each knob (probe mode: training steps are
skipped, data-dependent choices use one batch), and turns the first refusal into a
:class:`SpaceError` naming the file, the key, the value and the fix. To keep this to
seconds, the copy is a *twin*: the same depth, head count and FFN size with 2-wide heads;
a method with a ``check_shapes`` hook in the registry (``decompose_svd``: its limits are the
dimensions, and an SVD per matrix would cost minutes) is checked by it on the real model instead.
"""
from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from typing import Any

from torch import nn

from ..arch import get_adapter
from ..measure.latency import fixed_threads
from ..methods import MethodContext, MethodError, get_method
from .space import SearchSpace, SpaceError, StepSpace, knob_variants

log = logging.getLogger(__name__)


def _describe(step: StepSpace, knob: str | None, params: dict[str, Any]) -> str:
    if knob is None:
        shown = {k: params[k] for k in step.dists} or params
        return f"{step.id} (knobs at the low end of their ranges: {shown})"
    return f"{step.id}.{knob} = {params[knob]!r}"


def _fix(step: StepSpace, knob: str | None) -> str:
    if knob is None:
        return f"narrow the ranges (or change the fixed params) of step {step.id!r}"
    d = step.dists[knob]
    if d.type == "categorical":
        return f"remove that choice from {step.id}.{knob}"
    return f"narrow the range of {step.id}.{knob} (now {d.low}..{d.high})"


def _twin(model: nn.Module) -> nn.Module:
    """A cheap stand-in with the same depth, head count and FFN size but 2-wide heads (the
    hidden size shrinks to heads * 2): every count-based limit is the same, applying is fast.
    Falls back to the model itself when the config cannot be shrunk that way."""
    try:
        adapter = get_adapter(model)
        cfg = copy.deepcopy(model.config)
        heads = int(getattr(cfg, adapter.config_heads))
        hidden_attr = "hidden_size" if hasattr(cfg, "hidden_size") else "dim"
        hidden = getattr(cfg, hidden_attr)
        for attr in (hidden_attr, "pooler_hidden_size", "embedding_size"):  # DeBERTa's pooler, ELECTRA's tables
            if getattr(cfg, attr, None) == hidden:  # sizes that follow the hidden size (when they did)
                setattr(cfg, attr, 2 * heads)
        twin = type(model)(cfg).eval()
        same = [(adapter.num_heads(a), adapter.ffn(a)[0].out_features) for a in adapter.layers(model)] == \
               [(adapter.num_heads(b), adapter.ffn(b)[0].out_features) for b in adapter.layers(twin)]
        return twin if same else model
    except Exception as err:  # an architecture the shortcut does not cover: use the real thing
        log.debug("no cheap twin (%s); validating on the model itself", err)
        return model


def validate_for_model(space: SearchSpace, model: nn.Module, make_context: Callable[[], MethodContext]) -> int:
    """Apply each structural step's extreme configs to a stand-in of ``model``; returns the
    number of configs checked. Warns once per step that ``space.for_model`` left out because
    the model's architecture refuses its method.

    ``make_context()`` gives a fresh :class:`MethodContext` (training batches for
    data-dependent choices); it is switched to probe mode here. Raises :class:`SpaceError`
    on the first config the model cannot take.
    """
    t0 = time.perf_counter()
    for sid, why in space.skipped:  # left out by SearchSpace.for_model: the user should know
        log.warning("search space %s: step %r is skipped for this model (%s)", space.path.name, sid, why)
    twin = _twin(model)
    checked = 0
    for step in space.steps:
        spec = get_method(step.method)
        if spec.trains:
            continue  # weights only: nothing about the model's shape can refuse it
        seen: list[dict[str, Any]] = []
        for knob, params in knob_variants(step):
            if params in seen:
                continue
            seen.append(params)
            checked += 1
            if spec.check_shapes is not None:  # the method checks its config from the real shapes
                refusal = spec.check_shapes(model, spec.make_config(params))
                if refusal:
                    raise SpaceError(f"{space.path}: {_describe(step, knob, params)} {refusal}; {_fix(step, knob)}")
                continue
            ctx = make_context()
            ctx.adapter, ctx.probe, ctx.decisions = get_adapter(twin), True, {}
            ctx.teacher = twin if ctx.teacher is not None else None
            try:
                with fixed_threads(1):  # the twin's matrices are tiny: one thread is fastest
                    spec.apply(copy.deepcopy(twin), spec.make_config(params), ctx)
            except (MethodError, ValueError, RuntimeError, IndexError) as err:
                what = str(err) if isinstance(err, (MethodError, ValueError)) else f"{type(err).__name__}: {err}"
                raise SpaceError(
                    f"{space.path}: {_describe(step, knob, params)} cannot be applied to this model: {what}; "
                    f"{_fix(step, knob)}") from None
    log.info("search space %s fits the model (%d configs checked in %.1f s)", space.path, checked,
             time.perf_counter() - t0)
    return checked
