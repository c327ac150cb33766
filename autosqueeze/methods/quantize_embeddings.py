"""int8 / int4 embedding tables with per-row scales, dequantized on lookup.

The word-embedding table is about half of a small BERT's bytes (MiniLM-L6: 30,522 × 384
fp32 = 46.9 MB of 90 MB) and no encoder method touches it. This step stores each chosen
table as symmetric integers with one fp32 scale per row (``group_size: null``) or per
``group_size`` consecutive columns of a row; a lookup dequantizes only the looked-up rows
(:class:`~autosqueeze.methods.quantize_weights.WeightOnlyEmbedding`), so the encoder still
sees float embeddings and the cost of a forward is unchanged.

``tables``: ``word`` (the word embeddings only — also the row table inside a factorized
(``decompose_svd`` ``embedding_rank``) or vocabulary-pruned (``prune_vocab``) embedding;
their small projection / id map stay as they are) or ``all`` (every table of the embeddings
module: word, position, token type). The result depends on the float weights only; a saved
folder stores the quantized tables (integers + scales) and loads them as they are
(:mod:`autosqueeze.quant_state`), like every QUANTIZE-stage step's layers.
Composes with ``quantize_dynamic`` / ``quantize_weights`` / ``cast_precision`` on the encoder;
a table an earlier step already quantized or cast is refused.

Size (a ``capabilities.StoredSize`` module): int8 one byte per weight, int4 half a byte (packed),
plus 4 bytes per row (per group) of scales: an int8 word table is ~1/4 of its fp32 bytes.
Latency: unchanged (a gather and a multiply per looked-up row).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .common import is_quantized_module, replace_module
from .context import MethodContext
from .quantize_weights import WeightOnlyEmbedding
from .registry import MethodError, Stage, register

TABLES = ("word", "all")


@dataclass(frozen=True)
class QuantizeEmbeddingsConfig:
    bits: int = 8  # 8 | 4
    group_size: int | None = None  # columns per scale; None: one scale per row
    tables: str = "word"  # word | all (word, position and token-type tables)

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or self.bits not in (4, 8):
            raise ValueError(f"bits must be 8 or 4, got {self.bits!r}")
        gs = self.group_size
        if gs is not None and (isinstance(gs, bool) or not isinstance(gs, int) or gs < 2 or gs % 2):
            raise ValueError(f"group_size must be an even int >= 2 or null (one scale per row), got {gs!r}")
        if self.tables not in TABLES:
            raise ValueError(f"tables must be one of {TABLES}, got {self.tables!r}")


def _tables(root: nn.Module) -> list[nn.Module]:
    """Embedding tables under ``root`` (quantized ones included, so that they can be refused)."""
    if is_quantized_module(root) or isinstance(root, nn.Embedding):
        return [root]
    return [t for child in root.children() for t in _tables(child)]


def targets(model: nn.Module, config: QuantizeEmbeddingsConfig, ctx: MethodContext) -> list[tuple[str, nn.Module]]:
    """(qualified name, table) of every table the step quantizes."""
    root = model.get_input_embeddings() if config.tables == "word" else ctx.adapter.embeddings(model)
    names = {id(m): n for n, m in model.named_modules()}
    found = [(names[id(t)], t) for t in _tables(root)]
    done = [n for n, t in found if is_quantized_module(t)]
    if done:
        raise MethodError(f"quantize_embeddings: {done[0]} is already quantized or cast by an earlier step; "
                          f"quantize the embeddings in one step only")
    if not found:
        raise MethodError(f"quantize_embeddings: no embedding table found in the {config.tables} embeddings")
    return found


def apply(model: nn.Module, config: QuantizeEmbeddingsConfig, ctx: MethodContext) -> nn.Module:
    found = targets(model, config, ctx)
    with torch.no_grad():
        for name, table in found:
            replace_module(model, name, WeightOnlyEmbedding(table, config.bits, config.group_size))
    ctx.decisions["quantized"] = [name for name, _ in found]
    return model.eval()


SPEC = register(
    "quantize_embeddings",
    QuantizeEmbeddingsConfig,
    apply,
    stage=Stage.QUANTIZE,
    data_free=True,  # from the weights alone: the probe build is the final model
    family="quantization",
    summary="int8/int4 embedding tables with per-row scales, dequantized on lookup; buys size with embeddings",
    size_modules=(WeightOnlyEmbedding,),
)
