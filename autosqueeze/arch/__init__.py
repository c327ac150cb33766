"""Architecture adapter: where a BERT-family model keeps its parts.

``get_adapter(model)`` gives the :class:`ArchAdapter` of the model's family (BERT, RoBERTa,
ELECTRA, DistilBERT, MPNet, DeBERTa-v2/v3, ModernBERT); methods ask it for layers, attention
projections, FFN, embeddings and classifier, and cut heads and neurons through it. Its
``refused`` pairs name the methods the family cannot do (``refusal``); a method's registry entry
(``MethodSpec.refusal`` / ``check_model``) adds what one model of a family cannot take.
"""
from __future__ import annotations

from torch import nn

from .adapter import ArchAdapter, AttentionParts, UnsupportedArchitectureError, slice_linear
from .families import ADAPTERS

__all__ = ["ADAPTERS", "ArchAdapter", "AttentionParts", "UnsupportedArchitectureError", "get_adapter",
           "slice_linear", "supported_model_types"]


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
