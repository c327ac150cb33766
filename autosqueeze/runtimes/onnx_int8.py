"""int8 in the ONNX graph: ONNX Runtime's dynamic and static (QDQ) quantization of chosen Linears.

Both work on a float graph exported by :func:`~autosqueeze.runtimes.onnx_export.export_onnx`
and quantize only the MatMul/Gemm nodes that come from the recipe's target Linear layers
(found through the exporters' module scopes), weights int8:

- :func:`quantize_onnx_dynamic` — ``onnxruntime.quantization.quantize_dynamic``: int8 weights
  (per tensor by default; per channel, unsigned, ``reduce_range`` as the deploy variant says),
  activations quantized per batch at run time (what ``quantize_dynamic`` does in PyTorch). On a
  graph fused by :mod:`~autosqueeze.runtimes.fusion` the fused ``Attention`` nodes become
  ``QAttention`` and the MatMuls the recipe keeps in float are excluded by name.
- :func:`quantize_onnx_static` — ``onnxruntime.quantization.quantize_static`` in the QDQ
  format: weights int8 per output channel (symmetric), each target's input activation int8
  with a fixed scale and zero point from the calibration ranges that ``quantize_static``
  (the method) measured on training sentences and recorded in its decisions. The ranges are
  handed to ONNX Runtime as ``TensorQuantOverrides`` (rmin/rmax) so the graph uses exactly the
  recorded calibration, whatever data its own calibration pass sees (a few synthetic batches:
  the API needs a reader; every quantized tensor's range is overridden). MatMul outputs stay
  float, so ONNX Runtime fuses each DequantizeLinear → MatMul into an integer matmul; every
  other consumer of a quantized activation (the residual Add, the LayerNorm) keeps reading
  the float tensor, as in the method's PyTorch model.
"""
from __future__ import annotations

import ast
import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .onnx_base import OnnxUnsupported, require

log = logging.getLogger(__name__)
ACTIVATION_TYPES = ("quint8", "qint8")


