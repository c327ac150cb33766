"""Tiny locally built models and synthetic data for fast tests (no downloads)."""
from __future__ import annotations

from typing import Iterator

import torch
from transformers import BertConfig, BertForSequenceClassification

from autosqueeze.arch import get_adapter
from autosqueeze.methods import MethodContext

VOCAB = 120


def tiny_bert(layers: int = 4, heads: int = 4, hidden: int = 32, ffn: int = 64, num_labels: int = 2,
              seed: int = 0, attn: str = "eager") -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=ffn, max_position_embeddings=64, num_labels=num_labels,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg._attn_implementation = attn
    return BertForSequenceClassification(cfg).eval()


def batch(batch_size: int = 4, seq: int = 12, seed: int = 0, num_labels: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch_size, seq), generator=g)
    mask = torch.ones(batch_size, seq, dtype=torch.long)
    mask[0, seq // 2:] = 0  # one padded row
    labels = torch.randint(0, num_labels, (batch_size,), generator=g)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batches(n: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    for i in range(n):
        yield batch(seed=seed * 1000 + i)


def context(teacher, seed: int = 0, **kw) -> MethodContext:
    return MethodContext(adapter=get_adapter(teacher), seed=seed, teacher=teacher, train_batches=batches, **kw)


def logits(model, b: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        return model(**{k: v for k, v in b.items() if k != "labels"}).logits
