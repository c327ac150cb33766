"""Quantization-aware training with distillation: train through fake-quantized weights.

While distilling from ``ctx.teacher`` (exactly :mod:`.distill`'s loss and loop, which this
step calls), the weights of the chosen Linears are replaced in the forward pass by their
quantized values (round to the grid, straight-through estimator: the gradient passes to the
float weights unchanged). ``target`` picks the grid of the conversion that follows in the
recipe:

- ``quantize_dynamic``: per-tensor symmetric int8, ``s = max|w| / 127.5``, range [-128, 127]
  (PyTorch's dynamic int8 weight observer); optionally ``activations: true`` also
  fake-quantizes each Linear's input per batch (asymmetric, 7-bit range as the x86 dynamic
  kernels use), so the trained forward matches the int8 model's (up to float rounding).
- ``quantize_weights``: group-wise symmetric ``bits`` (8 or 4) with ``group_size``, exactly
  the grid :mod:`.quantize_weights` stores.

After training the fake-quant wrappers are removed and the *float* (latent) weights stay,
so the state dict has the float model's keys and shapes (save / replay work) and the later
conversion rounds them to exactly the values trained through. Put the matching
quantization step after it (same ``parts``; for ``quantize_weights`` the same ``bits`` and
``group_size``).

Size and latency: unchanged by this step (weights only); the quantization step that follows
sets both.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import distill
from .common import checked_parts, has_quantized_layers, part_weights
from .context import MethodContext
from .quantize_weights import fake_quantize
from .registry import MethodError, Stage, register

PARTS = ("attention", "ffn", "classifier")
TARGETS = ("quantize_dynamic", "quantize_weights")


@dataclass(frozen=True)
class QATConfig(distill.DistillConfig):
    """Distillation settings (see :class:`.distill.DistillConfig`) plus the quantization grid."""

    target: str = "quantize_dynamic"  # the conversion that follows: quantize_dynamic | quantize_weights
    bits: int = 8  # quantize_weights only: 8 | 4
    group_size: int | None = 128  # quantize_weights only: as its group_size
    parts: tuple[str, ...] = ("attention", "ffn")
    activations: bool = False  # quantize_dynamic only: also fake-quantize Linear inputs (per batch)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if isinstance(self.bits, bool) or self.bits not in (4, 8):
            raise ValueError(f"bits must be 8 or 4, got {self.bits!r}")
        if self.target == "quantize_dynamic" and self.bits != 8:
            raise ValueError("target quantize_dynamic is int8: bits must be 8")
        gs = self.group_size
        if gs is not None and (isinstance(gs, bool) or not isinstance(gs, int) or gs < 2 or gs % 2):
            raise ValueError(f"group_size must be an even int >= 2 or null (per output row), got {gs!r}")
        if self.activations and self.target != "quantize_dynamic":
            raise ValueError("activations: true only matches target quantize_dynamic (weight-only keeps float inputs)")
        object.__setattr__(self, "parts", checked_parts(self.parts, PARTS))

    def distill_config(self) -> distill.DistillConfig:
        names = [f.name for f in dataclasses.fields(distill.DistillConfig)]
        return distill.DistillConfig(**{name: getattr(self, name) for name in names})


def fake_quantize_tensor_int8(w: torch.Tensor) -> torch.Tensor:
    """Per-tensor symmetric int8 as torch's dynamic quantization stores weights."""
    scale = torch.clamp(w.abs().max() / 127.5, min=torch.finfo(torch.float32).eps)
    return torch.clamp(torch.round(w / scale), -128, 127) * scale


def fake_quantize_activation(x: torch.Tensor) -> torch.Tensor:
    """Per-tensor asymmetric over [min(x, 0), max(x, 0)] in 7 bits (0..127), straight-through: what
    torch's dynamic int8 Linear does to its input on x86/fbgemm (``reduce_range=True``)."""
    xd = x.detach()
    lo, hi = torch.clamp(xd.min(), max=0.0), torch.clamp(xd.max(), min=0.0)
    scale = torch.clamp((hi - lo) / 127.0, min=torch.finfo(torch.float32).eps)
    zero = torch.round(-lo / scale)
    q = (torch.clamp(torch.round(xd / scale) + zero, 0, 127) - zero) * scale
    return x + (q - xd)


class FakeQuant(nn.Module):
    """Parametrization: the weight as rounded to the grid, with a straight-through gradient."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        wd = w.detach()
        return w + (self.fn(wd) - wd)


def _fake_quantize_input(module: nn.Module, args: tuple) -> tuple:
    return (fake_quantize_activation(args[0]), *args[1:])


def _grid(config: QATConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    if config.target == "quantize_dynamic":
        return fake_quantize_tensor_int8
    return lambda w: fake_quantize(w, config.bits, config.group_size)


def apply(model: nn.Module, config: QATConfig, ctx: MethodContext) -> nn.Module:
    if ctx.probe or ctx.replay or config.steps == 0:
        return model  # training changes weights only
    if has_quantized_layers(model):
        raise MethodError("qat: the model already has quantized layers; put quantization after qat")
    linears = [mod for _, _, mod in part_weights(model, ctx.adapter, config.parts) if isinstance(mod, nn.Linear)]
    if not linears:
        raise MethodError(f"qat: no Linear layers in parts {list(config.parts)}")
    if ctx.teacher is None:
        raise MethodError("qat distils from the teacher, but the context has none")
    grid = _grid(config)
    hooks = []
    try:
        for mod in linears:
            parametrize.register_parametrization(mod, "weight", FakeQuant(grid))
            if config.activations:
                hooks.append(mod.register_forward_pre_hook(_fake_quantize_input))
        model = distill.apply(model, config.distill_config(), ctx)
    finally:
        for h in hooks:
            h.remove()
        for mod in linears:
            if parametrize.is_parametrized(mod, "weight"):
                parametrize.remove_parametrizations(mod, "weight", leave_parametrized=False)  # keep latent floats
    ctx.decisions["fake_quantized"] = len(linears)
    return model


SPEC = register(
    "qat",
    QATConfig,
    apply,
    stage=Stage.TRAIN,
    trains=True,
    family="quantization",
    summary="quantization-aware distillation: fake-quantized weights (STE), then a real quantization step",
    final_as_is=True,  # its own distillation is the recovery: finalize leaves a QAT recipe as it is
)
