"""Dynamic int8 quantization of Linear layers (int8 weights, activations quantized per batch).

Uses PyTorch's CPU int8 kernels (fbgemm/onednn): weights per-tensor symmetric int8,
activations quantized per batch at run time. ``parts`` picks attention / ffn / classifier
Linears; the classifier is left in float by default (it is tiny and quantizing it costs
accuracy for no speed). Several quantization steps may share a recipe as long as they touch
different parts (e.g. bf16 embeddings via ``cast_precision`` + int8 encoder here); a target
layer that an earlier step already quantized or cast is refused. A sparse Linear
(``prune_unstructured``) is quantized as a dense one: the int8 kernels are dense.

Size: 1 byte per quantized weight (+ one fp32 scale and zero point per matrix) instead of 4;
embeddings unchanged (≈4× smaller without embeddings). Latency: real int8 kernels, ≈2×
faster than fp32 on this CPU at batch 1 (MiniLM-L6, seq 128); CPU only.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .common import checked_parts, plain_linear, replace_module, unquantized_part_weights
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
        object.__setattr__(self, "parts", checked_parts(self.parts, PARTS))


def _target_names(model: nn.Module, config: QuantizeDynamicConfig, ctx: MethodContext) -> set[str]:
    """Qualified names of the Linear layers to quantize (refuses already quantized ones)."""
    targets: set[str] = set()
    for _, name, mod in unquantized_part_weights(model, ctx.adapter, config.parts, "quantize_dynamic"):
        plain = plain_linear(mod)
        if plain is not mod:  # e.g. a sparse Linear: torch swaps only exact nn.Linear
            replace_module(model, name, plain)
        targets.add(name)
    return targets


def apply(model: nn.Module, config: QuantizeDynamicConfig, ctx: MethodContext) -> nn.Module:
    if ctx.device != "cpu":
        raise MethodError("quantize_dynamic runs on CPU only (PyTorch dynamic int8 kernels)")
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
    data_free=True,
    family="quantization",
    summary="int8 weights, dynamic int8 activations for Linear layers (CPU)",
    graph_int8="dynamic",  # ONNX Runtime's dynamic quantizer on the same Linears of the float graph
    int8_reference=True,  # the study's int8 references: the teacher with this step alone, in each runtime
)
