"""ONNX export of a compressed model, and its int8 redone by ``onnxruntime.quantization``.

:func:`export_onnx` writes one ``.onnx`` file whose inputs are the tokenizer's tensors
(``input_ids``, ``attention_mask`` and, for BERT-style models, ``token_type_ids``) with a
dynamic batch and sequence axis, and whose output is ``logits``. It tries the
``torch.export``-based exporter first (``dynamo=True``, needs ``onnxscript``) and falls back
to the TorchScript exporter; each export is checked against PyTorch on a batch of another
shape before it is accepted, so a graph that froze a shape or a branch is refused.
Which exporter goes first, and whether attention is exported from its eager code (what ONNX
Runtime fuses best) or as the model runs, come from the deploy variant
(:mod:`autosqueeze.runtimes.variants`; default: TorchScript exporter, eager attention).
Models no ONNX Runtime graph can express are refused up front with a one-line reason
(:func:`unsupported_reason`): early exit (its depth is decided per batch), bf16 weights or
compute (no bf16 MatMul kernel in ONNX Runtime's CPU provider), CSR sparse kernels (no ONNX
operator). Every refusal is one line, without the exporters' graph dumps or colour codes.

:func:`export_for_deployment` exports what a recipe deploys: the model itself when it has
no int8 step; the float model re-quantized by ONNX Runtime when the recipe uses PyTorch's
dynamic int8 (``quantize_dynamic``: its packed int8 modules cannot be exported, so the same
Linear layers are quantized dynamically, int8 weights per tensor, in the ONNX graph) or
static int8 (``quantize_static``: QDQ with the recorded calibration, see onnx_int8.py). Its
``variant`` picks the exporter, the attention form, the optional transformer fusions and the
int8 kernels (per tensor / channel, signed / unsigned weights, ``reduce_range``), and is
recorded in the returned info and the file's metadata.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..capabilities import StaticInt8
from ..measure.latency import needs_real_inputs
from .onnx_base import OnnxUnavailable, OnnxUnsupported, check_export, example_inputs, one_line, quiet_fds, require
from .variants import DeployVariant, resolve_variant

log = logging.getLogger(__name__)
EXPORTERS = ("dynamo", "torchscript")
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def unsupported_reason(model: nn.Module) -> str | None:
    """Why no ONNX Runtime graph can run ``model`` as it runs in PyTorch (None: try exporting)."""
    if needs_real_inputs(model):
        return ("its cost is decided per batch at run time (early exit): an ONNX graph would freeze one path; "
                "deploy it with PyTorch")
    bf16 = any(t.dtype == torch.bfloat16 for m in model.modules() if not isinstance(m, nn.Embedding)
               for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)))
    if bf16 or any(getattr(m, "compute", None) is torch.bfloat16 for m in model.modules()):
        return ("bf16 weights or compute: ONNX Runtime's CPU provider has no bf16 MatMul kernel; deploy bf16 "
                "with PyTorch (fp16 and int8 export)")
    if any(getattr(m, "kernel", None) == "csr" for m in model.modules()):
        return ("CSR sparse kernels (prune_unstructured kernel: csr) have no ONNX operator; use kernel: dense "
                "to export the same sparse weights as dense matmuls")
    return None


@dataclass
class OnnxInfo:
    """What was exported, how, and how close it is to PyTorch."""

    path: str
    exporter: str
    inputs: list[str]
    quantized: bool = False  # int8 by onnxruntime.quantization
    quantized_nodes: int = 0
    max_abs_diff: float = 0.0  # float export vs PyTorch, on a check batch
    size_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    variant: dict[str, Any] | None = None  # the DeployVariant the graph was built with (to_dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Logits(nn.Module):
    """Positional tensors in, logits out: the signature the exporters want."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return self.model(**{n: given[n] for n in self.names}).logits


def input_names(model: nn.Module) -> tuple[str, ...]:
    """The tokenizer tensors ``model`` takes (token types only where they mean something)."""
    params = inspect.signature(model.forward).parameters
    cfg = getattr(model, "config", None)
    names = [n for n in INPUT_NAMES[:2] if n in params]
    if "token_type_ids" in params and int(getattr(cfg, "type_vocab_size", 0) or 0) > 1:
        names.append("token_type_ids")
    if "input_ids" not in names:
        raise OnnxUnsupported(f"{type(model).__name__}.forward takes no input_ids")
    return tuple(names)


