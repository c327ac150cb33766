"""Weight-only int8 / int4: group-wise symmetric quantization, dequantized on the fly.

Each chosen weight matrix is split into groups of ``group_size`` consecutive input
features per output row (``group_size: null``, or a row shorter than that: one group per
row, i.e. per channel); each group stores ``round(w / s)`` with ``s = max|w| / (2^(bits-1) - 1)``,
clamped to the signed range. int8 is stored one byte per weight; int4 is packed two per byte. Forward
dequantizes the whole matrix (``q * s``, in ``compute`` dtype) and runs a dense matmul;
embedding tables (``parts`` may include ``embeddings``) dequantize only the looked-up rows.
A row length that is not a multiple of the group size is zero-padded (the padding is stored
and counted). Activations stay float. The result depends on the weights only, so replay is
deterministic. Several quantization steps may share a recipe on different parts; a part
already quantized or cast is refused; a sparse Linear is quantized dense.

Size (a ``capabilities.StoredSize`` module): 1 byte per int8 weight or 0.5 per int4 weight, plus one
fp32 scale per group (+ fp32 bias); embeddings shrink only when ``embeddings`` is chosen.
Latency: there is no int4/int8 weight-only matmul kernel on this CPU — dequantizing every
matrix on every forward costs time. Measured on MiniLM-L6 shapes (batch 1, seq 128, 2
threads): int8 ``compute: fp32`` ≈0.7× (slower than fp32), int8 ``compute: bf16`` ≈1.1×,
int4 ≈0.6×. It is what is measured; this method buys size (memory, download), not speed.
Embedding lookups stay cheap.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..capabilities import LowPrecision, StoredSize
from .common import PARTS, checked_parts, plain_linear, replace_module, unquantized_part_weights
from .context import MethodContext
from .registry import MethodError, Stage, register

COMPUTE = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class QuantizeWeightsConfig:
    bits: int = 8  # 8 | 4
    group_size: int | None = 128  # input features per scale; None: one scale per output row
    parts: tuple[str, ...] = ("attention", "ffn")
    compute: str = "fp32"  # dtype the weights are dequantized to and multiplied in: fp32 | bf16

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or self.bits not in (4, 8):
            raise ValueError(f"bits must be 8 or 4, got {self.bits!r}")
        gs = self.group_size
        if gs is not None and (isinstance(gs, bool) or not isinstance(gs, int) or gs < 2 or gs % 2):
            raise ValueError(f"group_size must be an even int >= 2 or null (per output row), got {gs!r}")
        object.__setattr__(self, "parts", checked_parts(self.parts, PARTS))
        if self.compute not in COMPUTE:
            raise ValueError(f"compute must be one of {tuple(COMPUTE)}, got {self.compute!r}")


def qrange(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def group_quantize(w: torch.Tensor, bits: int, group_size: int | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(q int8 (rows, groups*g), scales fp32 (rows, groups), g) for a 2-D ``w``, rows padded with zeros."""
    rows, cols = w.shape
    row = cols + cols % 2 if bits == 4 else cols  # int4 packs pairs
    g = row if group_size is None or group_size >= cols else group_size
    groups = -(-cols // g)
    padded = F.pad(w.detach().float(), (0, groups * g - cols)).view(rows, groups, g)
    lo, hi = qrange(bits)
    scales = padded.abs().amax(-1) / hi
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.round(padded / scales.unsqueeze(-1)).clamp_(lo, hi).to(torch.int8)
    return q.view(rows, groups * g), scales, g


def fake_quantize(w: torch.Tensor, bits: int, group_size: int | None) -> torch.Tensor:
    """``w`` rounded to the grid :func:`group_quantize` stores (same shape and dtype)."""
    q, scales, g = group_quantize(w, bits, group_size)
    deq = (q.view(w.shape[0], -1, g).float() * scales.unsqueeze(-1)).view(w.shape[0], -1)
    return deq[:, : w.shape[1]].to(w.dtype)


def _pack4(q: torch.Tensor) -> torch.Tensor:
    u = (q.to(torch.int16) + 8).to(torch.uint8)  # [-8, 7] → [0, 15]
    return u[:, 0::2] | (u[:, 1::2] << 4)


def _unpack4(p: torch.Tensor) -> torch.Tensor:
    low, high = (p & 0xF), (p >> 4)
    return torch.stack((low, high), -1).view(*p.shape[:-1], -1).to(torch.int8) - 8


class _GroupQuantized(nn.Module, StoredSize, LowPrecision):
    """Storage shared by the Linear and Embedding variants: q (int8, or packed int4) + scales."""

    autosqueeze_quantized = True

    def _store(self, weight: torch.Tensor, bits: int, group_size: int | None) -> None:
        q, scales, g = group_quantize(weight, bits, group_size)
        self.bits, self.group, self.cols = bits, g, weight.shape[1]
        self.register_buffer("qweight", _pack4(q) if bits == 4 else q)
        self.register_buffer("scales", scales)

    def _dequant(self, qrows: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        q = _unpack4(qrows) if self.bits == 4 else qrows
        w = q.view(*q.shape[:-1], -1, self.group).to(dtype) * scales.to(dtype).unsqueeze(-1)
        w = w.flatten(-2)
        return w if w.shape[-1] == self.cols else w[..., : self.cols]

    def autosqueeze_nbytes(self) -> int:
        bias = getattr(self, "bias", None)
        n = self.qweight.numel() * self.qweight.element_size() + self.scales.numel() * self.scales.element_size()
        return n + (bias.numel() * bias.element_size() if bias is not None else 0)


class WeightOnlyLinear(_GroupQuantized):
    """``Linear`` with int8/int4 group-quantized weights, dequantized on every forward."""

    def __init__(self, linear: nn.Linear, bits: int, group_size: int | None, compute: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features, self.compute = linear.in_features, linear.out_features, compute
        self._store(linear.weight, bits, group_size)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)

    def dequantized_weight(self) -> torch.Tensor:
        return self._dequant(self.qweight, self.scales, self.compute)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(self.compute)
        return F.linear(x.to(self.compute), self.dequantized_weight(), bias).to(x.dtype)

    def autosqueeze_params(self) -> int:
        return self.in_features * self.out_features + (self.bias.numel() if self.bias is not None else 0)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group={self.group}, compute={self.compute}")


class WeightOnlyEmbedding(_GroupQuantized):
    """Embedding table with int8/int4 group-quantized rows; only looked-up rows are dequantized."""

    def __init__(self, emb: nn.Embedding, bits: int, group_size: int | None) -> None:
        super().__init__()
        if emb.max_norm is not None:
            raise MethodError("quantize_weights: embeddings with max_norm are not supported")
        self.num_embeddings, self.embedding_dim = emb.num_embeddings, emb.embedding_dim
        self.padding_idx = emb.padding_idx
        self.out_dtype = emb.weight.dtype
        self._store(emb.weight, bits, group_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self._dequant(self.qweight[ids], self.scales[ids], self.out_dtype)

    def autosqueeze_params(self) -> int:
        return self.num_embeddings * self.embedding_dim

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}, group={self.group}"


def apply(model: nn.Module, config: QuantizeWeightsConfig, ctx: MethodContext) -> nn.Module:
    targets = unquantized_part_weights(model, ctx.adapter, config.parts, "quantize_weights")
    compute = COMPUTE[config.compute]
    with torch.no_grad():
        for _, name, mod in targets:
            if isinstance(mod, nn.Embedding):
                new: nn.Module = WeightOnlyEmbedding(mod, config.bits, config.group_size)
            else:  # a sparse Linear is quantized dense
                new = WeightOnlyLinear(plain_linear(mod), config.bits, config.group_size, compute)
            replace_module(model, name, new)
    ctx.decisions["quantized"] = len(targets)
    return model.eval()


SPEC = register(
    "quantize_weights",
    QuantizeWeightsConfig,
    apply,
    stage=Stage.QUANTIZE,
    data_free=True,  # from the weights alone: the probe build is the final model
    family="quantization",
    summary="weight-only int8/int4 (group-wise symmetric), dequantized on the fly; buys size, not speed",
    units_of=lambda config: ("bf16",) if config.compute == "bf16" else (),
    size_modules=(WeightOnlyLinear, WeightOnlyEmbedding),
)
