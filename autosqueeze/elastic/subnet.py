"""Sub-networks of an elastic (importance-ordered) student: choosing, running, slicing.

An elastic student keeps every layer's attention heads and FFN neurons sorted by importance
(reorder.py), so the sub-network with ``k`` heads is "the first ``k`` heads". A
:class:`Subnet` names one sub-network: which encoder layers stay (spread evenly over the
depth, as ``drop_layers`` does), how many heads and FFN neurons each kept layer keeps, and
how many hidden dimensions (d_model) the whole network keeps (``hidden``; None: all).

The hidden width is cut everywhere the residual stream is (embedding columns, every
LayerNorm's weight and bias, the input columns of Q, K, V, FFN up and the pooler / classifier
head, the output rows of the attention output and FFN down projections). A LayerNorm over the
kept ``k`` dimensions normalises with *their* mean and variance: that is what the sliced model
computes, so the activated sub-network computes it too (``PrefixLayerNorm``).

Two ways to run one:

- :func:`activate` (training): the full-size weights stay shared; each affected Linear
  computes with a prefix slice of its weight (``F.linear(x, W[:o, :i], b[:o])``) and each
  LayerNorm with a prefix of its input and of its weight and bias, so the gradients of every
  sub-network land in the same tensors (the sandwich rule needs that).
- :func:`slice_subnet` (trials, deployment): real, smaller matrices cut with the same code
  ``prune_structured`` uses, plus ``drop_layers``' layer removal. The sliced model and the
  activated full model compute the same function (tested).

A student trained with exit heads (``ElasticSettings.exits``) has one head per layer;
:func:`slice_exit_heads` picks a sub-network's (its kept layers but the last) and cuts their
input to its hidden width, as its classifier's is cut.
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

HIDDEN_ORDER_ATTR = "autosqueeze_hidden_order"  # on a hidden-reordered student: teacher dim of each of its dims


@dataclass(frozen=True)
class Subnet:
    """Kept layer indices (of the full student) and per-kept-layer head / neuron counts."""

    layers: tuple[int, ...]
    heads: tuple[int, ...]
    neurons: tuple[int, ...]
    hidden: int | None = None  # hidden dimensions kept (the first ``hidden``); None: the full width

    def __post_init__(self) -> None:
        if not self.layers or len(self.heads) != len(self.layers) or len(self.neurons) != len(self.layers):
            raise ValueError(f"a sub-network needs one head and one neuron count per kept layer, got {self}")
        if min(self.heads) < 1 or min(self.neurons) < 1:
            raise ValueError(f"a sub-network keeps at least one head and one neuron per layer, got {self}")
        if self.hidden is not None and (isinstance(self.hidden, bool) or not isinstance(self.hidden, int)
                                        or self.hidden < 1):
            raise ValueError(f"a sub-network keeps at least one hidden dimension, got hidden={self.hidden!r}")


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


def hidden_width(model: nn.Module, adapter: ArchAdapter) -> int | None:
    """The model's hidden width where its family can slice it, else None (not elastic)."""
    return None if adapter.hidden_refusal(model) is not None else adapter.hidden_size(model)


def full_subnet(model: nn.Module, adapter: ArchAdapter) -> Subnet:
    layers = list(adapter.layers(model))
    return Subnet(tuple(range(len(layers))), tuple(adapter.num_heads(layer) for layer in layers),
                  tuple(adapter.ffn(layer)[1].in_features for layer in layers))


def _steps(low: int, high: int, step: int) -> list[int]:
    steps = list(range(low, high + 1, max(1, step)))
    if steps[-1] != high:
        steps.append(high)
    return steps


