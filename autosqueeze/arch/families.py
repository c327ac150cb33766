"""The supported model families: one ``ArchAdapter`` each (paths, layout flags, refusals)."""
from __future__ import annotations

from typing import Any

from .adapter import ArchAdapter

_BERT_LIKE: dict[str, Any] = dict(
    layers_path="encoder.layer",
    embeddings_path="embeddings",
    q="attention.self.query",
    k="attention.self.key",
    v="attention.self.value",
    attn_out="attention.output.dense",
    attn_module="attention.self",
    ffn_up="intermediate.dense",
    ffn_down="output.dense",
    heads_attrs=("num_attention_heads",),
    all_head_attr="all_head_size",
    head_size_attr="attention_head_size",
    config_layers="num_hidden_layers",
    config_heads="num_attention_heads",
    config_ffn="intermediate_size",
)

_MODERNBERT_WHY_EXIT = ("its classifier reads a final norm and a normed head over mean or CLS pooling, "
                        "which the exit heads (dense, activation, output on CLS) do not reproduce")

ADAPTERS: tuple[ArchAdapter, ...] = (
    ArchAdapter(family="bert", model_types=("bert",), base_attr="bert", hidden_readers=("bert.pooler.dense",),
                **_BERT_LIKE),
    ArchAdapter(family="roberta", model_types=("roberta", "xlm-roberta", "camembert"), base_attr="roberta",
                hidden_readers=("classifier.dense",), **_BERT_LIKE),
    ArchAdapter(family="electra", model_types=("electra",), base_attr="electra", hidden_readers=("classifier.dense",),
                **_BERT_LIKE),
    ArchAdapter(
        family="distilbert",
        model_types=("distilbert",),
        base_attr="distilbert",
        layers_path="transformer.layer",
        embeddings_path="embeddings",
        q="attention.q_lin",
        k="attention.k_lin",
        v="attention.v_lin",
        attn_out="attention.out_lin",
        attn_module="attention",
        ffn_up="ffn.lin1",
        ffn_down="ffn.lin2",
        heads_attrs=("n_heads",),
        all_head_attr=None,
        head_size_attr="attention_head_size",
        config_layers="n_layers",
        config_heads="n_heads",
        config_ffn="hidden_dim",
        hidden_readers=("pre_classifier",),
    ),
    # MPNet: BERT-shaped layers; one relative position bias per head, computed once in the encoder
    # and shared by all layers, so a layer with pruned heads reads its own heads' columns of it.
    ArchAdapter(
        family="mpnet",
        model_types=("mpnet",),
        base_attr="mpnet",
        **{**_BERT_LIKE, "q": "attention.attn.q", "k": "attention.attn.k", "v": "attention.attn.v",
           "attn_out": "attention.attn.o", "attn_module": "attention.attn"},
        shared_head_bias=True,
        runner="mpnet",
        hidden_readers=("classifier.dense",),
    ),
    # DeBERTa-v2 and v3: disentangled attention; the relative embeddings are shared by all layers
    # and projected by each layer's own Q/K (share_att_key) or position projections (sliced with
    # the heads when present).
    ArchAdapter(
        family="deberta-v2",
        model_types=("deberta-v2",),
        base_attr="deberta",
        **{**_BERT_LIKE, "q": "attention.self.query_proj", "k": "attention.self.key_proj",
           "v": "attention.self.value_proj"},
        head_rows_extra=("attention.self.pos_key_proj", "attention.self.pos_query_proj"),
        runner="deberta",
        hidden_readers=("pooler.dense",),
        hidden_extra=("encoder.rel_embeddings", "encoder.LayerNorm"),
    ),
    # ModernBERT: fused Wqkv (rows [Q | K | V], the head count follows from the widths), gated MLP
    # (Wi rows [input | gate]), rotary positions (nothing to slice) and alternating local/global
    # attention (each layer keeps its own type; the config's layer_types follow dropped layers).
    ArchAdapter(
        family="modernbert",
        model_types=("modernbert",),
        base_attr="model",
        layers_path="layers",
        embeddings_path="embeddings",
        q="attn.Wqkv",
        k="attn.Wqkv",
        v="attn.Wqkv",
        attn_out="attn.Wo",
        attn_module="attn",
        ffn_up="mlp.Wi",
        ffn_down="mlp.Wo",
        heads_attrs=(),
        all_head_attr=None,
        head_size_attr="head_dim",
        config_layers="num_hidden_layers",
        config_heads="num_attention_heads",
        config_ffn="intermediate_size",
        qkv_fused=True,
        ffn_gated=True,
        runner="none",
        refused=(
            ("early_exit", _MODERNBERT_WHY_EXIT),
            ("share_layers", "its first layer has no attention norm, so the first group's layers differ in "
                             "structure"),
            ("elastic", "its fused Wqkv projection cannot be prefix-sliced while the elastic student trains"),
        ),
    ),
)
