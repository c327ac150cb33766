"""Sub-networks of an elastic (importance-ordered) student: choosing, running, slicing.

An elastic student keeps every layer's attention heads and FFN neurons sorted by importance
(reorder.py), so the sub-network with ``k`` heads is "the first ``k`` heads". A
:class:`Subnet` names one sub-network: which encoder layers stay (spread evenly over the
depth, as ``drop_layers`` does), and how many heads and FFN neurons each kept layer keeps.

Two ways to run one:

- :func:`activate` (training): the full-size weights stay shared; each affected Linear
  computes with a prefix slice of its weight (``F.linear(x, W[:o, :i], b[:o])``), so the
  gradients of every sub-network land in the same tensors (the sandwich rule needs that).
- :func:`slice_subnet` (trials, deployment): real, smaller matrices cut with the same code
  ``prune_structured`` uses, plus ``drop_layers``' layer removal. The sliced model and the
  activated full model compute the same function (tested).
"""
from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import ArchAdapter
from ..methods.prune_structured import prune_heads, prune_neurons, set_config_widths


@dataclass(frozen=True)
class Subnet:
    """Kept layer indices (of the full student) and per-kept-layer head / neuron counts."""

    layers: tuple[int, ...]
    heads: tuple[int, ...]
    neurons: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.layers or len(self.heads) != len(self.layers) or len(self.neurons) != len(self.layers):
            raise ValueError(f"a sub-network needs one head and one neuron count per kept layer, got {self}")
        if min(self.heads) < 1 or min(self.neurons) < 1:
            raise ValueError(f"a sub-network keeps at least one head and one neuron per layer, got {self}")


def even_layers(depth: int, keep: int) -> list[int]:
    """``keep`` of ``depth`` layers spread evenly, always including layer 0 (as drop_layers' ``even``)."""
    if not 1 <= keep <= depth:
        raise ValueError(f"cannot keep {keep} of {depth} layers")
    return sorted({round(i * depth / keep) for i in range(keep)})


LAYER_SETS = ("even", "first")


def pick_layers(depth: int, keep: int, how: str = "even") -> list[int]:
    """``keep`` of ``depth`` layers: ``even`` (spread, :func:`even_layers`) or ``first`` (the bottom ``keep``)."""
    if how not in LAYER_SETS:
        raise ValueError(f"layer_set must be one of {list(LAYER_SETS)}, got {how!r}")
    if how == "first" and 1 <= keep <= depth:
        return list(range(keep))
    return even_layers(depth, keep)


def resolve_count(name: str, value: int | float, total: int) -> int:
    """A count (int) or a fraction of ``total`` (float in (0, 1]) as a count in [1, total]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be an int count or a float fraction, got {value!r}")
    n = max(1, round(value * total)) if isinstance(value, float) else int(value)
    if not 1 <= n <= total:
        raise ValueError(f"{name}={value} must keep between 1 and {total}")
    return n


def per_layer(name: str, value: int | float | Sequence[int | float], totals: list[int]) -> tuple[int, ...]:
    """One count per layer from a single value or a per-layer list (counts or fractions)."""
    if isinstance(value, (list, tuple)):
        if len(value) != len(totals):
            raise ValueError(f"{name} lists {len(value)} values for {len(totals)} kept layers")
        return tuple(resolve_count(name, v, t) for v, t in zip(value, totals))
    return tuple(resolve_count(name, value, t) for t in totals)


def full_subnet(model: nn.Module, adapter: ArchAdapter) -> Subnet:
    layers = list(adapter.layers(model))
    return Subnet(tuple(range(len(layers))), tuple(adapter.num_heads(layer) for layer in layers),
                  tuple(adapter.ffn(layer)[1].in_features for layer in layers))


@dataclass(frozen=True)
class SubnetSpace:
    """What the sandwich rule samples: depth, heads and neurons between their minima and the full model."""

    depth: int
    heads: int
    neurons: int
    min_depth: int
    min_heads: int
    min_neurons: int
    neuron_step: int = 1

    def largest(self) -> Subnet:
        return self.make(self.depth, self.heads, self.neurons)

    def smallest(self) -> Subnet:
        return self.make(self.min_depth, self.min_heads, self.min_neurons)

    def make(self, depth: int, heads: int | Sequence[int], neurons: int | Sequence[int]) -> Subnet:
        layers = tuple(even_layers(self.depth, depth))
        h = tuple(heads) if isinstance(heads, Sequence) else (heads,) * len(layers)
        n = tuple(neurons) if isinstance(neurons, Sequence) else (neurons,) * len(layers)
        return Subnet(layers, h, n)

    def sample(self, rng: random.Random) -> Subnet:
        """A random sub-network: uniform depth; per-layer widths half of the time, else one width for all."""
        depth = rng.randint(self.min_depth, self.depth)
        steps = list(range(self.min_neurons, self.neurons + 1, self.neuron_step))
        if steps[-1] != self.neurons:
            steps.append(self.neurons)
        if rng.random() < 0.5:
            return self.make(depth, rng.randint(self.min_heads, self.heads), rng.choice(steps))
        return self.make(depth, [rng.randint(self.min_heads, self.heads) for _ in range(depth)],
                         [rng.choice(steps) for _ in range(depth)])


# --- running a sub-network with shared weights (training) ----------------------------
class PrefixLinear(nn.Linear):
    """A Linear that computes with the first ``out_keep`` rows / ``in_keep`` columns of its weight."""

    out_keep: int | None = None
    in_keep: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        b = self.bias
        if self.out_keep is not None:
            w = w[: self.out_keep]
            b = b[: self.out_keep] if b is not None else None
        if self.in_keep is not None:
            w = w[:, : self.in_keep]
        return F.linear(x, w, b)


def _elastic_linears(adapter: ArchAdapter, layer: nn.Module) -> dict[str, nn.Linear]:
    parts = adapter.attention(layer)
    up, down = adapter.ffn(layer)
    return {"q": parts.query, "k": parts.key, "v": parts.value, "o": parts.output, "up": up, "down": down}


@contextlib.contextmanager
def elastic_mode(model: nn.Module, adapter: ArchAdapter) -> Iterator[None]:
    """Make the model's attention and FFN projections prefix-sliceable for the duration (training only)."""
    changed: list[tuple[nn.Module, type]] = []
    try:
        for layer in adapter.layers(model):
            for lin in _elastic_linears(adapter, layer).values():
                if type(lin) is not nn.Linear:
                    raise ValueError(f"elastic training needs plain Linear projections, got {type(lin).__name__}")
                changed.append((lin, type(lin)))
                lin.__class__ = PrefixLinear
        yield
    finally:
        for lin, cls in changed:
            lin.__class__ = cls
            for attr in ("out_keep", "in_keep"):
                lin.__dict__.pop(attr, None)