@dataclass(frozen=True)
class SubnetSpace:
    """What the sandwich rule samples: depth, heads, neurons and hidden width between their minima
    and the full model. ``hidden`` / ``min_hidden`` None (the default): the hidden width is not
    elastic and every sub-network keeps all of it (as before hidden width was elastic)."""

    depth: int
    heads: int
    neurons: int
    min_depth: int
    min_heads: int
    min_neurons: int
    neuron_step: int = 1
    hidden: int | None = None  # the full hidden width (None: not elastic)
    min_hidden: int | None = None  # the smallest sub-network's hidden width (None: the full width)
    hidden_step: int = 1  # granularity of sampled hidden widths

    @property
    def elastic_hidden(self) -> bool:
        return self.hidden is not None and self.min_hidden is not None and self.min_hidden < self.hidden

    def largest(self) -> Subnet:
        return self.make(self.depth, self.heads, self.neurons)

    def smallest(self) -> Subnet:
        return self.make(self.min_depth, self.min_heads, self.min_neurons,
                         self.min_hidden if self.elastic_hidden else None)

    def make(self, depth: int, heads: int | Sequence[int], neurons: int | Sequence[int],
             hidden: int | None = None) -> Subnet:
        """The sub-network of ``depth`` evenly spread layers with these widths (``hidden`` None or the
        full width: all hidden dimensions)."""
        layers = tuple(even_layers(self.depth, depth))
        h = tuple(heads) if isinstance(heads, Sequence) else (heads,) * len(layers)
        n = tuple(neurons) if isinstance(neurons, Sequence) else (neurons,) * len(layers)
        return Subnet(layers, h, n, None if hidden is None or hidden == self.hidden else hidden)

    def hidden_widths(self) -> list[int]:
        """The hidden widths the sandwich rule samples from (just the full width when not elastic)."""
        if not self.elastic_hidden:
            return [self.hidden] if self.hidden is not None else []
        assert self.hidden is not None and self.min_hidden is not None
        return _steps(self.min_hidden, self.hidden, self.hidden_step)

    def sample(self, rng: random.Random) -> Subnet:
        """A random sub-network: uniform depth; per-layer widths half of the time, else one width for all;
        a hidden width from :meth:`hidden_widths` when the hidden width is elastic (drawn last, so a
        space without it draws exactly what it drew before)."""
        depth = rng.randint(self.min_depth, self.depth)
        steps = _steps(self.min_neurons, self.neurons, self.neuron_step)
        if rng.random() < 0.5:
            heads: int | list[int] = rng.randint(self.min_heads, self.heads)
            neurons: int | list[int] = rng.choice(steps)
        else:
            heads = [rng.randint(self.min_heads, self.heads) for _ in range(depth)]
            neurons = [rng.choice(steps) for _ in range(depth)]
        hidden = rng.choice(self.hidden_widths()) if self.elastic_hidden else None
        return self.make(depth, heads, neurons, hidden)


def in_student_order(student: nn.Module, hidden_states: tuple[torch.Tensor, ...] | None
                     ) -> tuple[torch.Tensor, ...] | None:
    """The teacher's hidden states with their dimensions in the student's order (the student's
    dimension ``i`` is the teacher's ``order[i]``, the order ``reorder.reorder_hidden`` set), so a
    sub-network keeping the first ``k`` hidden dimensions compares with ``[..., :k]`` of them.
    Unchanged for a student whose hidden dimensions were not reordered."""
    order = getattr(student, HIDDEN_ORDER_ATTR, None)
    if order is None or hidden_states is None:
        return hidden_states
    return tuple(h.index_select(-1, order.to(h.device)) for h in hidden_states)


# --- running a sub-network with shared weights (training) ----------------------------
class PrefixLayerNorm(nn.LayerNorm):
    """A LayerNorm over the first ``keep`` dimensions of its input (its own mean and variance)."""

    keep: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.keep is None:
            return super().forward(x)
        k = self.keep
        w = self.weight[:k] if self.weight is not None else None
        b = self.bias[:k] if self.bias is not None else None
        return F.layer_norm(x[..., :k], (k,), w, b, self.eps)


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
            if x.shape[-1] > self.in_keep:  # a full-width input (DeBERTa's relative embeddings): its first dims
                x = x[..., : self.in_keep]
        return F.linear(x, w, b)


def _elastic_linears(adapter: ArchAdapter, layer: nn.Module) -> dict[str, nn.Linear]:
    parts = adapter.attention(layer)
    up, down = adapter.ffn(layer)
    return {"q": parts.query, "k": parts.key, "v": parts.value, "o": parts.output, "up": up, "down": down}


def _hidden_modules(model: nn.Module, adapter: ArchAdapter) -> tuple[list[nn.LayerNorm], list[nn.Linear]]:
    """(the LayerNorms, the Linears outside the encoder layers) a hidden-width prefix touches."""
    if adapter.hidden_refusal(model) is not None:
        return [], []
    readers = [_get_linear(model, p) for p in adapter.hidden_reader_paths(model)]
    return adapter.hidden_norms(model), readers


def _get_linear(model: nn.Module, path: str) -> nn.Linear:
    obj = model
    for part in path.split("."):
        obj = getattr(obj, part)
    assert isinstance(obj, nn.Linear)
    return obj


@contextlib.contextmanager
def elastic_mode(model: nn.Module, adapter: ArchAdapter) -> Iterator[None]:
    """Make the model's attention and FFN projections (and, where the family allows a narrower hidden
    width, its LayerNorms and pooler / classifier input) prefix-sliceable for the duration (training only)."""
    changed: list[tuple[nn.Module, type]] = []
    try:
        norms, readers = _hidden_modules(model, adapter)
        linears = [lin for layer in adapter.layers(model) for lin in _elastic_linears(adapter, layer).values()]
        for lin in linears + readers:
            if type(lin) is not nn.Linear:
                raise ValueError(f"elastic training needs plain Linear projections, got {type(lin).__name__}")
            changed.append((lin, type(lin)))
            lin.__class__ = PrefixLinear
        for norm in norms:
            if type(norm) is not nn.LayerNorm:
                raise ValueError(f"elastic training needs plain LayerNorms, got {type(norm).__name__}")
            changed.append((norm, type(norm)))
            norm.__class__ = PrefixLayerNorm
        yield
    finally:
        for mod, cls in changed:
            mod.__class__ = cls
            for attr in ("out_keep", "in_keep", "keep"):
                mod.__dict__.pop(attr, None)


