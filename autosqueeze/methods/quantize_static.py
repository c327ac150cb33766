"""Static int8 of Linear layers: int8 weights and int8 activations with calibrated, fixed ranges.

Calibration: the float model runs on ``sentences`` training sentences (from the recipe's
training batches; padded positions left out) and records, for each target Linear, the min
and max of its input. Those ranges are the step's decisions (``decisions["ranges"]``,
module name → [min, max]), so a saved model is rebuilt without data and the deployed graph
uses exactly them.

Deployment: ONNX Runtime only. The ONNX export (runtimes/onnx_int8.py) runs
``onnxruntime.quantization.quantize_static`` in the QDQ format on the float graph: weights
int8 per output channel (symmetric, ``per_channel``), each target's input quantized with
the recorded range (``activations``: ``quint8`` asymmetric, ONNX Runtime's default, or
``qint8``), outputs float; ONNX Runtime fuses them into integer matmuls. PyTorch has no fast
static int8 Linear on this CPU for such a model (eager static quantization adds a quantize
and a dequantize around every Linear and loses to ``quantize_dynamic``), so the PyTorch
model of this step is a faithful *simulation* — :class:`StaticInt8Linear` rounds the
weights and the input activations to the same int8 grids and multiplies in fp32 — used for
accuracy (its predictions match the ONNX Runtime graph's up to rounding ties), declared
ONNX Runtime's (``capabilities.RuntimeBound``: ``bind_runtime``); timing it in the ``torch``
runtime is refused in one line.

Size: 1 byte per quantized weight + one fp32 scale per output row (+ fp32 bias, + the
activation scale and zero point); embeddings unchanged. Several quantization steps may
share a recipe on different parts (e.g. ``cast_precision`` fp16 embeddings); a target that an
earlier step quantized is refused; ``quantize_dynamic`` and ``quantize_static`` together
are refused at export (ONNX Runtime quantizes one graph one way).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..capabilities import LowPrecision, StaticInt8, StoredSize, bind_runtime
from ..measure.latency import needs_real_inputs
from .common import checked_parts, plain_linear, replace_module, unquantized_part_weights
from .context import MethodContext
from .registry import MethodError, Stage, register

log = logging.getLogger(__name__)
PARTS = ("attention", "ffn", "classifier")
ACTIVATIONS = {"quint8": (0, 255), "qint8": (-128, 127)}
RUNTIME = "onnxruntime"
REFUSAL = ("quantize_static needs runtime onnxruntime: PyTorch has no fast static int8 Linear kernel here (its "
           "model only simulates the int8 numerics for accuracy); set hardware.runtime: onnxruntime, or use "
           "quantize_dynamic for the torch runtime")


@dataclass(frozen=True)
class QuantizeStaticConfig:
    sentences: int = 256  # training sentences the activation ranges are calibrated on
    parts: tuple[str, ...] = ("attention", "ffn")
    per_channel: bool = True  # weight scales per output row (else one per matrix)
    activations: str = "quint8"  # quint8 (asymmetric, ONNX Runtime's default) | qint8

    def __post_init__(self) -> None:
        if isinstance(self.sentences, bool) or not isinstance(self.sentences, int) or self.sentences < 1:
            raise ValueError(f"sentences must be an int >= 1, got {self.sentences!r}")
        object.__setattr__(self, "parts", checked_parts(self.parts, PARTS))
        if not isinstance(self.per_channel, bool):
            raise ValueError(f"per_channel must be true or false, got {self.per_channel!r}")
        if self.activations not in ACTIVATIONS:
            raise ValueError(f"activations must be one of {tuple(ACTIVATIONS)}, got {self.activations!r}")


def activation_qparams(rmin: float, rmax: float, activations: str) -> tuple[float, int]:
    """(scale, zero point) of an asymmetric int8 grid covering [rmin, rmax] and 0, computed the way
    ``onnxruntime.quantization`` does (float32)."""
    qmin, qmax = ACTIVATIONS[activations]
    lo, hi = np.float32(min(rmin, 0.0)), np.float32(max(rmax, 0.0))
    scale = np.float32((hi - lo) / np.float32(qmax - qmin))
    if scale == 0:
        scale = np.float32(1.0)
    zero = int(np.round(np.float32(qmin) - lo / scale))
    return float(scale), int(np.clip(zero, qmin, qmax))


class StaticInt8Linear(nn.Module, StoredSize, LowPrecision, StaticInt8):
    """A Linear with int8 weights (symmetric, per output row or per matrix) whose input is rounded
    to a fixed int8 grid (calibrated range); computes in fp32 what the int8 graph computes."""

    autosqueeze_quantized = True
    autosqueeze_static_int8 = True

    def __init__(self, linear: nn.Linear, rmin: float, rmax: float, per_channel: bool, activations: str) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        absmax = w.abs().amax(1) if per_channel else w.abs().max().expand(w.shape[0])
        scale = absmax / 127.0
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8))
        self.register_buffer("w_scale", scale.contiguous())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        self.rmin, self.rmax, self.per_channel, self.activations = float(rmin), float(rmax), per_channel, activations
        self.a_scale, self.a_zero = activation_qparams(self.rmin, self.rmax, activations)
        self.qmin, self.qmax = ACTIVATIONS[activations]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = torch.clamp(torch.round(x / self.a_scale) + self.a_zero, self.qmin, self.qmax)
        w = self.qweight.to(x.dtype) * self.w_scale.to(x.dtype)[:, None]
        return F.linear((xq - self.a_zero) * self.a_scale, w, self.bias)

    def autosqueeze_nbytes(self) -> int:
        bias = 0 if self.bias is None else 4 * self.bias.numel()
        return self.qweight.numel() + 4 * self.w_scale.numel() + bias + 8  # + activation scale, zero point

    def autosqueeze_params(self) -> int:
        return self.qweight.numel() + (0 if self.bias is None else self.bias.numel())

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, per_channel={self.per_channel}, "
                f"activations={self.activations}, range=[{self.rmin:.4g}, {self.rmax:.4g}]")


def calibrate(model: nn.Module, names: list[str], ctx: MethodContext, sentences: int) -> tuple[dict[str, list[float]],
                                                                                               int]:
    """Min and max of each named Linear's input over ``sentences`` training sentences (padded
    positions left out); returns (ranges, sentences seen)."""
    ranges: dict[str, list[float]] = {}
    mask: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach()
            m = mask.get("now")
            if m is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(m.shape):
                x = x[m]
            if x.numel():
                lo, hi = float(x.min()), float(x.max())
                old = ranges.get(name, [lo, hi])
                ranges[name] = [min(lo, old[0]), max(hi, old[1])]
        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(hook_for(n)) for n in names]
    seen = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in ctx.batches(sentences, seed_offset=7919):  # at least one sentence per batch
                take = min(int(batch["input_ids"].shape[0]), sentences - seen)
                inputs = {k: v[:take].to(ctx.device) for k, v in batch.items() if k != "labels"}
                am = inputs.get("attention_mask")
                if am is not None:
                    mask["now"] = am.bool()
                model(**inputs)
                seen += take
                if seen >= sentences:
                    break
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missing = [n for n in names if n not in ranges]
    if missing:
        raise MethodError(f"quantize_static: calibration never reached {len(missing)} layer(s), e.g. {missing[:3]}")
    return ranges, seen


def apply(model: nn.Module, config: QuantizeStaticConfig, ctx: MethodContext) -> nn.Module:
    if needs_real_inputs(model):
        raise MethodError("quantize_static: an early-exit model deploys only with PyTorch and static int8 only with "
                          "ONNX Runtime; use quantize_dynamic after early_exit")
    targets = unquantized_part_weights(model, ctx.adapter, config.parts, "quantize_static")
    names = []
    for _, name, mod in targets:
        plain = plain_linear(mod)  # a sparse Linear is quantized dense: the int8 kernels are dense
        if plain is not mod:
            replace_module(model, name, plain)
        if not isinstance(plain, nn.Linear):
            raise MethodError(f"quantize_static: {name} is a {type(plain).__name__}, not a Linear")
        names.append(name)
    if ctx.replay:
        ranges = ctx.decisions.get("ranges")
        if not isinstance(ranges, dict) or set(ranges) != set(names):
            raise MethodError("quantize_static: the recorded calibration ranges do not match the model's layers "
                              "(rebuild the model with `autosqueeze apply`)")
    else:
        want = min(config.sentences, 8) if ctx.probe else config.sentences  # a latency probe: any range will do
        ranges, seen = calibrate(model, names, ctx, want)
        ctx.decisions["ranges"] = ranges
        ctx.decisions["sentences"] = seen
    with torch.no_grad():
        for name in names:
            lo, hi = ranges[name]
            replace_module(model, name, StaticInt8Linear(model.get_submodule(name), float(lo), float(hi),
                                                         config.per_channel, config.activations))
    bind_runtime(model, RUNTIME, REFUSAL)
    ctx.decisions["quantized"] = len(names)
    return model.eval()


SPEC = register(
    "quantize_static",
    QuantizeStaticConfig,
    apply,
    stage=Stage.QUANTIZE,
    runtime="onnxruntime",
    family="quantization",
    summary="static int8 (weights and calibrated activations) for Linear layers; deployed by ONNX Runtime (QDQ)",
    graph_int8="static",  # ONNX Runtime's QDQ quantizer on the float graph, with the calibrated input ranges
    size_modules=(StaticInt8Linear,),
)
