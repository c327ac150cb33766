"""Low-rank factorization: truncated SVD of the attention and FFN projections.

Each chosen ``Linear(in, out)`` (``parts``: query, key, value, attn_out, ffn_up, ffn_down, or
the groups ``attention`` / ``ffn``) becomes a :class:`LowRankLinear`: ``Linear(in, r, bias=False)``
followed by ``Linear(r, out)`` (the original bias), with the singular values split evenly
(``sqrt(s)``) between the two factors. The rank is ``rank`` (the same for every matrix) or the
smallest rank that keeps ``energy`` of the matrix's squared singular values. SVD is not data
dependent; the rank chosen per matrix is still written to the decisions so a saved model is
rebuilt with the same shapes.

Only offered where it lowers the real cost: a matrix whose factorization would store at least
as much as it does now (``r*(in+out) >= in*out``) is left alone and listed in
``decisions["skipped"]``. ``allow_no_gain=True`` factorizes them anyway (clamping the rank to
``min(in, out)``), which is useful to test that full rank reproduces the outputs exactly.

Optional ``embedding_rank`` factorizes the word embeddings the same way (ALBERT-style):
``Embedding(V, r)`` followed by ``Linear(r, hidden, bias=False)``.

Size: each factorized matrix goes from ``in*out`` to ``r*(in+out)`` weights (biases
unchanged); embeddings are unchanged unless ``embedding_rank`` is set (``V*H`` →
``r*(V+H)``). Latency: FLOPs fall by the same ratio, but each matrix becomes two matmuls,
so at batch 1 the extra per-op overhead eats part of the gain; latency is whatever is
measured. Structured pruning must come first (it refuses a factorized layer); dynamic int8
quantization later quantizes both factors.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from ..arch import ArchAdapter, get_adapter
from .common import is_quantized_module
from .context import MethodContext
from .registry import MethodError, Stage, register

log = logging.getLogger(__name__)

PROJECTIONS = ("query", "key", "value", "attn_out", "ffn_up", "ffn_down")
GROUPS = {"attention": ("query", "key", "value", "attn_out"), "ffn": ("ffn_up", "ffn_down")}


@dataclass(frozen=True)
class DecomposeSVDConfig:
    rank: int | None = None  # one rank for every matrix, or
    energy: float | None = None  # fraction of squared singular values kept, per matrix
    parts: tuple[str, ...] = ("attention", "ffn")
    embedding_rank: int | None = None  # also factorize the word embeddings
    allow_no_gain: bool = False  # factorize even where it does not shrink the matrix (tests)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", tuple(self.parts))
        allowed = PROJECTIONS + tuple(GROUPS)
        bad = [p for p in self.parts if p not in allowed]
        if bad or not self.parts:
            raise ValueError(f"parts must be a non-empty subset of {allowed}, got {list(self.parts)}")
        if self.rank is not None and self.energy is not None:
            raise ValueError("give either rank or energy, not both")
        if self.rank is None and self.energy is None and self.embedding_rank is None:
            raise ValueError("give rank (an int >= 1) or energy (a fraction in (0, 1]), and/or embedding_rank")
        for name in ("rank", "embedding_rank"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.energy is not None and (isinstance(self.energy, bool) or not 0.0 < float(self.energy) <= 1.0):
            raise ValueError(f"energy must be a fraction in (0, 1], got {self.energy!r}")

    def projections(self) -> list[str]:
        """The projection names ``parts`` selects, in a fixed order."""
        chosen = {q for p in self.parts for q in GROUPS.get(p, (p,))}
        return [p for p in PROJECTIONS if p in chosen] if (self.rank or self.energy) else []


class LowRankLinear(nn.Module):
    """``second(first(x))``: a rank-``r`` factorization of a ``Linear(in, out)``."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.second = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    @classmethod
    def from_linear(cls, lin: nn.Linear, rank: int) -> LowRankLinear:
        w = lin.weight.detach()
        u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
        root = s[:rank].sqrt()
        new = cls(lin.in_features, lin.out_features, rank, lin.bias is not None, w.device, w.dtype)
        with torch.no_grad():
            new.first.weight.copy_(root[:, None] * vh[:rank])
            new.second.weight.copy_(u[:, :rank] * root[None, :])
            if lin.bias is not None:
                new.second.bias.copy_(lin.bias.detach())
        new.train(lin.training)
        return new


