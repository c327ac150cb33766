"""ONNX export of a compressed model, and dynamic int8 through ``onnxruntime.quantization``.

:func:`export_onnx` writes one ``.onnx`` file whose inputs are the tokenizer's tensors
(``input_ids``, ``attention_mask`` and, for BERT-style models, ``token_type_ids``) with a
dynamic batch and sequence axis, and whose output is ``logits``. It tries the
``torch.export``-based exporter first (``dynamo=True``, needs ``onnxscript``) and falls back
to the TorchScript exporter; each export is checked against PyTorch on a batch of another
shape before it is accepted, so a graph that froze a shape or a branch is refused.

:func:`export_for_deployment` exports what a recipe deploys: the model itself when it has
no quantization step; the float model re-quantized by ONNX Runtime when the recipe uses
PyTorch's dynamic int8 (``quantize_dynamic``: its packed int8 modules cannot be exported, so
the same Linear layers are quantized dynamically, int8 weights per tensor, in the ONNX graph).
"""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)
EXPORTERS = ("dynamo", "torchscript")
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
INSTALL = "pip install 'autosqueeze[onnx]'"


class OnnxUnavailable(RuntimeError):
    """onnx / onnxruntime are not installed (an optional dependency)."""


class OnnxUnsupported(RuntimeError):
    """This model cannot be exported to ONNX (the reason says why)."""


def require(module: str = "onnxruntime") -> Any:
    """Import an optional ONNX module, or fail with the install command."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise OnnxUnavailable(f"{module} is not installed: {INSTALL}") from None


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


def example_inputs(model: nn.Module, names: tuple[str, ...], batch: int, seq: int, seed: int = 0,
                   padded: bool = False) -> tuple[torch.Tensor, ...]:
    """Random token ids of a shape (one row padded when ``padded``), in ``names`` order."""
    g = torch.Generator().manual_seed(seed)
    vocab = int(getattr(model.config, "vocab_size", 1000))
    ids = torch.randint(min(5, vocab - 1), vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if padded:
        mask[0, seq // 2:] = 0
    values = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros(batch, seq, dtype=torch.long)}
    if padded and seq > 2:
        values["token_type_ids"][:, seq // 2:] = 1
    return tuple(values[n] for n in names)


def _run_exporter(wrapped: nn.Module, args: tuple[torch.Tensor, ...], names: tuple[str, ...], path: Path,
                  exporter: str, max_seq: int, external: bool) -> None:
    common = dict(input_names=list(names), output_names=["logits"], opset_version=18)
    quiet = logging.getLogger("torch.onnx")  # "torchvision is not installed" notices of the dynamo exporter
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                batch = torch.export.Dim("batch", min=1, max=4096)
                seq = torch.export.Dim("seq", min=1, max=max_seq)
                program = torch.onnx.export(wrapped, args, None, dynamo=True, verbose=False, optimize=True,
                                            dynamic_shapes=tuple({0: batch, 1: seq} for _ in names), **common)
                program.save(str(path), external_data=external)
            else:
                axes = {n: {0: "batch", 1: "seq"} for n in names} | {"logits": {0: "batch"}}
                torch.onnx.export(wrapped, args, str(path), dynamo=False, dynamic_axes=axes, do_constant_folding=True,
                                  **common)
    finally:
        quiet.setLevel(level)


def check_export(path: Path, model: nn.Module, names: tuple[str, ...]) -> float:
    """Max |ONNX Runtime − PyTorch| on a padded batch of another shape than the traced one."""
    ort = require("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    args = example_inputs(model, names, batch=3, seq=11, seed=1, padded=True)
    with torch.inference_mode():
        ref = model(**dict(zip(names, args))).logits.float().numpy()
    out = sess.run(["logits"], {n: a.numpy() for n, a in zip(names, args)})[0]
    if out.shape != ref.shape:
        raise OnnxUnsupported(f"ONNX output shape {out.shape} differs from PyTorch's {ref.shape}")
    return float(np.abs(out.astype(np.float32) - ref).max())


def export_onnx(model: nn.Module, path: str | Path, *, exporter: str | None = None,
                tolerance: float = 0.05) -> OnnxInfo:
    """Export ``model`` (a transformers classifier) to ``path`` and check it.

    ``exporter``: ``dynamo`` or ``torchscript``; default ``$AUTOSQUEEZE_ONNX_EXPORTER`` or
    dynamo first with the TorchScript exporter as fallback. Raises OnnxUnsupported when no
    exporter gives a graph within ``tolerance`` (relative to the logits' scale) of PyTorch.
    """
    require("onnx")
    require("onnxruntime")
    if getattr(model, "autosqueeze_needs_real_inputs", False):
        raise OnnxUnsupported("its cost is decided per batch at run time (early exit): an ONNX graph would "
                              "freeze one path; deploy it with PyTorch")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = input_names(model)
    model.eval()
    wrapped = _Logits(model, names).eval()
    order = exporter or os.environ.get("AUTOSQUEEZE_ONNX_EXPORTER") or "auto"
    if order not in EXPORTERS + ("auto",):
        raise ValueError(f"unknown ONNX exporter {order!r}; choose one of {EXPORTERS} or auto")
    tries = EXPORTERS if order == "auto" else (order,)
    max_seq = int(getattr(model.config, "max_position_embeddings", 512))
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    errors = []
    for name in tries:
        try:
            _run_exporter(wrapped, example_inputs(model, names, 2, 16), names, path, name, max_seq,
                          external=nbytes > 1_800_000_000)
            diff = check_export(path, model, names)
            with torch.inference_mode():
                scale = float(model(**dict(zip(names, example_inputs(model, names, 3, 11, 1, True)))).logits.abs().max())
            if not diff <= tolerance * max(scale, 1e-3) + 1e-5:
                raise OnnxUnsupported(f"its outputs differ from PyTorch by {diff:.3g}")
            return OnnxInfo(str(path), name, list(names), max_abs_diff=diff, size_bytes=path.stat().st_size,
                            notes=[f"{e}" for e in errors])
        except OnnxUnavailable:
            raise
        except Exception as err:  # exporters raise many types; try the next one
            line = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            log.info("ONNX export with %s failed: %s", name, line)
            errors.append(f"{name} exporter: {type(err).__name__}: {line}")
            path.unlink(missing_ok=True)
    raise OnnxUnsupported("; ".join(errors))


# --- dynamic int8 in the ONNX graph -----------------------------------------------------------
def _node_modules(node: Any) -> list[str]:
    """Module paths a node comes from (dynamo: name-scope metadata; TorchScript: the node name)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            import ast

            try:
                return [s for s in ast.literal_eval(prop.value) if isinstance(s, str)]
            except (ValueError, SyntaxError):
                return []
    parts = [p for p in node.name.split("/") if p]
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def matmul_nodes(onnx_path: str | Path, module_names: set[str], prefix: str = "model.") -> list[str]:
    """Names of the MatMul/Gemm nodes with a constant weight that come from ``module_names``."""
    onnx = require("onnx")
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    consts = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    out = []
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in consts:
            continue
        scopes = {s[len(prefix):] if s.startswith(prefix) else s for s in _node_modules(node)}
        if scopes & module_names:
            out.append(node.name)
    return out


def quantize_onnx_dynamic(src: str | Path, dst: str | Path, module_names: set[str]) -> int:
    """Dynamic int8 (int8 weights per tensor, activations quantized per batch) for the MatMuls of
    ``module_names`` (Linear layers, qualified names in the PyTorch model); returns how many."""
    require("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = matmul_nodes(src, module_names)
    if not nodes:
        raise OnnxUnsupported(f"found none of the {len(module_names)} Linear layers to quantize in {src}")
    if len(nodes) != len(module_names):
        log.warning("ONNX int8: %d MatMul nodes matched for %d Linear layers", len(nodes), len(module_names))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime.quantization logs advice through the root logger
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=False,
                             op_types_to_quantize=["MatMul", "Gemm"], nodes_to_quantize=nodes,
                             extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)
    return len(nodes)


def _has_packed_int8(model: nn.Module) -> bool:
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules())


