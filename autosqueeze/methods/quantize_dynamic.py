"""Dynamic int8 quantization of Linear layers (int8 weights, activations quantized per batch).

Uses PyTorch's CPU int8 kernels (fbgemm/onednn). The classifier is left in float by default:
it is tiny and quantizing it costs accuracy for no speed.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .common import has_quantized_layers
from .context import MethodContext
from .registry import MethodError, Stage, register

PARTS = ("attention", "ffn", "classifier")


@dataclass(frozen=True)
class QuantizeDynamicConfig:
    dtype: str = "qint8"
    parts: tuple[str, ...] = ("attention", "ffn")

    def __post_init__(self) -> None:
        if self.dtype != "qint8":
            raise ValueError(f"dtype must be 'qint8', got {self.dtype!r}")
        object.__setattr__(self, "parts", tuple(self.parts))
        bad = set(self.parts) - set(PARTS)
        if bad or not self.parts:
            raise ValueError(f"parts must be a non-empty subset of {PARTS}, got {list(self.parts)}")


def _target_names(model: nn.Module, config: QuantizeDynamicConfig, ctx: MethodContext) -> set[str]:
    """Qualified names of the Linear layers to quantize."""
    names = {id(m): n for n, m in model.named_modules()}
    targets: set[str] = set()
    for layer in ctx.adapter.layers(model):
        if "attention" in config.parts:
            parts = ctx.adapter.attention(layer)
            mods: list[nn.Module] = [parts.query, parts.key, parts.value, parts.output]
        else:
            mods = []
        if "ffn" in config.parts:
            mods += list(ctx.adapter.ffn(layer))
        for mod in mods:  # a factorized projection is a container of Linears
            for sub in mod.modules():
                if isinstance(sub, nn.Linear):
                    targets.add(names[id(sub)])
    if "classifier" in config.parts:
        for head in ctx.adapter.classifier_modules(model):
            for sub in head.modules():
                if isinstance(sub, nn.Linear):
                    targets.add(names[id(sub)])
    return targets


def apply(model: nn.Module, config: QuantizeDynamicConfig, ctx: MethodContext) -> nn.Module:
    if ctx.device != "cpu":
        raise MethodError("quantize_dynamic runs on CPU only (PyTorch dynamic int8 kernels)")
    if has_quantized_layers(model):
        raise MethodError("quantize_dynamic: the model is already quantized")
    targets = _target_names(model, config, ctx)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice pointing at torchao
        return torch.ao.quantization.quantize_dynamic(model, targets, dtype=torch.qint8, inplace=False)


SPEC = register(
    "quantize_dynamic",
    QuantizeDynamicConfig,
    apply,
    stage=Stage.QUANTIZE,
    family="quantization",
    summary="int8 weights, dynamic int8 activations for Linear layers (CPU)",
)
