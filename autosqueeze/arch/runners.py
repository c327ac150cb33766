"""Running an encoder layer by layer (early exit), and MPNet's head-indexed shared position bias.

A family's ``runner`` names how its backbone prepares what each layer needs besides the
hidden states — the attention mask always; MPNet's relative position bias (one per head,
computed once and shared by all layers); DeBERTa's relative positions and shared relative
embeddings — so a caller can run the layers one at a time and stop early, computing exactly
what the model's own forward computes.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Protocol

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask

from ..errors import UnsupportedArchitectureError

HEAD_INDEX = "autosqueeze_head_index"  # buffer on a head-indexed attention: its heads' columns of the shared bias


class ArchAdapter(Protocol):
    """What running layer by layer reads of :class:`autosqueeze.arch.adapter.ArchAdapter` (which
    imports this module: the protocol keeps the two from importing each other)."""

    @property
    def family(self) -> str: ...
    @property
    def runner(self) -> str: ...
    def backbone(self, model: nn.Module) -> nn.Module: ...
    def embeddings(self, model: nn.Module) -> nn.Module: ...


@functools.cache
def _accepted_args(cls: type[nn.Module]) -> frozenset[str]:
    return frozenset(inspect.signature(cls.forward).parameters)


def _embeddings_output(adapter: ArchAdapter, model: nn.Module, inputs: dict[str, Any],
                       **extra: Any) -> torch.Tensor:
    emb = adapter.embeddings(model)
    names = _accepted_args(type(emb))
    args = {k: v for k, v in inputs.items() if k != "attention_mask" and v is not None and k in names}
    hidden = emb(**args, **extra)
    project = getattr(adapter.backbone(model), "embeddings_project", None)  # ELECTRA-small style
    return project(hidden) if project is not None else hidden


def embed(adapter: ArchAdapter, model: nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, Any]:
    """Embedding output and the per-layer state, exactly as the backbone builds them."""
    backbone = adapter.backbone(model)
    if adapter.runner == "deberta":
        encoder = backbone.encoder
        if getattr(encoder, "conv", None) is not None:
            raise UnsupportedArchitectureError("early_exit is not supported for deberta-v2 models with a "
                                               "convolution after the first layer (conv_kernel_size > 0)")
        ids = inputs.get("input_ids")
        shape = ids.shape if ids is not None else inputs["inputs_embeds"].shape[:-1]
        device = ids.device if ids is not None else inputs["inputs_embeds"].device
        mask = inputs.get("attention_mask")
        mask = torch.ones(shape, device=device) if mask is None else mask
        if inputs.get("token_type_ids") is None:
            inputs = {**inputs, "token_type_ids": torch.zeros(shape, dtype=torch.long, device=device)}
        hidden = _embeddings_output(adapter, model, inputs, mask=mask)
        return hidden, {"attention_mask": encoder.get_attention_mask(mask),
                        "relative_pos": encoder.get_rel_pos(hidden), "rel_embeddings": encoder.get_rel_embedding()}
    hidden = _embeddings_output(adapter, model, inputs)
    # the helper BertModel / DistilBertModel / MPNetModel call for an encoder's (non-causal) mask
    mask = create_bidirectional_mask(config=backbone.config, inputs_embeds=hidden,
                                     attention_mask=inputs.get("attention_mask"))
    if adapter.runner == "mpnet":
        return hidden, (mask, backbone.encoder.compute_position_bias(hidden))
    if adapter.runner != "bert":
        raise UnsupportedArchitectureError(f"{adapter.family} models cannot be run layer by layer")
    return hidden, mask


def run_layer(adapter: ArchAdapter, layer: nn.Module, hidden: torch.Tensor, state: Any) -> torch.Tensor:
    if adapter.runner == "deberta":
        out = layer(hidden, state["attention_mask"], relative_pos=state["relative_pos"],
                    rel_embeddings=state["rel_embeddings"])
    elif adapter.runner == "mpnet":
        out = layer(hidden, state[0], state[1])
    else:
        out = layer(hidden, state)
    return out[0] if isinstance(out, tuple) else out


# --- MPNet: one relative position bias (per head) shared by all layers ------------------
def _indexed_forward(self: nn.Module, hidden_states: torch.Tensor, attention_mask: Any = None,
                     position_bias: torch.Tensor | None = None, output_attentions: bool = False, **kwargs: Any) -> Any:
    """The attention's own forward, given only its heads' columns of the shared position bias."""
    if position_bias is not None:
        index = getattr(self, HEAD_INDEX)[: self.num_attention_heads]
        position_bias = position_bias.index_select(1, index)
    return super(type(self), self).forward(hidden_states, attention_mask, position_bias,  # type: ignore[misc]
                                           output_attentions=output_attentions, **kwargs)


@functools.cache
def _indexed_class(cls: type[nn.Module]) -> type[nn.Module]:
    name = f"HeadIndexed{cls.__name__}"
    new = type(name, (cls,), {"forward": _indexed_forward, "__module__": __name__})
    globals()[name] = new  # picklable by name
    return new


def index_heads(attn: nn.Module, total: int, keep: list[int]) -> None:
    """Make ``attn`` (whose heads are about to become ``keep`` of its ``total``) read its own heads'
    columns of the shared position bias: a head index buffer, composed over repeated cuts. The
    first ``num_attention_heads`` entries are used, so a prefix of heads (elastic) works too."""
    index = getattr(attn, HEAD_INDEX, None)
    if index is None:
        attn.__class__ = _indexed_class(type(attn))
        index = torch.arange(total)
    new = index[torch.as_tensor(keep, dtype=torch.long)].clone()
    if HEAD_INDEX in attn._buffers:
        attn._buffers[HEAD_INDEX] = new.to(index.device)
    else:
        attn.register_buffer(HEAD_INDEX, new, persistent=False)
