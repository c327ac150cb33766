"""Importance ordering: permute every layer's heads and FFN neurons, most important first.

A permutation of heads (rows of Q, K, V and the matching columns of the attention output)
or of FFN neurons (rows of the up projection, columns of the down projection) does not change
what the model computes; afterwards "keep the first k" is the importance-based sub-network
(DynaBERT's network rewiring). Scores are the Taylor importance ``prune_structured`` uses.
"""
from __future__ import annotations

import torch
from torch import nn

from ..arch import ArchAdapter
from ..methods.context import MethodContext
from ..methods.prune_structured import gradient_importance, magnitude_importance, prune_heads, prune_neurons


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
