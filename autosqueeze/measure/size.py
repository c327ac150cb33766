"""Model size as deployed, with and without embeddings (the survey reports both).

Bytes are counted per stored element: an int8 weight is one byte, a bf16 weight two, a
tensor shared by several layers is counted once. A module that stores its weights in a
format of its own (a sparse matrix, packed int4) is a :class:`~autosqueeze.capabilities.StoredSize`
module and says what it stores; its parameters are then not counted again. The integer buffers of a
:class:`~autosqueeze.capabilities.LookupTables` module (e.g. a vocabulary id map) count in bytes,
not in stored weights.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..arch import ArchAdapter, get_adapter
from ..capabilities import LookupTables, StoredSize


@dataclass(frozen=True)
class SizeReport:
    total_bytes: int
    embedding_bytes: int
    params: int  # stored elements, shared ones once
    embedding_params: int

    @property
    def non_embedding_bytes(self) -> int:
        return self.total_bytes - self.embedding_bytes

    @property
    def non_embedding_params(self) -> int:
        return self.params - self.embedding_params

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "non_embedding_bytes": self.non_embedding_bytes,
                "non_embedding_params": self.non_embedding_params}


def _tensor_cost(t: torch.Tensor, seen: dict[tuple[int, int], torch.Tensor]) -> tuple[int, int]:
    """(elements, bytes) of a tensor not yet seen (storage pointer + shape identify sharing).

    ``seen`` keeps a reference to every tensor counted, so the unpacked temporaries of
    quantized modules stay alive and their addresses are not reused by the next one.
    """
    if t.is_quantized:
        key = (id(t), t.numel())
    else:
        key = (t.data_ptr(), t.numel()) if t.numel() else (id(t), 0)
    if key in seen:
        return 0, 0
    seen[key] = t
    scales = 0
    if t.is_quantized and t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        scales = t.q_per_channel_scales().numel() * 8  # scale (fp32) + zero point (int32)
    elif t.is_quantized:
        scales = 8
    return t.numel(), t.numel() * t.element_size() + scales


def _module_cost(module: nn.Module, seen: dict[tuple[int, int], torch.Tensor]) -> tuple[int, int]:
    if isinstance(module, StoredSize):
        key = (id(module), -1)  # count it once, however often it is reached (embeddings, shared layers)
        if key in seen:
            return 0, 0
        seen[key] = module  # type: ignore[assignment]
        for p in module.parameters():  # mark as counted
            seen[(p.data_ptr(), p.numel())] = p
        return int(module.autosqueeze_params()), int(module.autosqueeze_nbytes())
    n = b = 0
    tensors = list(module.parameters(recurse=False)) + [t for t in module.buffers(recurse=False) if t is not None]
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if callable(weight):  # torch.ao quantized modules expose weight()/bias() methods
        tensors.append(weight())
        if callable(bias) and bias() is not None:
            tensors.append(bias())
    for t in tensors:
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_quantized):
            dn, db = _tensor_cost(t.detach(), seen)
            n, b = n + dn, b + db
    for name in module.autosqueeze_lookup_buffers if isinstance(module, LookupTables) else ():  # integer tables it
        b += _tensor_cost(getattr(module, name).detach(), seen)[1]  # needs (a vocabulary map): bytes, not weights
    for child in module.children():
        dn, db = _module_cost(child, seen)
        n, b = n + dn, b + db
    return n, b


def model_size(model: nn.Module, adapter: ArchAdapter | None = None) -> SizeReport:
    """Bytes and stored elements of ``model``, and of its embeddings alone.

    Integer buffers (position ids) are bookkeeping, not weights, and are not counted.
    """
    adapter = adapter or get_adapter(model)
    seen: dict[tuple[int, int], torch.Tensor] = {}
    emb_n, emb_b = _module_cost(adapter.embeddings(model), seen)
    rest_n, rest_b = _module_cost(model, seen)  # embeddings already seen → not counted twice
    return SizeReport(emb_b + rest_b, emb_b, emb_n + rest_n, emb_n)
