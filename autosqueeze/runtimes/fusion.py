"""Transformer fusions of ``onnxruntime.transformers.optimizer`` on an exported float graph.

:func:`fuse_graph` rewrites a float graph with ONNX Runtime's BERT fusions (``Attention``,
``EmbedLayerNormalization``, ``SkipLayerNormalization``, ``BiasGelu``) before it is quantized.
The fusions need the head count and hidden size (the optimizer cannot read them from a graph
whose reshapes use ``-1``): a model whose layers all keep the same number of heads gets it;
one whose layers differ (a sliced model with per-layer head counts) is fused without
``Attention``. MatMuls in ``keep`` (layers the recipe leaves in float) must survive the
fusion as themselves, else attention fusion is turned off. The fused graph is checked against
PyTorch like any export; a fusion that fails or changes the outputs is skipped (a note says
why) and the unfused graph is used.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .onnx_base import check_export, example_inputs, one_line, quiet_fds, require

log = logging.getLogger(__name__)


def uniform_heads(model: nn.Module) -> tuple[int, int] | None:
    """(heads, hidden size) when every layer of ``model`` has the same head count, else None."""
    from ..arch import get_adapter

    try:
        adapter = get_adapter(model)
        heads = {adapter.num_heads(layer) for layer in adapter.layers(model)}
    except Exception:  # an architecture without an adapter: no attention fusion
        return None
    hidden = int(getattr(getattr(model, "config", None), "hidden_size", 0) or 0)
    if len(heads) != 1 or not hidden:
        return None
    return heads.pop(), hidden


def _optimize(src: Path, heads: int, hidden: int, attention: bool) -> Any:
    require("onnxruntime")
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    opts = FusionOptions("bert")
    opts.enable_attention = attention
    opts.enable_embed_layer_norm = attention  # EmbedLayerNormalization's mask index feeds Attention
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), quiet_fds():
            warnings.simplefilter("ignore")
            return optimizer.optimize_model(str(src), model_type="bert", num_heads=heads if attention else 0,
                                            hidden_size=hidden if attention else 0, optimization_options=opts,
                                            opt_level=0)
    finally:
        root.setLevel(level)


def fuse_graph(src: str | Path, dst: str | Path, model: nn.Module, kind: str, *, keep: set[str],
               names: tuple[str, ...], tolerance: float = 0.05) -> list[str]:
    """Write ``src`` fused (``kind``: ``bert``) to ``dst``; returns notes. ``dst`` is not written
    when the fusion is skipped (a note starting ``fusion skipped`` says why)."""
    src, dst = Path(src), Path(dst)
    if kind != "bert":
        raise ValueError(f"unknown fusion {kind!r}; choose bert or none")
    shape = uniform_heads(model)
    tries = [True, False] if shape is not None else [False]
    notes: list[str] = []
    for attention in tries:
        heads, hidden = shape or (0, 0)
        try:
            fused = _optimize(src, heads, hidden, attention)
            present = {n.name for n in fused.model.graph.node}
            if keep - present:
                notes.append(f"attention fusion off: it would fuse float layers {sorted(keep - present)[:3]}")
                continue
            fused.save_model_to_file(str(dst))
            diff = check_export(dst, model, names)
            with torch.inference_mode():
                probe = dict(zip(names, example_inputs(model, names, 3, 11, 1, True)))
                scale = float(model(**probe).logits.abs().max())
            if not diff <= tolerance * max(scale, 1e-3) + 1e-5:
                notes.append(f"{'attention ' if attention else ''}fusion changed the outputs by {diff:.3g}")
                dst.unlink(missing_ok=True)
                continue
            stats = {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
            notes.append(f"fused by onnxruntime.transformers (bert{', attention' if attention else ''}): {stats}")
            return notes
        except Exception as err:  # the optimizer's own errors: skip the fusion, keep the export
            log.debug("transformer fusion failed", exc_info=True)
            notes.append(f"fusion failed: {type(err).__name__}: {one_line(err)}")
            dst.unlink(missing_ok=True)
    notes.append("fusion skipped: " + ("; ".join(notes) or "no fusion applies"))
    return notes