@contextlib.contextmanager
def activate(model: nn.Module, adapter: ArchAdapter, subnet: Subnet) -> Iterator[None]:
    """Run ``model`` (inside :func:`elastic_mode`) as the sub-network ``subnet`` (shared weights)."""
    all_layers = list(adapter.layers(model))
    heads_before = [adapter.num_heads(layer) for layer in all_layers]
    hidden = subnet.hidden
    norms: list[nn.LayerNorm] = []
    readers: list[nn.Linear] = []
    if hidden is not None:
        why = adapter.hidden_refusal(model)
        if why is not None:
            raise ValueError(why)
        if hidden > adapter.hidden_size(model):
            raise ValueError(f"sub-network asks for {hidden} hidden dimensions, the model has "
                             f"{adapter.hidden_size(model)}")
        norms, readers = _hidden_modules(model, adapter)
        if not all(isinstance(m, PrefixLayerNorm) for m in norms) or \
                not all(isinstance(m, PrefixLinear) for m in readers):
            raise ValueError("activating a narrower hidden width needs elastic_mode around it")
    try:
        for i, heads, neurons in zip(subnet.layers, subnet.heads, subnet.neurons):
            layer = all_layers[i]
            width = heads * adapter.attention(layer).head_size
            lins = _elastic_linears(adapter, layer)
            for name in ("q", "k", "v"):
                lins[name].out_keep = width  # type: ignore[assignment]
                lins[name].in_keep = hidden  # type: ignore[assignment]
            lins["o"].in_keep = width  # type: ignore[assignment]
            lins["o"].out_keep = hidden  # type: ignore[assignment]
            lins["up"].out_keep = neurons  # type: ignore[assignment]
            lins["up"].in_keep = hidden  # type: ignore[assignment]
            lins["down"].in_keep = neurons  # type: ignore[assignment]
            lins["down"].out_keep = hidden  # type: ignore[assignment]
            adapter.set_num_heads(layer, heads)
        for norm in norms:
            norm.keep = hidden  # type: ignore[attr-defined]
        for lin in readers:
            lin.in_keep = hidden  # type: ignore[attr-defined]
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
        for norm in norms:
            norm.keep = None  # type: ignore[attr-defined]
        for lin in readers:
            lin.in_keep = None  # type: ignore[attr-defined]


# --- cutting a sub-network out for real (trials, deployment) ------------------------
def slice_subnet(model: nn.Module, adapter: ArchAdapter, subnet: Subnet) -> nn.Module:
    """Cut ``subnet`` out of ``model`` in place: real, smaller matrices (the first k heads / neurons /
    hidden dimensions); ``model.config`` follows (``hidden_size``; head count and FFN size where
    every layer agrees)."""
    all_layers = list(adapter.layers(model))
    if max(subnet.layers) >= len(all_layers):
        raise ValueError(f"sub-network layers {list(subnet.layers)} do not exist in a {len(all_layers)}-layer model")
    if subnet.hidden is not None:
        why = adapter.hidden_refusal(model)
        if why is not None:
            raise ValueError(why)
        if subnet.hidden > adapter.hidden_size(model):
            raise ValueError(f"sub-network asks for {subnet.hidden} hidden dimensions, the model has "
                             f"{adapter.hidden_size(model)}")
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
    if subnet.hidden is not None and subnet.hidden < adapter.hidden_size(model):
        adapter.keep_hidden(model, list(range(subnet.hidden)))
    set_config_widths(model, adapter)
    return model


def slice_exit_heads(exit_state: dict[str, torch.Tensor], subnet: Subnet) -> list[dict[str, torch.Tensor]]:
    """The student's exit heads for ``subnet`` (``exit_state``: ``heads.<layer>.dense.weight`` ... as the
    store keeps them): the head of each kept layer but the last, in order, its dense's input columns
    cut to the sub-network's hidden width (the first ``hidden`` ones, as the classifier's are). Views of
    ``exit_state``: copy before changing."""
    out = []
    for layer in subnet.layers[:-1]:
        prefix = f"heads.{layer}."
        head = {k[len(prefix):]: v for k, v in exit_state.items() if k.startswith(prefix)}
        if not head:
            raise ValueError(f"the student has no exit head after layer {layer}")
        if subnet.hidden is not None:
            head["dense.weight"] = head["dense.weight"][:, : subnet.hidden]
        out.append(head)
    return out
