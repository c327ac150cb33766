"""Recipe → model: the one builder the search, ``apply``, loading and ONNX export go through.

:func:`build` applies a recipe to a base model with data and training (the search's trials
and ``apply``), keeping the float model before the quantization steps (what is saved) and
every step's decisions. :func:`replay` rebuilds a recipe's model from those recorded
decisions alone — no data, no training (training steps are skipped: their effect is in the
saved weights) — either the whole recipe, the float part (``part="float"``: what a saved
folder's weights load into) or the quantization part on a float model (``part="quantize"``).
The low-level step runner is :func:`autosqueeze.recipe.apply_recipe`.
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from .arch import get_adapter
from .methods import MethodContext, Stage, get_method
from .recipe import Recipe, apply_recipe

__all__ = ["Built", "Part", "build", "quantize_start", "replay", "replay_context"]

Part = Literal["all", "float", "quantize"]


def quantize_start(recipe: Recipe) -> int:
    """Index of the first quantization step (len(steps) when there is none)."""
    for i, step in enumerate(recipe.steps):
        if get_method(step.method).stage >= Stage.QUANTIZE:
            return i
    return len(recipe.steps)


@dataclass
class Built:
    model: nn.Module  # the deployed model
    float_model: nn.Module  # before the quantization steps (what is saved)
    decisions: list[dict[str, Any]]


def build(recipe: Recipe, base: nn.Module, ctx: MethodContext) -> Built:
    """Apply every step of ``recipe`` to a copy of ``base`` (data and training from ``ctx``)."""
    q = quantize_start(recipe)
    float_model, dec = apply_recipe(recipe, base, ctx, upto=q)
    model = float_model
    if q < len(recipe.steps):
        rest = Recipe(steps=recipe.steps[q:])
        model, dec_q = apply_recipe(rest, float_model, ctx)
        dec = dec + dec_q
    return Built(model, float_model, dec)


def replay_context(recipe: Recipe, base: nn.Module) -> MethodContext:
    """A context that replays recorded decisions on ``base``: no data, no training."""
    return MethodContext(adapter=get_adapter(base), seed=recipe.seed, replay=True,
                         num_labels=int(getattr(getattr(base, "config", None), "num_labels", 2)))


def replay(recipe: Recipe, base: nn.Module, decisions: list[dict[str, Any]] | None = None,
           ctx: MethodContext | None = None, *, part: Part = "all", skip: Collection[str] = (),
           copy_model: bool = True) -> nn.Module:
    """Rebuild ``recipe``'s model from ``base`` and the ``decisions`` :func:`build` recorded.

    ``part``: ``"all"`` every step; ``"float"`` the steps before the quantization steps
    (``base`` is the teacher's structure); ``"quantize"`` the quantization steps (``base`` is
    the float model). Methods named in ``skip`` are left out (ONNX export redoes int8 in the
    graph). ``ctx`` must replay (default: :func:`replay_context`); ``copy_model=False``
    changes ``base`` in place. Raises what the steps raise (:class:`MethodError` for
    decisions that do not fit ``base``).
    """
    if part not in ("all", "float", "quantize"):
        raise ValueError(f"part must be 'all', 'float' or 'quantize', got {part!r}")
    ctx = ctx if ctx is not None else replay_context(recipe, base)
    if not ctx.replay:
        raise ValueError("replay needs a context that replays decisions (ctx.replay=True): see replay_context")
    q = quantize_start(recipe)
    recorded = list(decisions or [])
    model = base
    if part in ("all", "float"):
        if not any(s.method in skip for s in recipe.steps[:q]):  # the recipe itself: validated as a whole
            model, _ = apply_recipe(recipe, model, ctx, recorded or None, upto=q, copy_model=copy_model)
        else:
            model = _run(recipe, range(q), skip, recorded, model, ctx, copy_model)
        copy_model = False  # copied once at most
    if part in ("all", "quantize"):
        model = _run(recipe, range(q, len(recipe.steps)), skip, recorded, model, ctx, copy_model)
    return model


def _run(recipe: Recipe, indices: range, skip: Collection[str], recorded: list[dict[str, Any]], model: nn.Module,
         ctx: MethodContext, copy_model: bool) -> nn.Module:
    """``recipe``'s steps at ``indices`` (less the ``skip`` methods) with their recorded decisions."""
    kept = [i for i in indices if recipe.steps[i].method not in skip]
    steps = Recipe(steps=[recipe.steps[i] for i in kept])
    out, _ = apply_recipe(steps, model, ctx, [recorded[i] if i < len(recorded) else {} for i in kept],
                          copy_model=copy_model)
    return out
