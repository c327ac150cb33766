"""Vocabulary pruning (TextPruner): keep the embedding rows of the tokens the task uses.

A task's training data uses a fraction of a 30,522-token WordPiece vocabulary (SST-2:
about 14k); the other rows of the word-embedding table are never looked up in training.
This step keeps the rows of every token that occurs at least ``min_count`` times in the
training data, plus the special tokens ([PAD], [UNK], [CLS], [SEP], [MASK] when a tokenizer
is given; the model's pad id and ``unk_token_id`` always) and ``keep_ids``.

Input ids stay those of the original tokenizer: the word embeddings become a
:class:`PrunedVocabEmbedding`, an int32 id map ``old id → new row`` (a token that was not
kept → the [UNK] row) in front of the smaller table. So the saved model folder keeps the
task's own tokenizer, any tokenizer output works, the config's ``vocab_size`` still names the
id space, and the model predicts exactly as before on every input made of kept tokens.
The kept ids are the step's decision (a bitmap, ``kept_bitmap``), so ``load`` rebuilds the
map without data. In probe mode (latency only) every token is kept: the structure, a map
then a lookup, is the final one and a lookup's cost does not depend on the table's size.

Token source: ``ctx.train_token_ids`` (every training example once) when the caller gives
it; otherwise ``scan_batches`` training batches, which cover the training set when
``scan_batches × batch size`` exceeds its size (2,500 × 32 for SST-2's 67k sentences).

Order: after ``decompose_svd`` (a factorized embedding keeps the rows of its thin table; its
projection is unchanged); ``decompose_svd`` refuses an embedding pruned before it. The kept
table may then be quantized (``quantize_embeddings``), cast or sparsified like any table.

Size: the word table goes from ``V × H`` to ``kept × H`` weights, plus the id map (4 bytes
per original id, counted in the embedding bytes). Latency: one more gather per token.
ONNX: exports (two gathers).
"""
from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..capabilities import LookupTables
from .context import MethodContext
from .decompose_svd import FactorizedEmbedding
from .registry import MethodError, Stage, register

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneVocabConfig:
    min_count: int = 1  # keep a token seen at least this often in the training data
    unk_token_id: int | None = None  # the tokenizer's [UNK] id; None: from ctx.tokenizer
    keep_ids: tuple[int, ...] = ()  # ids kept whatever the data says
    scan_batches: int = 2500  # training batches scanned when the caller gives no ctx.train_token_ids

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep_ids", tuple(self.keep_ids))
        if isinstance(self.min_count, bool) or not isinstance(self.min_count, int) or self.min_count < 1:
            raise ValueError(f"min_count must be an int >= 1, got {self.min_count!r}")
        for name, v in [("unk_token_id", self.unk_token_id), *(("keep_ids", k) for k in self.keep_ids)]:
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"{name} must hold token ids (ints >= 0), got {v!r}")
        if isinstance(self.scan_batches, bool) or not isinstance(self.scan_batches, int) or self.scan_batches < 1:
            raise ValueError(f"scan_batches must be an int >= 1, got {self.scan_batches!r}")