def _set_attention(model: nn.Module, impl: str) -> None:
    setter = getattr(model, "set_attn_implementation", None)
    if callable(setter):
        setter(impl)
    else:
        model.config._attn_implementation = impl  # type: ignore[union-attr]  # a transformers config


@contextlib.contextmanager
def attention_for_export(model: nn.Module, attention: str) -> Iterator[None]:
    """Run ``model`` with eager attention while it is exported (``attention == "eager"``), then
    restore its own; a model that cannot switch is exported as it is (the check catches any
    difference)."""
    cfg = getattr(model, "config", None)
    before = getattr(cfg, "_attn_implementation", None)
    switched = False
    if attention == "eager" and before is not None and before != "eager":
        try:
            _set_attention(model, "eager")
            switched = True
        except (ValueError, AttributeError, TypeError, ImportError) as err:
            log.debug("cannot export %s with eager attention: %s", type(model).__name__, err)
    try:
        yield
    finally:
        if switched:
            _set_attention(model, before)  # type: ignore[arg-type]  # not None when switched


def exporter_order(exporter: str | None, variant: DeployVariant | None = None) -> tuple[str, ...]:
    """The exporters to try, in order: ``exporter`` alone when given (or
    ``$AUTOSQUEEZE_ONNX_EXPORTER``), else the variant's first and the other as fallback."""
    order = exporter or os.environ.get("AUTOSQUEEZE_ONNX_EXPORTER") or "auto"
    if order not in EXPORTERS + ("auto",):
        raise ValueError(f"unknown ONNX exporter {order!r}; choose one of {EXPORTERS} or auto")
    if order != "auto":
        return (order,)
    first = resolve_variant(variant).exporter
    return (first,) + tuple(e for e in EXPORTERS if e != first)


def _run_exporter(wrapped: nn.Module, args: tuple[torch.Tensor, ...], names: tuple[str, ...], path: Path,
                  exporter: str, max_seq: int, external: bool) -> None:
    common: dict[str, Any] = dict(input_names=list(names), output_names=["logits"], opset_version=18)
    quiet = logging.getLogger("torch.onnx")  # "torchvision is not installed" notices of the dynamo exporter
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad(), quiet_fds():
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                batch = torch.export.Dim("batch", min=1, max=4096)
                seq = torch.export.Dim("seq", min=1, max=max_seq)
                program = torch.onnx.export(wrapped, args, None, dynamo=True, verbose=False, optimize=True,
                                            dynamic_shapes=tuple({0: batch, 1: seq} for _ in names), **common)
                program.save(str(path), external_data=external)  # type: ignore[union-attr]  # dynamo: a program
            else:
                axes = {n: {0: "batch", 1: "seq"} for n in names} | {"logits": {0: "batch"}}
                torch.onnx.export(wrapped, args, str(path), dynamo=False, dynamic_axes=axes, do_constant_folding=True,
                                  **common)
    finally:
        quiet.setLevel(level)


def export_onnx(model: nn.Module, path: str | Path, *, exporter: str | None = None,
                tolerance: float = 0.05, attention: str | None = None,
                variant: DeployVariant | dict[str, Any] | None = None) -> OnnxInfo:
    """Export ``model`` (a transformers classifier) to ``path`` and check it.

    ``exporter``: ``dynamo`` or ``torchscript``; default ``$AUTOSQUEEZE_ONNX_EXPORTER`` or the
    deploy variant's exporter first (``variant``, default
    :func:`~autosqueeze.runtimes.variants.active_variant`: TorchScript) with the other as
    fallback. ``attention``: ``eager`` (exported from the eager attention code) or ``model``
    (as the model runs); default the variant's. Raises OnnxUnsupported when no exporter gives a
    graph within ``tolerance`` (relative to the logits' scale) of PyTorch.
    """
    require("onnx")
    require("onnxruntime")
    reason = unsupported_reason(model)
    if reason:
        raise OnnxUnsupported(reason)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = input_names(model)
    model.eval()
    wrapped = _Logits(model, names).eval()
    chosen = resolve_variant(variant)
    tries = exporter_order(exporter, chosen)
    attention = attention or chosen.attention
    max_seq = int(getattr(model.config, "max_position_embeddings", 512))
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    errors: list[str] = []
    for name in tries:
        try:
            with attention_for_export(model, attention):
                _run_exporter(wrapped, example_inputs(model, names, 2, 16), names, path, name, max_seq,
                              external=nbytes > 1_800_000_000)
            diff = check_export(path, model, names)
            with torch.inference_mode():
                probe = dict(zip(names, example_inputs(model, names, 3, 11, 1, True)))
                scale = float(model(**probe).logits.abs().max())
            if not diff <= tolerance * max(scale, 1e-3) + 1e-5:
                raise OnnxUnsupported(f"its outputs differ from PyTorch by {diff:.3g}")
            used = chosen.with_(exporter=name, attention=attention)
            return OnnxInfo(str(path), name, list(names), max_abs_diff=diff, size_bytes=path.stat().st_size,
                            notes=[f"{e}" for e in errors], variant=used.to_dict())
        except OnnxUnavailable:
            raise
        except Exception as err:  # exporters raise many types; try the next one
            line = one_line(err) or type(err).__name__
            log.info("ONNX export with %s failed: %s", name, line)
            log.debug("ONNX export with %s: the full error", name, exc_info=True)  # shown with --verbose
            errors.append(f"{name} exporter: {type(err).__name__}: {line}")
            path.unlink(missing_ok=True)
    raise OnnxUnsupported("; ".join(errors))


