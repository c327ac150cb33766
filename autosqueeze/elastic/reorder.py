"""Importance ordering: permute every layer's heads and FFN neurons, most important first.

A permutation of heads (rows of Q, K, V and the matching columns of the attention output)
or of FFN neurons (rows of the up projection, columns of the down projection) does not change
what the model computes; afterwards "keep the first k" is the importance-based sub-network
(DynaBERT's network rewiring). Scores are the Taylor importance ``prune_structured`` uses.

The hidden width (d_model) is reordered the same way (:func:`reorder_hidden`): one permutation
of the residual stream's dimensions applied to every place it lives (embedding columns, every
LayerNorm's weight and bias, the input columns of every projection reading it, the output rows
of every projection writing it, the pooler / classifier head's input), exact because LayerNorm
statistics and every dot product are invariant under a consistent permutation. Its score is the
Taylor importance of a gate of ones multiplying every hidden LayerNorm's output (CoFi's hidden
mask; one gate shared by the embeddings and all layers), or without data the summed |gamma| of
those LayerNorms.
"""
from __future__ import annotations

import torch
from torch import nn

from ..arch import ArchAdapter
from ..methods.context import MethodContext
from ..methods.prune_structured import (
    gate_gradients,
    gradient_importance,
    magnitude_importance,
    prune_heads,
    prune_neurons,
)
from .subnet import HIDDEN_ORDER_ATTR


def descending(scores: torch.Tensor) -> list[int]:
    """Indices from the highest score to the lowest (ties: lower index first)."""
    return [int(i) for i in torch.argsort(-scores.float().cpu(), stable=True)]


def reorder(model: nn.Module, adapter: ArchAdapter, head_scores: list[torch.Tensor],
            neuron_scores: list[torch.Tensor]) -> dict[str, list[list[int]]]:
    """Permute each layer's heads and neurons by descending score, in place; returns the orders."""
    orders: dict[str, list[list[int]]] = {"heads": [], "neurons": []}
    for layer, hs, ns in zip(adapter.layers(model), head_scores, neuron_scores):
        h_order, n_order = descending(hs), descending(ns)
        prune_heads(adapter, layer, h_order)  # all heads kept, in a new order
        prune_neurons(adapter, layer, n_order)
        orders["heads"].append(h_order)
        orders["neurons"].append(n_order)
    return orders


def importance_scores(model: nn.Module, ctx: MethodContext, batches: int) -> tuple[list[torch.Tensor],
                                                                                    list[torch.Tensor]]:
    """Taylor (gradient) importance over ``batches`` training batches, or magnitudes without data."""
    if batches > 0 and ctx.train_batches is not None:
        return gradient_importance(model, ctx.adapter, ctx, batches, True, True, "auto")
    mags = [magnitude_importance(ctx.adapter, layer) for layer in ctx.adapter.layers(model)]
    return [m[0] for m in mags], [m[1] for m in mags]


def reorder_hidden(model: nn.Module, adapter: ArchAdapter, scores: torch.Tensor) -> list[int]:
    """Permute the hidden dimensions by descending score, in place (outputs unchanged); returns the
    order (the original index of each new dimension), also kept on the model for :func:`subnet.align_hidden`.
    Reordering an already reordered model composes the orders."""
    order = descending(scores)
    adapter.keep_hidden(model, order)
    before = getattr(model, HIDDEN_ORDER_ATTR, None)
    composed = torch.as_tensor(order, dtype=torch.long)
    if before is not None:
        composed = before[composed]
    setattr(model, HIDDEN_ORDER_ATTR, composed)
    return [int(i) for i in composed]


def hidden_importance(model: nn.Module, ctx: MethodContext, batches: int) -> torch.Tensor:
    """One score per hidden dimension: Taylor importance of a gate on every hidden LayerNorm's output
    over ``batches`` training batches, or the summed |LayerNorm weight| without data."""
    adapter = ctx.adapter
    why = adapter.hidden_refusal(model)
    if why is not None:
        raise ValueError(why)
    norms = adapter.hidden_norms(model)
    width = adapter.hidden_size(model)
    if batches <= 0 or ctx.train_batches is None:
        with torch.no_grad():
            return sum((n.weight.detach().abs().float() for n in norms if n.weight is not None),
                       torch.zeros(width))
    device = next(model.parameters()).device
    gate = torch.ones(width, device=device, requires_grad=True)

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return out * gate.to(out.dtype)

    handles = [n.register_forward_hook(hook) for n in norms]
    mode = "teacher" if ctx.teacher is not None else "labels"
    try:
        (total,) = gate_gradients(model, ctx, [gate], batches, mode, "elastic hidden importance")
    finally:
        for h in handles:
            h.remove()
    return total.cpu()