class PrunedVocabEmbedding(nn.Module, LookupTables):
    """``inner(remap[ids])``: original token ids → rows of a smaller table (unknown → [UNK])."""

    autosqueeze_lookup_buffers = ("remap",)  # counted by measure.size (an integer table the model needs)

    def __init__(self, inner: nn.Module, remap: torch.Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("remap", remap.to(torch.int32))

    @property
    def num_embeddings(self) -> int:  # the id space the model accepts
        return int(self.remap.numel())

    @property
    def embedding_dim(self) -> int:
        return int(self.inner.embedding_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.inner(self.remap[ids])

    def extra_repr(self) -> str:
        return f"vocab={self.remap.numel()}, kept={int(self.remap.max()) + 1}"


def encode_kept(kept: torch.Tensor, vocab: int) -> str:
    """A boolean mask over the vocabulary as base64 of its packed bits (compact in JSON)."""
    bits = np.zeros(vocab, dtype=bool)
    bits[kept.numpy()] = True
    return base64.b64encode(np.packbits(bits).tobytes()).decode("ascii")


def decode_kept(text: str, vocab: int) -> torch.Tensor:
    """Sorted kept ids from :func:`encode_kept`'s text."""
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:vocab].astype(bool)
    return torch.from_numpy(np.flatnonzero(bits)).long()


def _token_ids(config: PruneVocabConfig, ctx: MethodContext) -> Iterator[torch.Tensor]:
    if ctx.train_token_ids is not None:
        yield from ctx.train_token_ids()
        return
    for batch in ctx.batches(config.scan_batches, seed_offset=3):
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        yield ids[mask.bool()] if mask is not None else ids.flatten()


def _unk_id(config: PruneVocabConfig, ctx: MethodContext) -> int:
    from_tok = getattr(ctx.tokenizer, "unk_token_id", None)
    if config.unk_token_id is not None and from_tok is not None and config.unk_token_id != from_tok:
        raise MethodError(f"prune_vocab: unk_token_id {config.unk_token_id} is not the tokenizer's [UNK] id "
                          f"({from_tok}); leave it out or set {from_tok}")
    unk = config.unk_token_id if config.unk_token_id is not None else from_tok
    if unk is None:
        raise MethodError("prune_vocab needs the [UNK] token id: set unk_token_id (100 in BERT's uncased "
                          "vocabulary) or give the tokenizer in the method context")
    return int(unk)


def choose_kept(vocab: int, config: PruneVocabConfig, ctx: MethodContext,
                pad_id: int | None) -> tuple[torch.Tensor, int]:
    """(sorted kept ids, [UNK] id): tokens of the training data + special and asked-for ids."""
    unk = _unk_id(config, ctx)
    counts = torch.zeros(vocab, dtype=torch.long)
    for ids in _token_ids(config, ctx):
        ids = ids.flatten().long()
        if ids.numel() and int(ids.max()) >= vocab:
            raise MethodError(f"prune_vocab: the training data has token id {int(ids.max())}, outside the "
                              f"model's vocabulary of {vocab}")
        counts += torch.bincount(ids, minlength=vocab)
    keep = counts >= config.min_count
    special = [unk, *config.keep_ids, *([pad_id] if pad_id is not None else [])]
    special += list(getattr(ctx.tokenizer, "all_special_ids", None) or [])
    bad = [i for i in special if not 0 <= i < vocab]
    if bad:
        raise MethodError(f"prune_vocab: token id(s) {bad[:3]} are outside the model's vocabulary of {vocab}")
    keep[torch.tensor(special, dtype=torch.long)] = True
    return torch.nonzero(keep).flatten(), unk


def _table(emb: nn.Module) -> nn.Embedding:
    """The row table of the word embeddings (a factorized embedding's thin table)."""
    table = emb.embed if isinstance(emb, FactorizedEmbedding) else emb
    if type(table) is not nn.Embedding:
        raise MethodError(f"prune_vocab: the word embeddings are a {type(emb).__name__}; prune the vocabulary "
                          f"before quantizing or casting them, and only once")
    if table.max_norm is not None:
        raise MethodError("prune_vocab: embeddings with max_norm are not supported")
    return table


def prune(emb: nn.Module, kept: torch.Tensor, unk: int) -> PrunedVocabEmbedding:
    """The word embeddings ``emb`` cut to the rows ``kept`` (sorted), behind an id map."""
    table = _table(emb)
    vocab = table.num_embeddings
    remap = torch.full((vocab,), -1, dtype=torch.long)
    remap[kept] = torch.arange(kept.numel())
    remap[remap < 0] = remap[unk]
    pad = table.padding_idx
    new = nn.Embedding(kept.numel(), table.embedding_dim, padding_idx=None if pad is None else int(remap[pad]),
                       device=table.weight.device, dtype=table.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(table.weight[kept.to(table.weight.device)])
    new.train(table.training)
    inner: nn.Module = new
    if isinstance(emb, FactorizedEmbedding):
        emb.embed, emb.num_embeddings = new, kept.numel()
        inner = emb
    return PrunedVocabEmbedding(inner, remap)


def apply(model: nn.Module, config: PruneVocabConfig, ctx: MethodContext) -> nn.Module:
    emb = model.get_input_embeddings()
    if isinstance(emb, PrunedVocabEmbedding):
        raise MethodError("prune_vocab: the vocabulary is already pruned")
    vocab = _table(emb).num_embeddings
    decisions: dict[str, Any]
    if ctx.replay:
        try:
            kept, unk = decode_kept(ctx.decisions["kept_bitmap"], vocab), int(ctx.decisions["unk_id"])
        except (KeyError, TypeError, ValueError) as err:
            raise MethodError(f"prune_vocab replay: decisions need kept_bitmap and unk_id ({err})") from None
        recorded = (int(ctx.decisions.get("vocab_size", vocab)), ctx.decisions.get("kept", kept.numel()))
        if recorded != (vocab, kept.numel()):
            raise MethodError(f"prune_vocab replay: the decisions are for another vocabulary (size "
                              f"{ctx.decisions.get('vocab_size')}, this model's {vocab})")
        decisions = dict(ctx.decisions)
    elif ctx.probe:  # latency only: the same structure, every row kept
        kept, unk = torch.arange(vocab), _unk_id(config, ctx)
        decisions = {"probe": True}
    else:
        kept, unk = choose_kept(vocab, config, ctx, getattr(model.config, "pad_token_id", None))
        decisions = {"vocab_size": vocab, "kept": int(kept.numel()), "unk_id": unk,
                     "kept_bitmap": encode_kept(kept, vocab)}
        log.info("prune_vocab: %d of %d tokens kept", kept.numel(), vocab)
    if not 0 <= unk < vocab:
        raise MethodError(f"prune_vocab: unk_token_id {unk} is outside the model's vocabulary of {vocab}")
    model.set_input_embeddings(prune(emb, kept, unk))
    ctx.decisions.update(decisions)
    return model


SPEC = register(
    "prune_vocab",
    PruneVocabConfig,
    apply,
    stage=Stage.DECOMPOSE,
    family="vocabulary pruning",
    summary="keep the word-embedding rows of the tokens in the training data (+ specials); others map to [UNK]",
    size_modules=(PrunedVocabEmbedding,),
)
