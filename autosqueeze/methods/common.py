"""Small helpers shared by method modules."""
from __future__ import annotations

from torch import nn


def is_quantized_module(module: nn.Module) -> bool:
    """True for torch.ao quantized modules (their weights are packed int8, not trainable)."""
    return type(module).__module__.startswith("torch.ao.nn.quantized")


def has_quantized_layers(model: nn.Module) -> bool:
    return any(is_quantized_module(m) for m in model.modules())