@contextlib.contextmanager
def activate(model: nn.Module, adapter: ArchAdapter, subnet: Subnet) -> Iterator[None]:
    """Run ``model`` (inside :func:`elastic_mode`) as the sub-network ``subnet`` (shared weights)."""
    all_layers = list(adapter.layers(model))
    heads_before = [adapter.num_heads(layer) for layer in all_layers]
    try:
        for i, heads, neurons in zip(subnet.layers, subnet.heads, subnet.neurons):
            layer = all_layers[i]
            width = heads * adapter.attention(layer).head_size
            lins = _elastic_linears(adapter, layer)
            for name in ("q", "k", "v"):
                lins[name].out_keep = width  # type: ignore[assignment]
            lins["o"].in_keep = width  # type: ignore[assignment]
            lins["up"].out_keep = neurons  # type: ignore[assignment]
            lins["down"].in_keep = neurons  # type: ignore[assignment]
            adapter.set_num_heads(layer, heads)
        if len(subnet.layers) != len(all_layers):
            adapter.set_layers(model, [all_layers[i] for i in subnet.layers])
        yield
    finally:
        if len(adapter.layers(model)) != len(all_layers):
            adapter.set_layers(model, all_layers)
        for layer, heads in zip(all_layers, heads_before):
            adapter.set_num_heads(layer, heads)
            for lin in _elastic_linears(adapter, layer).values():
                lin.out_keep = lin.in_keep = None  # type: ignore[assignment]


# --- cutting a sub-network out for real (trials, deployment) ------------------------
def slice_subnet(model: nn.Module, adapter: ArchAdapter, subnet: Subnet) -> nn.Module:
    """Cut ``subnet`` out of ``model`` in place: real, smaller matrices (the first k heads / neurons)."""
    all_layers = list(adapter.layers(model))
    if max(subnet.layers) >= len(all_layers):
        raise ValueError(f"sub-network layers {list(subnet.layers)} do not exist in a {len(all_layers)}-layer model")
    kept = [all_layers[i] for i in subnet.layers]
    adapter.set_layers(model, kept)
    for layer, heads, neurons in zip(kept, subnet.heads, subnet.neurons):
        have_h, have_n = adapter.num_heads(layer), adapter.ffn(layer)[1].in_features
        if heads > have_h or neurons > have_n:
            raise ValueError(f"sub-network asks for {heads} heads / {neurons} neurons, a layer has {have_h} / {have_n}")
        if heads < have_h:
            prune_heads(adapter, layer, list(range(heads)))
        if neurons < have_n:
            prune_neurons(adapter, layer, list(range(neurons)))
    set_config_widths(model, adapter)
    return model
