"""An independent reference for the weight quantizers' contract checks (not a method case).

``fake_quantized(teacher, names, bits, group_size)`` is a copy of the teacher whose named
weights (Linear or Embedding) are rounded, in float, to the symmetric group-wise grid the
methods document: per output row (embedding row), groups of ``group_size`` consecutive
columns (``None``: the whole row), ``scale = max|w| / (2^(bits-1) - 1)``. Written here, not
imported, so a bug in the method's own rounding shows as a difference in the logits.

``assert_on_grid(module, weight, bits, group_size)``: a quantized module's dequantized weight
(Linear) or table (Embedding) is ``weight`` rounded to that grid.

``assert_logits_close(got, want, rel)`` compares logits relative to ``want``'s scale (its
largest absolute value): tiny random models of different families put their logits on very
different scales (BERT's tanh pooler ≈ 0.02, ModernBERT's LayerNorm head ≈ 2), so an absolute
tolerance is at once too loose for some and too tight for others.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def round_to_grid(w: torch.Tensor, bits: int, group_size: int | None) -> torch.Tensor:
    hi = 2 ** (bits - 1) - 1
    g = w.shape[1] if group_size is None else group_size
    out = torch.empty_like(w)
    for start in range(0, w.shape[1], g):
        block = w[:, start:start + g].float()
        scale = block.abs().amax(1, keepdim=True) / hi
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        out[:, start:start + g] = (torch.round(block / scale).clamp(-hi - 1, hi) * scale).to(w.dtype)
    return out


def fake_quantized(teacher: nn.Module, names: list[str], bits: int, group_size: int | None) -> nn.Module:
    ref = copy.deepcopy(teacher)
    with torch.no_grad():
        for name in names:
            weight = ref.get_submodule(name).weight
            weight.copy_(round_to_grid(weight, bits, group_size))
    return ref


def assert_logits_close(got: torch.Tensor, want: torch.Tensor, rel: float, what: str = "") -> None:
    scale = want.abs().max().item()
    err = (got - want).abs().max().item()
    assert err <= rel * scale, f"{what}: max |Δlogit| {err:.3g} > {rel} × logit scale {scale:.3g}"


def dequantized(module: nn.Module) -> torch.Tensor:
    """The float weight a weight-only quantized Linear multiplies by, or every row of an Embedding."""
    if hasattr(module, "dequantized_weight"):
        return module.dequantized_weight().float()
    return module(torch.arange(module.num_embeddings)).float()


def assert_on_grid(module: nn.Module, weight: torch.Tensor, bits: int, group_size: int | None,
                   rtol: float = 1e-5) -> None:
    want = round_to_grid(weight.detach().float(), bits, group_size)
    got = dequantized(module)
    assert torch.allclose(got, want, rtol=rtol, atol=1e-8), \
        f"dequantized weight off the {bits}-bit grid: max |Δ| {(got - want).abs().max().item():.3g}"
