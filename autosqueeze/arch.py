"""Architecture adapter: where a BERT-family model keeps its parts.

Methods never hard-code ``bert.encoder.layer``; they ask the adapter for the encoder
layers, a layer's attention projections (Q, K, V, output), its FFN (up, down) and the
embeddings and classifier. One ``ArchAdapter`` instance describes one family by attribute
paths, so supporting another family is one table entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from torch import nn

from .errors import UserError


class UnsupportedArchitectureError(UserError, ValueError):
    """The model's architecture has no adapter."""


@dataclass(frozen=True)
class AttentionParts:
    """The four projections of one self-attention block and where its head count lives."""

    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    output: nn.Linear
    module: nn.Module  # owner of the head-count attributes
    head_size: int


@dataclass(frozen=True)
class ArchAdapter:
    """Attribute paths of one model family (dotted, relative to the noted owner)."""

    family: str
    model_types: tuple[str, ...]
    base_attr: str  # on the task model: the backbone (``bert``, ``roberta`` ...)
    layers_path: str  # on the backbone: the ModuleList of encoder layers
    embeddings_path: str  # on the backbone
    q: str  # the rest are on one encoder layer
    k: str
    v: str
    attn_out: str
    attn_module: str
    ffn_up: str
    ffn_down: str
    heads_attrs: tuple[str, ...]  # head-count attributes on attn_module
    all_head_attr: str | None  # total projected size attribute on attn_module, if any
    head_size_attr: str
    config_layers: str
    config_heads: str
    config_ffn: str

    # --- locating -----------------------------------------------------------
    def backbone(self, model: nn.Module) -> nn.Module:
        """The encoder backbone of a task model (or the model itself if it is the backbone)."""
        return getattr(model, self.base_attr, model)

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return cast(nn.ModuleList, _get(self.backbone(model), self.layers_path))

    def set_layers(self, model: nn.Module, layers: list[nn.Module]) -> None:
        """Replace the encoder layers (e.g. to drop some) and keep the config in step."""
        parent_path, _, name = self.layers_path.rpartition(".")
        parent = _get(self.backbone(model), parent_path) if parent_path else self.backbone(model)
        setattr(parent, name, nn.ModuleList(layers))
        setattr(model.config, self.config_layers, len(layers))
        for i, layer in enumerate(layers):  # keep cache indices consistent
            for mod in layer.modules():
                if hasattr(mod, "layer_idx"):
                    mod.layer_idx = i

    def embeddings(self, model: nn.Module) -> nn.Module:
        return _get(self.backbone(model), self.embeddings_path)

    def classifier_modules(self, model: nn.Module) -> list[nn.Module]:
        """Task-head modules: everything outside the backbone that holds parameters."""
        backbone = self.backbone(model)
        if backbone is model:
            return []
        return [m for n, m in model.named_children() if m is not backbone and any(True for _ in m.parameters())]

    def attention(self, layer: nn.Module) -> AttentionParts:
        attn = _get(layer, self.attn_module)
        return AttentionParts(
            query=_get(layer, self.q),
            key=_get(layer, self.k),
            value=_get(layer, self.v),
            output=_get(layer, self.attn_out),
            module=attn,
            head_size=int(getattr(attn, self.head_size_attr)),
        )

    def ffn(self, layer: nn.Module) -> tuple[nn.Module, nn.Module]:
        """(up projection hidden→intermediate, down projection intermediate→hidden)."""
        return _get(layer, self.ffn_up), _get(layer, self.ffn_down)

    def num_heads(self, layer: nn.Module) -> int:
        return int(getattr(_get(layer, self.attn_module), self.heads_attrs[0]))

    def set_num_heads(self, layer: nn.Module, heads: int) -> None:
        attn = _get(layer, self.attn_module)
        for attr in self.heads_attrs:
            setattr(attn, attr, heads)
        if self.all_head_attr:
            setattr(attn, self.all_head_attr, heads * int(getattr(attn, self.head_size_attr)))

    def set_module(self, layer: nn.Module, path: str, module: nn.Module) -> None:
        """Replace the sub-module at a dotted path of a layer (e.g. ``self.q``)."""
        parent_path, _, name = path.rpartition(".")
        parent = _get(layer, parent_path) if parent_path else layer
        setattr(parent, name, module)


def _get(obj: nn.Module, path: str) -> nn.Module:
    for part in path.split(".") if path else []:
        obj = getattr(obj, part)
    return obj


_BERT_LIKE = dict(
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

ADAPTERS: tuple[ArchAdapter, ...] = (
    ArchAdapter(family="bert", model_types=("bert",), base_attr="bert", **_BERT_LIKE),
    ArchAdapter(family="roberta", model_types=("roberta", "xlm-roberta", "camembert"), base_attr="roberta",
                **_BERT_LIKE),
    ArchAdapter(family="electra", model_types=("electra",), base_attr="electra", **_BERT_LIKE),
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
    ),
)


def supported_model_types() -> list[str]:
    return sorted(t for a in ADAPTERS for t in a.model_types)


def get_adapter(model_or_type: nn.Module | str) -> ArchAdapter:
    """The adapter for a model (by ``config.model_type``) or a model-type string."""
    model_type = model_or_type if isinstance(model_or_type, str) else getattr(
        getattr(model_or_type, "config", None), "model_type", None
    )
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise UnsupportedArchitectureError(
        f"architecture {model_type!r} is not supported; supported model types: "
        f"{', '.join(supported_model_types())}"
    )