# --- what a recipe deploys: int8 redone in the graph (the steps whose registry entry says graph_int8) --


def _has_packed_int8(model: nn.Module) -> bool:
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules())


def _static_ranges(model: nn.Module) -> dict[str, tuple[float, float]]:
    """Calibrated input ranges of the deployed model's static int8 Linears (``capabilities.StaticInt8``)."""
    return {name: (float(m.rmin), float(m.rmax)) for name, m in model.named_modules()
            if isinstance(m, StaticInt8) and m.autosqueeze_static_int8}


def export_for_deployment(model: nn.Module, path: str | Path, *, float_model: nn.Module | None = None,
                          recipe: Any = None, exporter: str | None = None,
                          variant: DeployVariant | dict[str, Any] | None = None) -> OnnxInfo:
    """Export the model a recipe deploys; ``float_model`` is the model before its quantization steps.

    PyTorch dynamic int8 (``quantize_dynamic`` steps) is redone by ONNX Runtime's dynamic
    quantization on the same Linear layers; static int8 (``quantize_static``) by ONNX
    Runtime's QDQ static quantization with the ranges the step calibrated (read from
    ``model``'s layers). Other quantization steps (half-precision casts, weight-only
    int8/int4, embedding int8) are exported as they run in PyTorch, when ONNX Runtime can.
    ``variant`` (default: the recipe's recorded one, else
    :func:`~autosqueeze.runtimes.variants.active_variant`): exporter,
    attention form, transformer fusions (float and dynamic int8 graphs) and dynamic int8
    kernels; an explicit ``exporter`` wins over the variant's.
    """
    from ..builder import quantize_start, replay
    from ..methods import get_method, graph_int8_methods
    from ..methods.common import is_quantized_module, part_weights
    from .fusion import fuse_graph
    from .onnx_int8 import quantize_onnx_dynamic, quantize_onnx_static

    chosen = resolve_variant(variant, recipe)
    path = Path(path)
    steps = [] if recipe is None else recipe.steps[quantize_start(recipe):]
    graph_int8 = graph_int8_methods()
    int8 = [s for s in steps if s.method in graph_int8]
    if not int8:
        if _has_packed_int8(model):
            raise OnnxUnsupported("PyTorch's packed int8 layers cannot be exported; pass the recipe and float model")
        if _static_ranges(model):
            raise OnnxUnsupported("static int8 layers are exported from the float model; pass the recipe and "
                                  "float model")
        info = export_onnx(model, path, exporter=exporter, variant=chosen)
        if chosen.fusion != "none":
            fused = path.with_name(f".{path.stem}.fused.onnx")
            try:
                info.notes += fuse_graph(path, fused, model, chosen.fusion, keep=set(), names=tuple(info.inputs))
                if fused.is_file():
                    fused.replace(path)
            finally:
                fused.unlink(missing_ok=True)
        return _finish(info, path, chosen)
    if len({s.method for s in int8}) > 1:
        raise OnnxUnsupported("a recipe with both quantize_dynamic and quantize_static steps: ONNX Runtime "
                              "quantizes a graph one way; keep one int8 method")
    if float_model is None or _has_packed_int8(float_model) or _static_ranges(float_model):
        raise OnnxUnsupported(f"a {int8[0].method} recipe is exported from its float model, and none was given")
    from ..arch import get_adapter

    adapter = get_adapter(float_model)
    base = float_model
    if any(s.method not in graph_int8 for s in steps):  # e.g. bf16 embeddings + int8 encoder: cast first,
        base = replay(recipe, float_model, part="quantize", skip=graph_int8)  # then int8 in the graph
    float_path = path.with_name(f".{path.stem}.float.onnx")
    fused_path = path.with_name(f".{path.stem}.fused.onnx")
    try:
        info = export_onnx(base, float_path, exporter=exporter, variant=chosen)
        if get_method(int8[0].method).graph_int8 == "dynamic":
            from .onnx_int8 import matmul_nodes, weight_matmuls

            targets = set()
            for step in int8:
                targets |= {name for _, name, mod in part_weights(base, adapter, step.config().parts)
                            if not is_quantized_module(mod)}
            q = chosen.int8
            src, fused_nodes = float_path, None
            if chosen.fusion != "none":
                wanted = set(matmul_nodes(float_path, targets))
                keep = set(weight_matmuls(float_path)) - wanted  # float in the recipe: must stay unfused MatMuls
                info.notes += fuse_graph(float_path, fused_path, base, chosen.fusion, keep=keep,
                                         names=tuple(info.inputs))
                if fused_path.is_file():
                    src, fused_nodes = fused_path, (len(wanted), keep)
            info.quantized_nodes = quantize_onnx_dynamic(src, path, targets, per_channel=q.per_channel,
                                                         weight_type=q.weight_type, reduce_range=q.reduce_range,
                                                         fused=fused_nodes)
            grain = "per channel" if q.per_channel else "per tensor"
            rr = ", reduce_range" if q.reduce_range else ""
            how = f"onnxruntime.quantization.quantize_dynamic (weights {grain}, {q.weight_type}{rr})"
        else:
            ranges = _static_ranges(model)
            if not ranges:
                raise OnnxUnsupported("the quantize_static model has no calibrated layers: pass the deployed model")
            cfg = int8[0].config()
            names = tuple(info.inputs)
            feeds = [{n: a.numpy() for n, a in zip(names, example_inputs(base, names, 2, 16, seed=s, padded=True))}
                     for s in range(2)]
            info.quantized_nodes = quantize_onnx_static(float_path, path, ranges, feeds,
                                                        per_channel=cfg.per_channel, activations=cfg.activations)
            how = (f"onnxruntime.quantization.quantize_static (QDQ, weights QInt8 "
                   f"{'per channel' if cfg.per_channel else 'per tensor'}, activations {cfg.activations} with the "
                   f"recorded calibration ranges)")
    except (OnnxUnsupported, OnnxUnavailable):
        raise
    except Exception as err:  # the quantizer's own errors: one line here, the full log with --verbose
        log.debug("ONNX Runtime int8 quantization failed", exc_info=True)
        raise OnnxUnsupported(f"ONNX Runtime int8 quantization failed: {type(err).__name__}: {one_line(err)}") \
            from None
    finally:
        float_path.unlink(missing_ok=True)
        fused_path.unlink(missing_ok=True)
    info.path, info.quantized = str(path), True
    info.notes.append(f"int8 by {how}; max_abs_diff is the float graph's")
    return _finish(info, path, chosen)


