"""Tiny locally built models and synthetic data for fast tests (no downloads).

``tiny_model(arch)`` builds a small random sequence classifier of every architecture the
adapter supports (``ARCHS``), from its config class: hidden 32, 4 heads, FFN 64, 4 layers,
vocabulary of ``VOCAB`` ids, dropout off. ``tiny_bert`` is the BERT one.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
import transformers
from torch import nn

from autosqueeze.arch import get_adapter
from autosqueeze.methods import MethodContext

VOCAB = 120
ARCHS = ("bert", "distilbert", "electra", "roberta", "mpnet", "deberta-v2", "modernbert")
PAD_ID = {"roberta": 1, "mpnet": 1}  # their convention (<s> 0, <pad> 1); MPNet's embeddings hard-code 1


def _config(arch: str, layers: int, heads: int, hidden: int, ffn: int, num_labels: int):
    common = dict(vocab_size=VOCAB, num_labels=num_labels, pad_token_id=PAD_ID.get(arch, 0))
    if arch == "distilbert":
        return transformers.DistilBertConfig(n_layers=layers, n_heads=heads, dim=hidden, hidden_dim=ffn,
                                             max_position_embeddings=64, dropout=0.0, attention_dropout=0.0,
                                             seq_classif_dropout=0.0, **common)
    if arch == "modernbert":
        return transformers.ModernBertConfig(  # type: ignore[call-arg]
            hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn,
            max_position_embeddings=64, global_attn_every_n_layers=2, local_attention=8,
            bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3, embedding_dropout=0.0,
            mlp_dropout=0.0, attention_dropout=0.0, classifier_dropout=0.0, **common)
    bert_like = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn,
                     max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **common)
    if arch == "deberta-v2":  # DeBERTa-v3's layout: shared relative embeddings, c2p + p2c, shared att keys
        return transformers.DebertaV2Config(relative_attention=True, position_buckets=16, max_relative_positions=-1,  # type: ignore[call-arg]
                                            pos_att_type=["p2c", "c2p"], share_att_key=True, norm_rel_ebd="layer_norm",
                                            position_biased_input=False, type_vocab_size=0, **bert_like)
    if arch == "mpnet":
        return transformers.MPNetConfig(relative_attention_num_buckets=32, **bert_like)
    if arch == "electra":
        return transformers.ElectraConfig(embedding_size=hidden, **bert_like)
    if arch == "roberta":
        return transformers.RobertaConfig(**bert_like)
    if arch == "bert":
        return transformers.BertConfig(**bert_like)
    raise ValueError(f"no tiny config for {arch!r}; known: {ARCHS}")


def tiny_model(arch: str = "bert", layers: int = 4, heads: int = 4, hidden: int = 32, ffn: int = 64,
               num_labels: int = 2, seed: int = 0, attn: str = "eager") -> nn.Module:
    torch.manual_seed(seed)
    cfg = _config(arch, layers, heads, hidden, ffn, num_labels)
    cfg._attn_implementation = attn
    return transformers.AutoModelForSequenceClassification.from_config(cfg).eval()


def tiny_bert(layers: int = 4, heads: int = 4, hidden: int = 32, ffn: int = 64, num_labels: int = 2,
              seed: int = 0, attn: str = "eager") -> transformers.BertForSequenceClassification:
    return tiny_model("bert", layers, heads, hidden, ffn, num_labels, seed, attn)  # type: ignore[return-value]


def save_model_dir(arch: str, vocab_file: Path, out: Path, layers: int = 2, heads: int = 4, hidden: int = 32,
                   ffn: int = 64) -> Path:
    """A folder a study can name as its ``model``: a tiny random ``arch`` classifier whose embeddings
    cover a word-level BERT tokenizer built from ``vocab_file`` (saved beside it, without token
    type ids, which most of the families have no table for). The tokenizer's [PAD] has the id the
    model pads with: for RoBERTa and MPNet (pad id 1) the vocabulary's first two entries are swapped,
    else their [UNK] (1 in a BERT vocabulary) would get the padding's frozen zero embedding and
    position, and real padding positions of their own."""
    words = vocab_file.read_text().splitlines()
    pad = PAD_ID.get(arch, 0)
    if words.index("[PAD]") != pad:
        words.remove("[PAD]")
        words.insert(pad, "[PAD]")
        out.mkdir(parents=True, exist_ok=True)
        vocab_file = out / "vocab.txt"
        vocab_file.write_text("\n".join(words) + "\n")
    tok = transformers.BertTokenizerFast(vocab=str(vocab_file), do_lower_case=True,  # type: ignore[attr-defined]
                                         model_input_names=["input_ids", "attention_mask"])
    tok.save_pretrained(out)
    model = tiny_model(arch, layers=layers, heads=heads, hidden=hidden, ffn=ffn)
    model.resize_token_embeddings(len(tok))
    model.config.vocab_size = len(tok)
    model.save_pretrained(out)
    return out


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


def adapter(model):
    return get_adapter(model)


def layers(model) -> list[nn.Module]:
    """The encoder layers of a tiny model of any architecture."""
    return list(get_adapter(model).layers(model))


def layer_param_count(layer: nn.Module) -> int:
    return sum(p.numel() for p in layer.parameters())


def teacher_and_words_data(model_dir: Path, n: int = 24, seed: int = 0):
    """The model folder's classifier (eval mode) and an SST-2 ``TaskData`` of ``n`` random sentences of
    its vocabulary's words (the same examples as train and dev), batch 4, length 32."""
    import random

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from autosqueeze.data import TaskData
    from autosqueeze.tasks import Example, get_task

    tok = AutoTokenizer.from_pretrained(model_dir)
    teacher = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    words = [w for w in tok.get_vocab() if w.isalpha()]
    rng = random.Random(seed)
    examples = [Example((" ".join(rng.choices(words, k=rng.randint(3, 12))),), rng.randint(0, 1)) for _ in range(n)]
    return teacher, TaskData(get_task("sst2"), tok, train=examples, dev=examples, max_seq_len=32, batch_size=4)
