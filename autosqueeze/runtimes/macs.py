"""Multiply-adds of one forward pass: every Linear's matmul plus the attention matmuls.

:func:`count_macs` runs the model once on a batch of the profile's shape and counts, for every
``nn.Linear`` (also PyTorch's dynamic int8 Linear, whose weight shape it reads), rows ×
in_features × out_features from the input it actually got (so a pooler that reads one token
counts one row), and for every encoder layer the two attention matmuls, Q·Kᵀ and P·V:
2 × batch × seq² × (heads × head size). Embedding lookups, LayerNorm, softmax and GELU are not
counted (they do not shrink with the matrices: the gap between a structure's speedup and its
multiply-add ratio is theirs).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["count_macs"]


def _linear_shape(module: nn.Module) -> tuple[int, int] | None:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    weight = getattr(module, "weight", None)
    if callable(weight) and type(module).__module__.startswith("torch.ao.nn.quantized"):
        w = weight()
        return int(w.shape[1]), int(w.shape[0])
    return None


def count_macs(model: nn.Module, seq_len: int = 128, batch_size: int = 1) -> dict[str, Any]:
    """``{"total", "linear", "attention", "seq_len", "batch_size"}`` multiply-adds of one forward."""
    from ..arch import get_adapter

    linear = 0
    hooks = []

    def hook(module: nn.Module, args: tuple[Any, ...], _out: Any) -> None:
        nonlocal linear
        shape = _linear_shape(module)
        if shape is None or not args:
            return
        x = args[0]
        linear += int(x.numel() // shape[0]) * shape[0] * shape[1]

    for m in model.modules():
        if _linear_shape(m) is not None:
            hooks.append(m.register_forward_hook(hook))
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 1000))
    ids = torch.randint(5, max(6, vocab), (batch_size, seq_len))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    try:
        with torch.inference_mode():
            model(**batch)
    finally:
        for h in hooks:
            h.remove()
    adapter = get_adapter(model)
    attention = 0
    for layer in adapter.layers(model):
        width = adapter.num_heads(layer) * adapter.attention(layer).head_size
        attention += 2 * batch_size * seq_len * seq_len * width
    return {"total": linear + attention, "linear": linear, "attention": attention, "seq_len": seq_len,
            "batch_size": batch_size}