def export_for_deployment(model: nn.Module, path: str | Path, *, float_model: nn.Module | None = None,
                          recipe: Any = None, exporter: str | None = None) -> OnnxInfo:
    """Export the model a recipe deploys; ``float_model`` is the model before its quantization steps.

    PyTorch dynamic int8 (``quantize_dynamic`` steps) is redone by ONNX Runtime on the same
    Linear layers; other quantization steps (half-precision casts, weight-only int8/int4) are
    exported as they run in PyTorch, when the exporters can.
    """
    from ..deploy import quantize_start
    from ..methods.common import is_quantized_module, part_weights

    path = Path(path)
    steps = [] if recipe is None else recipe.steps[quantize_start(recipe):]
    dynamic = [s for s in steps if s.method == "quantize_dynamic"]
    if not dynamic:
        if _has_packed_int8(model):
            raise OnnxUnsupported("PyTorch's packed int8 layers cannot be exported; pass the recipe and float model")
        return export_onnx(model, path, exporter=exporter)
    if float_model is None or _has_packed_int8(float_model):
        raise OnnxUnsupported("a quantize_dynamic recipe is exported from its float model, and none was given")
    from ..arch import get_adapter
    from ..methods import MethodContext
    from ..recipe import Recipe, apply_recipe

    adapter = get_adapter(float_model)
    base = float_model
    others = [s for s in steps if s.method != "quantize_dynamic"]
    if others:  # e.g. bf16 embeddings + int8 encoder: cast first, then int8 in the graph
        base, _ = apply_recipe(Recipe(steps=others), float_model, MethodContext(adapter=adapter, seed=recipe.seed,
                                                                                replay=True))
    targets = set()
    for step in dynamic:
        targets |= {name for _, name, mod in part_weights(base, adapter, step.config().parts)
                    if not is_quantized_module(mod)}
    float_path = path.with_name(f".{path.stem}.float.onnx")
    try:
        info = export_onnx(base, float_path, exporter=exporter)
        info.quantized_nodes = quantize_onnx_dynamic(float_path, path, targets)
    finally:
        float_path.unlink(missing_ok=True)
    info.path, info.quantized, info.size_bytes = str(path), True, path.stat().st_size
    info.notes.append("int8 by onnxruntime.quantization.quantize_dynamic (weights per tensor, QInt8); "
                      "max_abs_diff is the float graph's")
    return info