def _node_modules(node: Any) -> list[str]:
    """Module paths a node comes from (dynamo: name-scope metadata; TorchScript: the node name)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                return [s for s in ast.literal_eval(prop.value) if isinstance(s, str)]
            except (ValueError, SyntaxError):
                return []
    parts = [p for p in node.name.split("/") if p]
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def matmul_targets(onnx_path: str | Path, module_names: set[str], prefix: str = "model.") -> list[tuple[str, str, str]]:
    """``(node name, activation input, module name)`` of the MatMul/Gemm nodes with a constant
    weight that come from ``module_names`` (qualified names in the PyTorch model)."""
    onnx = require("onnx")
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    consts = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    out = []
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in consts:
            continue
        scopes = {s[len(prefix):] if s.startswith(prefix) else s for s in _node_modules(node)}
        hit = sorted(scopes & module_names, key=len)
        if hit:
            out.append((node.name, node.input[0], hit[-1]))  # the innermost module: the Linear itself
    return out


def weight_matmuls(onnx_path: str | Path) -> list[str]:
    """Names of every MatMul/Gemm node with a constant weight."""
    onnx = require("onnx")
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    consts = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) >= 2
            and n.input[1] in consts]


def matmul_nodes(onnx_path: str | Path, module_names: set[str], prefix: str = "model.") -> list[str]:
    """Names of the MatMul/Gemm nodes with a constant weight that come from ``module_names``."""
    return [n for n, _, _ in matmul_targets(onnx_path, module_names, prefix)]


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime.quantization logs advice through the root logger and prints; keep it quiet."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _check_count(found: int, wanted: int, src: str | Path) -> None:
    if not found:
        raise OnnxUnsupported(f"found none of the {wanted} Linear layers to quantize in {Path(src).name}")
    if found != wanted:
        log.warning("ONNX int8: %d MatMul nodes matched for %d Linear layers", found, wanted)


def quantize_onnx_dynamic(src: str | Path, dst: str | Path, module_names: set[str], *, per_channel: bool = False,
                          weight_type: str = "QInt8", reduce_range: bool = False,
                          fused: tuple[int, set[str]] | None = None) -> int:
    """Dynamic int8 (int8 weights, activations quantized per batch) for the MatMuls of
    ``module_names`` (Linear layers, qualified names in the PyTorch model); returns how many.

    ``fused``: ``src`` was fused (see :mod:`~autosqueeze.runtimes.fusion`): (how many target
    MatMuls the unfused graph had, the names of the MatMuls to keep in float); every other
    weight MatMul/Gemm and every fused ``Attention`` is quantized.
    """
    require("onnxruntime")
    onnx = require("onnx")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    common: dict[str, Any] = dict(weight_type=QuantType.QUInt8 if weight_type == "QUInt8" else QuantType.QInt8,
                                  per_channel=per_channel, reduce_range=reduce_range)
    if fused is not None:
        count, keep = fused
        _check_count(count, len(module_names), src)
        with _quiet_quantizer():
            quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gemm", "Attention"],
                             nodes_to_exclude=sorted(keep | {f"{n}_MatMul" for n in keep}),  # Gemm → MatMul
                             extra_options={
                                 "MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT}, **common)
        return count
    nodes = matmul_nodes(src, module_names)
    _check_count(len(nodes), len(module_names), src)
    with _quiet_quantizer():
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gemm"], nodes_to_quantize=nodes,
                         extra_options={"MatMulConstBOnly": True}, **common)
    return len(nodes)


class _FeedReader:
    """A CalibrationDataReader over a list of feeds (numpy dicts)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_onnx_static(src: str | Path, dst: str | Path, ranges: dict[str, tuple[float, float]],
                         feeds: list[dict[str, np.ndarray]], *, per_channel: bool = True,
                         activations: str = "quint8") -> int:
    """QDQ static int8 for the MatMuls of the Linear layers named in ``ranges`` (module name →
    calibrated (min, max) of its input); ``feeds``: a few graph inputs for ONNX Runtime's own
    calibration pass, whose ranges the recorded ones override. Returns how many MatMuls."""
    require("onnxruntime")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if activations not in ACTIVATION_TYPES:
        raise ValueError(f"activations must be one of {ACTIVATION_TYPES}, got {activations!r}")
    targets = matmul_targets(src, set(ranges))
    _check_count(len(targets), len(ranges), src)
    tensor_range: dict[str, tuple[float, float]] = {}
    for _, tensor, module in targets:  # Q, K and V read one tensor: its range covers all three
        lo, hi = ranges[module]
        old = tensor_range.get(tensor, (lo, hi))
        tensor_range[tensor] = (min(lo, old[0]), max(hi, old[1]))
    overrides = {t: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}] for t, (lo, hi) in tensor_range.items()}
    reader = type("Reader", (_FeedReader, CalibrationDataReader), {})(feeds)
    with _quiet_quantizer():
        quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8 if activations == "quint8" else QuantType.QInt8,
                        weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                        nodes_to_quantize=[n for n, _, _ in targets], calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"TensorQuantOverrides": overrides, "ActivationSymmetric": False,
                                       "WeightSymmetric": True,
                                       "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]})
    _float_for_others(dst, {n for n, _, _ in targets})
    return len(targets)


def _float_for_others(path: str | Path, quantized: set[str]) -> int:
    """Give every node but the quantized MatMuls the float tensor back (returns how many inputs).

    The QDQ quantizer rewires *every* consumer of a quantized activation to its dequantized
    copy: the residual Add and the next LayerNorm would then run on int8-rounded values,
    which neither the method's PyTorch model nor a per-Linear static int8 does.
    """
    onnx = require("onnx")
    model = onnx.load(str(path))
    graph = model.graph
    q_input = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    float_of = {n.output[0]: q_input[n.input[0]] for n in graph.node
                if n.op_type == "DequantizeLinear" and n.input[0] in q_input}
    changed = 0
    for node in graph.node:
        if node.name in quantized or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            if name in float_of:
                node.input[i] = float_of[name]
                changed += 1
    if changed:
        onnx.save(model, str(path))
    return changed
