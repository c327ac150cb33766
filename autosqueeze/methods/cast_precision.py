"""Half precision by part: cast embeddings / attention / FFN / classifier weights to bf16 or fp16.

Mixed precision is one ``parts`` list per step, and several quantization steps may share a
recipe on *different* parts (e.g. ``cast_precision(parts=[embeddings])`` then
``quantize_dynamic(parts=[attention, ffn])``); a part already quantized or cast by an
earlier step is refused.

Numerics: each cast Linear becomes a :class:`CastLinear` that converts its input to the
weight dtype, multiplies in that dtype (fp32 accumulation inside the kernel) and returns
fp32, so residual additions, LayerNorm, softmax and the attention mask stay fp32 (they are
never cast). One exception, equal in value: the FFN up projection keeps its output in the
low dtype, so the activation runs on the values that the down projection would round to
anyway, and two casts of the widest tensor are saved. Embedding tables become
:class:`CastEmbedding` (the looked-up rows are returned as fp32; the embedding LayerNorm
stays fp32). The pooler (part of the backbone, one token) is left in fp32.

Size: 2 bytes per weight instead of 4 in the chosen parts; embeddings halve only when
``embeddings`` is chosen. Latency: bf16 uses this CPU's avx512_bf16 matmuls (MiniLM-L6,
batch 1, seq 128, 2 threads: ≈1.55× for the default parts against ≈1.7× for a whole-model
``.to(bfloat16)``, which also runs LayerNorm/softmax in bf16). fp16 is meant for GPU
profiles: on a CPU without fp16 matmul kernels it still applies truthfully (accuracy is
real) but runs several times *slower* than fp32; latency is whatever is measured.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..capabilities import LowPrecision
from .common import PARTS, checked_parts, plain_linear, replace_module, unquantized_part_weights
from .context import MethodContext
from .registry import Stage, register

log = logging.getLogger(__name__)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class CastPrecisionConfig:
    dtype: str = "bf16"  # bf16 | fp16
    parts: tuple[str, ...] = ("embeddings", "attention", "ffn")

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        object.__setattr__(self, "parts", checked_parts(self.parts, PARTS))


class CastLinear(nn.Linear, LowPrecision):
    """A Linear whose weights are stored in a low dtype; input cast in, output cast back."""

    autosqueeze_quantized = True

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: torch.dtype, keep_output: bool = False) -> CastLinear:
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        new.weight = nn.Parameter(linear.weight.detach().to(dtype), requires_grad=False)
        if linear.bias is not None:
            new.bias = nn.Parameter(linear.bias.detach().to(dtype), requires_grad=False)
        new.out_dtype = linear.weight.dtype
        new.keep_output = keep_output  # output stays in the low dtype (FFN up projection)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x.to(self.weight.dtype), self.weight, self.bias)
        return y if self.keep_output else y.to(self.out_dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dtype={self.weight.dtype}, keep_output={self.keep_output}"


class CastEmbedding(nn.Embedding, LowPrecision):
    """An embedding table stored in a low dtype; looked-up rows are returned in the original dtype."""

    autosqueeze_quantized = True

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, dtype: torch.dtype) -> CastEmbedding:
        new = cls(emb.num_embeddings, emb.embedding_dim, padding_idx=emb.padding_idx, max_norm=emb.max_norm,
                  norm_type=emb.norm_type, scale_grad_by_freq=emb.scale_grad_by_freq, sparse=emb.sparse,
                  device="meta")
        new.weight = nn.Parameter(emb.weight.detach().to(dtype), requires_grad=False)
        new.out_dtype = emb.weight.dtype
        return new

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids).to(self.out_dtype)


def _ffn_up_ids(model: nn.Module, ctx: MethodContext) -> set[int]:
    """The FFN up projections that are single Linears (their output may stay in the low dtype)."""
    return {id(up) for layer in ctx.adapter.layers(model) for up in ctx.adapter.ffn(layer)[:1]
            if isinstance(up, nn.Linear)}


def apply(model: nn.Module, config: CastPrecisionConfig, ctx: MethodContext) -> nn.Module:
    dtype = DTYPES[config.dtype]
    targets = unquantized_part_weights(model, ctx.adapter, config.parts, "cast_precision")
    if dtype == torch.float16 and ctx.device == "cpu":
        log.warning("cast_precision: fp16 on CPU has no fast kernels here; accuracy is real, latency is "
                    "whatever is measured (usually slower than fp32)")
    ups = _ffn_up_ids(model, ctx) if "ffn" in config.parts else set()
    for _part, name, mod in targets:
        if isinstance(mod, nn.Embedding):
            replace_module(model, name, CastEmbedding.from_embedding(mod, dtype))
            continue
        plain = plain_linear(mod)  # a sparse Linear becomes dense: the half-precision kernels are dense
        replace_module(model, name, CastLinear.from_linear(plain, dtype, keep_output=id(mod) in ups))
    ctx.decisions["cast"] = len(targets)
    return model.eval()


SPEC = register(
    "cast_precision",
    CastPrecisionConfig,
    apply,
    stage=Stage.QUANTIZE,
    data_free=True,
    family="quantization",
    summary="bf16 / fp16 weights by part (embeddings, attention, FFN, classifier), fp32 in between",
    units_of=lambda config: ("bf16",) if config.dtype == "bf16" else (),
    legacy_units=True,  # the bf16 casts: the steps the machine probe dropped before its units rule
)
