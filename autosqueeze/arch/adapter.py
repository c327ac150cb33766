"""The adapter type: where one model family keeps its parts, and how to cut heads and neurons.

Methods never hard-code ``bert.encoder.layer``; they ask the adapter for the encoder layers,
a layer's attention projections (Q, K, V, output), its FFN (up, down), the embeddings and the
classifier. One ``ArchAdapter`` instance describes one family by attribute paths plus a few
layout flags (fused QKV, gated FFN, per-head position bias shared across layers), so
supporting another family is one table entry in :mod:`autosqueeze.arch.families`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from ..errors import UnsupportedArchitectureError
from . import runners


@dataclass(frozen=True)
class AttentionParts:
    """The four projections of one self-attention block and where its head count lives.
    With a fused QKV projection ``query``, ``key`` and ``value`` are the same Linear."""

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
    heads_attrs: tuple[str, ...]  # head-count attributes on attn_module (empty: derived from the Q rows)
    all_head_attr: str | None  # total projected size attribute on attn_module, if any
    head_size_attr: str
    config_layers: str
    config_heads: str
    config_ffn: str
    qkv_fused: bool = False  # q, k and v name one Linear whose rows are [Q heads | K heads | V heads]
    ffn_gated: bool = False  # ffn_up's rows are [input | gate], each ``intermediate`` wide (GLU)
    head_rows_extra: tuple[str, ...] = ()  # more per-head projections sliced with Q, K, V (where present)
    shared_head_bias: bool = False  # a per-head position bias computed once for all layers (MPNet)
    runner: str = "bert"  # how the encoder runs layer by layer (early exit): see runners.py
    refused: tuple[tuple[str, str], ...] = ()  # (method, why) pairs this family cannot do
    # On the task model: Linears outside the encoder that read the hidden state (the classifier head's
    # first projection); ``<base_attr>.pooler.dense`` is added where present. Empty: the hidden width
    # (d_model) is not sliceable for this family.
    hidden_readers: tuple[str, ...] = ()
    # On the backbone: more Embedding tables / LayerNorms over the hidden width outside the embeddings
    # and the layers (DeBERTa's shared relative embeddings and their LayerNorm), where present.
    hidden_extra: tuple[str, ...] = ()

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
        types = [getattr(layer, "attention_type", None) for layer in layers]
        if getattr(model.config, "layer_types", None) is not None and all(types):
            model.config.layer_types = types  # alternating local/global attention follows its layers
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
        """(up projection hidden→intermediate (×2 when gated), down projection intermediate→hidden)."""
        return _get(layer, self.ffn_up), _get(layer, self.ffn_down)

    def num_heads(self, layer: nn.Module) -> int:
        attn = _get(layer, self.attn_module)
        if self.heads_attrs:
            return int(getattr(attn, self.heads_attrs[0]))
        parts = self.attention(layer)  # derived: the model reshapes Q, K, V by head size
        return int(parts.query.out_features) // (3 if self.qkv_fused else 1) // parts.head_size

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

    # --- width surgery (structured pruning, importance reordering) -------------
    def keep_heads(self, layer: nn.Module, keep: list[int]) -> None:
        """Keep only heads ``keep`` (indices into the layer's current heads, in that order)."""
        parts = self.attention(layer)
        d, total = parts.head_size, self.num_heads(layer)
        rows = [h * d + j for h in keep for j in range(d)]
        if self.qkv_fused:
            width = total * d
            fused = [w * width + r for w in range(3) for r in rows]
            self.set_module(layer, self.q, slice_linear(parts.query, fused, 0))
        else:
            for path, lin in ((self.q, parts.query), (self.k, parts.key), (self.v, parts.value)):
                self.set_module(layer, path, slice_linear(lin, rows, 0))
        for path in self.head_rows_extra:
            extra = _find(layer, path)
            if isinstance(extra, nn.Linear):
                self.set_module(layer, path, slice_linear(extra, rows, 0))
        self.set_module(layer, self.attn_out, slice_linear(parts.output, rows, 1))
        if self.shared_head_bias:
            runners.index_heads(parts.module, total, keep)
        self.set_num_heads(layer, len(keep))

    def keep_neurons(self, layer: nn.Module, keep: list[int]) -> None:
        """Keep only intermediate neurons ``keep`` of one layer's FFN (both halves of a gated one)."""
        up, down = self.ffn(layer)
        rows = list(keep) + [down.in_features + n for n in keep] if self.ffn_gated else list(keep)
        self.set_module(layer, self.ffn_up, slice_linear(up, rows, 0))
        self.set_module(layer, self.ffn_down, slice_linear(down, keep, 1))

    def value_weight(self, layer: nn.Module) -> torch.Tensor:
        """The value projection's weight rows (heads × head size, hidden)."""
        parts = self.attention(layer)
        if not self.qkv_fused:
            return parts.value.weight
        width = self.num_heads(layer) * parts.head_size
        return parts.value.weight[2 * width: 3 * width]

    def ffn_unit_weight(self, layer: nn.Module) -> torch.Tensor:
        """The up projection's weight as one row per neuron (input and gate rows side by side)."""
        up, down = self.ffn(layer)
        if not self.ffn_gated:
            return up.weight
        n = down.in_features
        return torch.cat([up.weight[:n], up.weight[n: 2 * n]], dim=1)

    # --- the hidden width (d_model): embeddings, every LayerNorm, every projection ----
    def hidden_refusal(self, model: nn.Module) -> str | None:
        """Why this model's hidden width cannot be sliced (None: it can)."""
        if not self.hidden_readers or self.qkv_fused or self.ffn_gated:
            return f"slicing the hidden width is not supported for {self.family} models"
        backbone = self.backbone(model)
        if getattr(backbone, "embeddings_project", None) is not None or any(
                isinstance(m, nn.Linear) for m in self.embeddings(model).modules()):
            return (f"slicing the hidden width is not supported for {self.family} models whose embeddings are "
                    f"projected to the hidden size (embedding_size != hidden_size)")
        if self.separate_position_projections(model):
            return (f"slicing the hidden width is not supported for {self.family} models with separate "
                    f"relative-position projections (share_att_key: false)")
        if any(isinstance(m, nn.Conv1d) for m in backbone.modules()):
            return f"slicing the hidden width is not supported for {self.family} models with a convolution layer"
        width = self.hidden_size(model)
        odd = [type(m).__name__ for m in self.hidden_norms(model) if tuple(m.normalized_shape) != (width,)]
        if odd:
            return f"slicing the hidden width: a {self.family} LayerNorm is not {width} wide"
        return None

    def hidden_size(self, model: nn.Module) -> int:
        """The width of the residual stream: the embedding LayerNorm's (or the first embedding table's)."""
        emb = self.embeddings(model)
        norms = [m for m in emb.modules() if isinstance(m, nn.LayerNorm)]
        if norms:
            return int(norms[0].normalized_shape[-1])
        return int(self.attention(self.layers(model)[0]).output.out_features)

    def hidden_tables(self, model: nn.Module) -> list[nn.Embedding]:
        """Embedding tables whose columns are the hidden dimensions (word, position, token type)."""
        width = self.hidden_size(model)
        extra = [_find(self.backbone(model), p) for p in self.hidden_extra]
        return [m for m in [*self.embeddings(model).modules(), *extra]
                if isinstance(m, nn.Embedding) and m.embedding_dim == width]

    def hidden_norms(self, model: nn.Module) -> list[nn.LayerNorm]:
        """Every LayerNorm over the hidden state: the embeddings' and each encoder layer's."""
        found = [m for m in self.embeddings(model).modules() if isinstance(m, nn.LayerNorm)]
        for layer in self.layers(model):
            found += [m for m in layer.modules() if isinstance(m, nn.LayerNorm)]
        extra = [_find(self.backbone(model), p) for p in self.hidden_extra]
        return found + [m for m in extra if isinstance(m, nn.LayerNorm)]

    def hidden_reader_paths(self, model: nn.Module) -> list[str]:
        """Paths (on the task model) of the Linears outside the encoder that read the hidden state."""
        paths = [f"{self.base_attr}.pooler.dense", *self.hidden_readers]
        return [p for p in dict.fromkeys(paths) if isinstance(_find(model, p), nn.Linear)]

    def hidden_projections(self, layer: nn.Module) -> tuple[list[nn.Linear], list[nn.Linear]]:
        """One layer's Linears (that read the hidden state: Q, K, V, FFN up), (that write it: attention
        output, FFN down)."""
        parts = self.attention(layer)
        up, down = self.ffn(layer)
        return [parts.query, parts.key, parts.value, up], [parts.output, down]  # type: ignore[list-item]

    def keep_hidden(self, model: nn.Module, keep: list[int]) -> None:
        """Keep hidden dimensions ``keep`` (in that order) everywhere the residual stream is: embedding
        table columns, every LayerNorm's weight and bias, the input columns of Q, K, V, the FFN up
        projection and the pooler / classifier head, the output rows of the attention output and FFN
        down projections. A permutation of all dimensions leaves the outputs unchanged (importance
        reordering); a prefix is a narrower model. ``model.config.hidden_size`` follows."""
        why = self.hidden_refusal(model)
        if why is not None:
            raise UnsupportedArchitectureError(why)
        width = self.hidden_size(model)
        if not keep or len(set(keep)) != len(keep) or not all(0 <= int(i) < width for i in keep):
            raise ValueError(f"hidden dimensions to keep must be distinct indices below {width}")
        readers = self.hidden_reader_paths(model)
        index = torch.as_tensor(keep, dtype=torch.long)
        with torch.no_grad():
            for table in self.hidden_tables(model):
                table.weight = nn.Parameter(table.weight.detach().index_select(1, index.to(table.weight.device)),
                                            requires_grad=table.weight.requires_grad)
                table.embedding_dim = len(keep)
            for norm in self.hidden_norms(model):
                for name in ("weight", "bias"):
                    p = getattr(norm, name)
                    if p is not None:
                        setattr(norm, name, nn.Parameter(p.detach().index_select(0, index.to(p.device)),
                                                         requires_grad=p.requires_grad))
                norm.normalized_shape = (len(keep),)
        for layer in self.layers(model):
            for path in (self.q, self.k, self.v, self.ffn_up):
                self.set_module(layer, path, slice_linear(_get(layer, path), keep, 1))  # type: ignore[arg-type]
            for path in (self.attn_out, self.ffn_down):
                self.set_module(layer, path, slice_linear(_get(layer, path), keep, 0))  # type: ignore[arg-type]
        for path in readers:
            self.set_module(model, path, slice_linear(_get(model, path), keep, 1))  # type: ignore[arg-type]
        model.config.hidden_size = len(keep)

    # --- running layer by layer (early exit) ------------------------------------
    def embed(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        """Embedding output and what every layer needs besides it (mask, shared position bias)."""
        return runners.embed(self, model, inputs)

    def run_layer(self, layer: nn.Module, hidden: torch.Tensor, state: Any) -> torch.Tensor:
        return runners.run_layer(self, layer, hidden, state)

    def separate_position_projections(self, model: nn.Module) -> bool:
        """Whether the model's layers have per-head relative-position projections of their own
        (``head_rows_extra`` present as Linears: DeBERTa with ``share_att_key: false``)."""
        return any(isinstance(_find(layer, p), nn.Linear) for layer in self.layers(model) for p in self.head_rows_extra)

    # --- what this family cannot do ----------------------------------------------
    def refusal(self, method: str) -> str | None:
        """Why this family refuses ``method`` (``refused``), or None. What one model of the family
        cannot take is the method's registry entry's to say: ``MethodSpec.refusal`` asks both."""
        for name, why in self.refused:
            if name == method:
                return why
        return None


def _get(obj: nn.Module, path: str) -> nn.Module:
    for part in path.split(".") if path else []:
        obj = getattr(obj, part)
    return obj


def _find(obj: nn.Module, path: str) -> nn.Module | None:
    try:
        return _get(obj, path)
    except AttributeError:
        return None


def slice_linear(lin: nn.Linear, idx: list[int], dim: int) -> nn.Linear:
    """A new Linear keeping output rows (dim 0) or input columns (dim 1) ``idx``."""
    index = torch.as_tensor(idx, dtype=torch.long, device=lin.weight.device)
    weight = lin.weight.detach().index_select(dim, index)
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=lin.bias is not None,
                    device=lin.weight.device, dtype=lin.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if lin.bias is not None:
            new.bias.copy_(lin.bias.detach().index_select(0, index) if dim == 0 else lin.bias.detach())
    new.weight.requires_grad_(lin.weight.requires_grad)
    if lin.bias is not None:
        new.bias.requires_grad_(lin.bias.requires_grad)
    new.train(lin.training)
    return new
