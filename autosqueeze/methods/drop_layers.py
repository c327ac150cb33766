"""Structured depth pruning: remove whole encoder layers (the model really gets shallower).

``keep`` layers survive. ``strategy`` picks which: ``even`` spreads them over the depth
(the survey's "every other layer" student, e.g. 0, 2, 4 of 6), ``bottom`` keeps the first
ones, or ``layers`` names them explicitly.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .context import MethodContext
from .registry import MethodError, Stage, register

STRATEGIES = ("even", "bottom", "explicit")


@dataclass(frozen=True)
class DropLayersConfig:
    keep: int | None = None
    strategy: str = "even"
    layers: tuple[int, ...] | None = None  # explicit indices (strategy "explicit")

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
            if self.strategy != "explicit":
                raise ValueError("'layers' is only used with strategy 'explicit'")
            if len(set(self.layers)) != len(self.layers) or not self.layers:
                raise ValueError(f"layers must be distinct and non-empty, got {self.layers}")
        elif self.strategy == "explicit":
            raise ValueError("strategy 'explicit' needs 'layers'")
        if self.keep is not None and self.keep < 1:
            raise ValueError(f"keep must be >= 1, got {self.keep}")
        if self.keep is None and self.layers is None:
            raise ValueError("give 'keep' (a layer count) or 'layers' (explicit indices)")


def kept_indices(config: DropLayersConfig, depth: int) -> list[int]:
    """The layer indices a config keeps on a model of ``depth`` layers."""
    if config.layers is not None:
        bad = [i for i in config.layers if not 0 <= i < depth]
        if bad:
            raise MethodError(f"drop_layers: layer indices {bad} out of range for a {depth}-layer model")
        return sorted(config.layers)
    keep = int(config.keep)  # type: ignore[arg-type]
    if keep > depth:
        raise MethodError(f"drop_layers: keep={keep} but the model has only {depth} layers")
    if config.strategy == "bottom":
        return list(range(keep))
    # even: spread over the depth, always including layer 0
    return sorted({round(i * depth / keep) for i in range(keep)})


def apply(model: nn.Module, config: DropLayersConfig, ctx: MethodContext) -> nn.Module:
    layers = ctx.adapter.layers(model)
    keep = kept_indices(config, len(layers))
    ctx.adapter.set_layers(model, [layers[i] for i in keep])
    ctx.decisions["kept_layers"] = keep
    before = ctx.kept_layers if ctx.kept_layers is not None else list(range(len(layers)))
    ctx.kept_layers = [before[i] for i in keep]  # indices in the teacher, for distillation
    return model


SPEC = register(
    "drop_layers",
    DropLayersConfig,
    apply,
    stage=Stage.DEPTH,
    data_free=True,
    family="structured pruning",
    summary="remove whole encoder layers",
)