VARIANT_KEY = "autosqueeze.variant"  # ONNX metadata: the variant a file was built with (JSON)


def _finish(info: OnnxInfo, path: Path, chosen: DeployVariant) -> OnnxInfo:
    """Record the variant actually used (the exporter that succeeded) in ``info`` and the file."""
    import json

    used = chosen.with_(exporter=info.exporter, attention=(info.variant or {}).get("attention", chosen.attention))
    if not any("fusion skipped" in n for n in info.notes):
        info.variant = used.to_dict()
    else:
        info.variant = used.with_(fusion="none").to_dict()
    onnx = require("onnx")
    if info.size_bytes < 1_800_000_000:  # external-data graphs keep their metadata as exported
        graph = onnx.load(str(path))
        props = {p.key: p.value for p in graph.metadata_props}
        props[VARIANT_KEY] = json.dumps(info.variant, sort_keys=True)
        onnx.helper.set_model_props(graph, props)
        onnx.save(graph, str(path))
    info.size_bytes = path.stat().st_size
    return info


def recorded_variant(path: str | Path) -> dict[str, Any] | None:
    """The variant recorded in an ONNX file by :func:`export_for_deployment` (None: none recorded)."""
    import json

    onnx = require("onnx")
    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception:  # unreadable: the session will say why
        return None
    for prop in graph.metadata_props:
        if prop.key == VARIANT_KEY:
            try:
                value = json.loads(prop.value)
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None
