"""Cross-layer parameter sharing (ALBERT-style): groups of consecutive layers use one set of weights.

Layers ``[0, g)``, ``[g, 2g)`` … (``group_size`` g; the last group may be shorter) share
every parameter: the layer modules stay distinct (each keeps its own ``layer_idx``), but
their Linear and LayerNorm weights become the SAME ``nn.Parameter`` objects, so training
afterwards (a ``distill`` step later in the recipe) updates them together and they stay
tied; ``deepcopy``, ``state_dict``/``load_state_dict(strict=True)`` and safetensors'
``save_model``/``load_model`` keep the tying. ``init`` picks the shared weights: the group's
``first`` layer's, or the elementwise ``mean`` of the group's weights.

Size: the encoder's stored parameters drop from depth to number-of-groups layers
(``measure.size`` counts a shared tensor once); embeddings unchanged. Latency: unchanged
(~1.0x) — every layer is still computed, sharing saves memory, not compute. Recover accuracy
with a ``distill`` step. Later width/decompose methods that rebuild a layer's Linear modules
untie the layers they rebuild (the size report then shows the untied bytes); quantization
packs each layer's Linear separately, so an int8 model stores each shared weight per layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..arch import ArchAdapter
from .common import has_quantized_layers
from .context import MethodContext
from .registry import MethodError, Stage, register

INITS = ("first", "mean")


@dataclass(frozen=True)
class ShareLayersConfig:
    group_size: int = 2
    init: str = "first"

    def __post_init__(self) -> None:
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")


def groups_for(depth: int, group_size: int) -> list[list[int]]:
    """Consecutive layer groups of ``group_size`` (the last one may be shorter)."""
    return [list(range(s, min(s + group_size, depth))) for s in range(0, depth, group_size)]


def _check_same_structure(layers: list[nn.Module], group: list[int]) -> None:
    ref = {n: p.shape for n, p in layers[group[0]].named_parameters(remove_duplicate=False)}
    for i in group[1:]:
        got = {n: p.shape for n, p in layers[i].named_parameters(remove_duplicate=False)}
        if got != ref:
            raise MethodError(f"share_layers: layers {group[0]} and {i} differ in structure (parameter names or "
                              f"shapes); sharing needs identical layers — put share_layers before width pruning")


def _tie(layers: list[nn.Module], group: list[int], init: str) -> None:
    """Make every layer of ``group`` use the same Parameter objects (in place)."""
    first = layers[group[0]]
    if init == "mean" and len(group) > 1:
        with torch.no_grad():
            for name, p in first.named_parameters():
                p.copy_(torch.stack([layers[i].get_parameter(name) for i in group]).mean(0))
    for name, p in list(first.named_parameters()):
        owner_path, _, pname = name.rpartition(".")
        for i in group[1:]:
            owner = layers[i].get_submodule(owner_path) if owner_path else layers[i]
            setattr(owner, pname, p)  # nn.Module.__setattr__ registers the shared Parameter


def apply(model: nn.Module, config: ShareLayersConfig, ctx: MethodContext) -> nn.Module:
    if has_quantized_layers(model):
        raise MethodError("share_layers: the model has int8 layers; sharing comes before quantization")
    layers = list(ctx.adapter.layers(model))
    depth = len(layers)
    if config.group_size > depth:
        raise MethodError(f"share_layers: group_size={config.group_size} but the model has only {depth} layers")
    if len({id(m) for m in layers}) != depth:
        raise MethodError("share_layers: the same layer module appears twice in the encoder")
    groups = groups_for(depth, config.group_size)
    for group in groups:
        _check_same_structure(layers, group)
    for group in groups:
        _tie(layers, group, config.init)
    ctx.decisions["groups"] = groups  # not data dependent; recorded for reports and replay checks
    return model


def shared_groups(model: nn.Module, adapter: ArchAdapter) -> list[list[int]]:
    """Groups of layers whose parameters are the same objects (for checks and reports)."""
    layers = list(adapter.layers(model))
    out: list[list[int]] = []
    for i, layer in enumerate(layers):
        first = next(layer.parameters(), None)
        for g in out:
            if first is not None and first is next(layers[g[0]].parameters(), None):
                g.append(i)
                break
        else:
            out.append([i])
    return out


SPEC = register(
    "share_layers",
    ShareLayersConfig,
    apply,
    stage=Stage.DEPTH,
    family="parameter sharing",
    summary="ALBERT-style cross-layer sharing: consecutive layer groups use one set of weights (size only)",
)