class FactorizedEmbedding(nn.Module):
    """``proj(embed(ids))``: word embeddings of rank ``r`` (``Embedding(V, r)`` + ``Linear(r, H)``)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, rank: int, padding_idx: int | None = None,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.rank = num_embeddings, embedding_dim, rank
        self.padding_idx = padding_idx
        self.embed = nn.Embedding(num_embeddings, rank, padding_idx=padding_idx, device=device, dtype=dtype)
        self.proj = nn.Linear(rank, embedding_dim, bias=False, device=device, dtype=dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.embed(ids))

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, rank: int) -> FactorizedEmbedding:
        w = emb.weight.detach()
        u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
        new = cls(emb.num_embeddings, emb.embedding_dim, rank, emb.padding_idx, w.device, w.dtype)
        with torch.no_grad():
            new.embed.weight.copy_(u[:, :rank] * s[:rank])
            new.proj.weight.copy_(vh[:rank].T)
        new.train(emb.training)
        return new


def energy_rank(weight: torch.Tensor, energy: float) -> int:
    """Smallest rank whose singular values keep ``energy`` of the squared total."""
    s2 = torch.linalg.svdvals(weight.detach().double()).pow(2)
    frac = s2.cumsum(0) / s2.sum().clamp_min(1e-300)
    r = int(torch.searchsorted(frac, torch.tensor(energy - 1e-12, dtype=frac.dtype)).item()) + 1
    return min(r, s2.numel())


def gains(rank: int, in_features: int, out_features: int) -> bool:
    """True when a rank-``rank`` factorization stores fewer weights than the dense matrix."""
    return rank * (in_features + out_features) < in_features * out_features


def _paths(adapter: ArchAdapter) -> dict[str, str]:
    return {"query": adapter.q, "key": adapter.k, "value": adapter.v, "attn_out": adapter.attn_out,
            "ffn_up": adapter.ffn_up, "ffn_down": adapter.ffn_down}


def _module(adapter: ArchAdapter, layer: nn.Module, part: str, i: int) -> nn.Linear:
    parts = adapter.attention(layer)
    up, down = adapter.ffn(layer)
    mod = {"query": parts.query, "key": parts.key, "value": parts.value, "attn_out": parts.output,
           "ffn_up": up, "ffn_down": down}[part]
    if isinstance(mod, LowRankLinear):
        raise MethodError(f"decompose_svd: layer {i} {part} is already factorized")
    if is_quantized_module(mod) or any(is_quantized_module(m) for m in mod.modules()):
        raise MethodError(f"decompose_svd: layer {i} {part} is quantized; decompose before quantizing")
    if not isinstance(mod, nn.Linear):
        raise MethodError(f"decompose_svd: layer {i} {part} is a {type(mod).__name__}, not a Linear")
    return mod


def _distinct(per: dict[str, nn.Linear]) -> dict[str, nn.Linear]:
    """One entry per matrix: a fused QKV projection (ModernBERT) is factorized once, as ``query``."""
    seen: set[int] = set()
    out = {}
    for part, lin in per.items():
        if id(lin) not in seen:
            seen.add(id(lin))
            out[part] = lin
    return out


def _choose_rank(lin: nn.Linear, config: DecomposeSVDConfig) -> int:
    full = min(lin.in_features, lin.out_features)
    if config.rank is not None:
        return min(int(config.rank), full)
    return min(energy_rank(lin.weight, float(config.energy)), full)  # type: ignore[arg-type]


def _decompose_layers(model: nn.Module, config: DecomposeSVDConfig, ctx: MethodContext) -> dict:
    adapter = ctx.adapter
    layers = list(adapter.layers(model))
    paths = _paths(adapter)
    projections = config.projections()
    mods = [_distinct({p: _module(adapter, layer, p, i) for p in projections}) for i, layer in enumerate(layers)]
    if ctx.replay:
        ranks = ctx.decisions.get("ranks", [])
        if not isinstance(ranks, list) or len(ranks) != len(layers):
            raise MethodError(f"decompose_svd replay: decisions['ranks'] must hold one mapping per layer "
                              f"({len(layers)}), got {ranks!r:.80}")
        ranks = [{str(p): int(r) for p, r in per.items()} for per in ranks]
        for i, per in enumerate(ranks):
            unknown = set(per) - set(projections)
            if unknown:
                raise MethodError(f"decompose_svd replay: layer {i} ranks name {sorted(unknown)}, not in parts")
        skipped = list(ctx.decisions.get("skipped", []))
    else:
        if config.rank is not None and not config.allow_no_gain and all(
            config.rank >= min(m.in_features, m.out_features) for per in mods for m in per.values()
        ):
            dims = sorted({min(m.in_features, m.out_features) for per in mods for m in per.values()})
            raise MethodError(f"decompose_svd: rank {config.rank} is not below the matrix dimensions {dims}; "
                              f"nothing would be factorized")
        ranks, skipped = [], []
        for i, per in enumerate(mods):
            chosen: dict[str, int] = {}
            for part, lin in per.items():
                r = _choose_rank(lin, config)
                if config.allow_no_gain or gains(r, lin.in_features, lin.out_features):
                    chosen[part] = r
                else:
                    skipped.append(f"layer{i}.{part}")
            ranks.append(chosen)
        if skipped:
            log.info("decompose_svd: %d matrices skipped (factorizing them would not shrink them)", len(skipped))
    for i, (layer, per) in enumerate(zip(layers, ranks)):
        for part, r in per.items():
            lin = mods[i][part]
            if not 1 <= r <= min(lin.in_features, lin.out_features):
                raise MethodError(f"decompose_svd: rank {r} is invalid for layer {i} {part} "
                                  f"({lin.out_features}x{lin.in_features})")
            adapter.set_module(layer, paths[part], LowRankLinear.from_linear(lin, r))
        ctx.report("decompose_svd", i + 1, len(layers))
    return {"ranks": ranks, "skipped": skipped}


def _decompose_embedding(model: nn.Module, config: DecomposeSVDConfig, ctx: MethodContext) -> dict:
    emb = model.get_input_embeddings()
    if isinstance(emb, FactorizedEmbedding):
        raise MethodError("decompose_svd: the word embeddings are already factorized")
    if not isinstance(emb, nn.Embedding):
        raise MethodError(f"decompose_svd: word embeddings are a {type(emb).__name__}, not an nn.Embedding")
    full = min(emb.num_embeddings, emb.embedding_dim)
    if ctx.replay:
        r = ctx.decisions.get("embedding_rank")
        if r is None:
            return {"embedding_skipped": True}
        r = int(r)
    else:
        r = min(int(config.embedding_rank), full)  # type: ignore[arg-type]
        if not config.allow_no_gain and not gains(r, emb.embedding_dim, emb.num_embeddings):
            if config.embedding_rank >= full:  # type: ignore[operator]
                raise MethodError(f"decompose_svd: embedding_rank {config.embedding_rank} is not below the "
                                  f"embedding dimensions ({emb.num_embeddings}x{emb.embedding_dim})")
            log.info("decompose_svd: embedding rank %d would not shrink the embeddings; skipped", r)
            return {"embedding_skipped": True}
    model.set_input_embeddings(FactorizedEmbedding.from_embedding(emb, r))
    return {"embedding_rank": r}


def apply(model: nn.Module, config: DecomposeSVDConfig, ctx: MethodContext) -> nn.Module:
    decisions = _decompose_layers(model, config, ctx) if config.projections() else {}
    if config.embedding_rank is not None:
        decisions.update(_decompose_embedding(model, config, ctx))
    ctx.decisions.update(decisions)
    return model


def check_shapes(model: nn.Module, config: DecomposeSVDConfig) -> str | None:
    """Whether ``config`` fits ``model``, from the matrix shapes alone (no SVD; search-space
    validation runs this instead of applying): a rank must shrink some matrix, an
    embedding rank must be below the embeddings' dimensions. Returns why not, or None."""
    adapter = get_adapter(model)
    shapes = []
    for layer in adapter.layers(model):
        parts = adapter.attention(layer)
        up, down = adapter.ffn(layer)
        mods = {"query": parts.query, "key": parts.key, "value": parts.value, "attn_out": parts.output,
                "ffn_up": up, "ffn_down": down}
        shapes += [(int(mods[p].in_features), int(mods[p].out_features)) for p in config.projections()]
    if config.rank is not None and not config.allow_no_gain and shapes and not any(
            gains(min(config.rank, i, o), i, o) for i, o in shapes):
        return (f"would factorize no matrix of this model (matrices {sorted(set(shapes))}, where a "
                f"rank-{config.rank} factorization is not smaller: choose lower ranks)")
    if config.embedding_rank is not None:
        emb = model.get_input_embeddings()  # a transformers model
        if config.embedding_rank >= min(emb.num_embeddings, emb.embedding_dim):
            return f"has an embedding_rank not below the embeddings' {emb.num_embeddings}x{emb.embedding_dim}"
    return None


SPEC = register(
    "decompose_svd",
    DecomposeSVDConfig,
    apply,
    stage=Stage.DECOMPOSE,
    family="low-rank factorization",
    summary="truncated SVD of attention/FFN projections (and optionally word embeddings) into two thin Linears",
    check_shapes=check_shapes,
)
