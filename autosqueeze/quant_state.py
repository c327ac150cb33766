"""A deployed model's tensors as stored: quantized modules packed as their integer tensors.

:func:`pack` turns a model whose quantization steps have run into (``tensors``, ``modules``,
``model_attrs``): ``tensors`` is what ``model.safetensors`` holds — every float parameter
and persistent buffer outside the quantized modules (a tensor shared by several modules
once), and each quantized module's own tensors (int8 weights with their scales and zero
points, packed int4 weights and group scales, bf16 / fp16 weights) under
``<module name>.<field>``; ``modules`` (JSON, for the manifest) says which module each
entry is and the few numbers that are not tensors (shapes, bits, group size, dtypes,
calibrated ranges). :func:`unpack` puts those modules back into the float structure a recipe
replays, directly from the stored tensors (nothing is quantized again, so the model is
the one that was saved, bit for bit), then loads the float tensors. ``dequantize=True``
instead puts plain float ``Linear`` / ``Embedding`` layers holding the dequantized weights
(the original float weights are not stored).

Kinds: PyTorch dynamic int8 ``Linear`` (``quantize_dynamic``), weight-only int8/int4
``Linear`` and ``Embedding`` (``quantize_weights``, ``quantize_embeddings``), half-precision
``Linear`` / ``Embedding`` (``cast_precision``) and the static int8 ``Linear``
(``quantize_static``). A quantized module of another kind makes :func:`pack` raise
:class:`Unpackable` (the caller saves the float model instead).
"""
from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from .methods.cast_precision import CastEmbedding, CastLinear
from .methods.common import is_quantized_module, replace_module
from .methods.quantize_static import ACTIVATIONS, StaticInt8Linear, activation_qparams
from .methods.quantize_weights import WeightOnlyEmbedding, WeightOnlyLinear

__all__ = ["Unpackable", "float_keys", "pack", "unpack"]

Tensors = dict[str, torch.Tensor]


class Unpackable(ValueError):
    """A quantized module this format cannot store (or stored tensors that do not fit)."""


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise Unpackable(f"unknown dtype {name!r}")
    return dtype


def _dname(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dynamic_linear_cls() -> type[nn.Module]:
    from torch.ao.nn.quantized.dynamic import Linear

    return Linear


# --- one (kind, pack, unpack, dequantize) per quantized module type --------------------------
def _pack_dynamic(m: Any) -> tuple[dict[str, Any], Tensors]:
    w, b = m._weight_bias()
    if m._packed_params.dtype != torch.qint8 or w.dtype != torch.qint8:
        raise Unpackable(f"dynamic Linear of dtype {m._packed_params.dtype} (only qint8 is stored)")
    t: Tensors = {"weight_int8": w.int_repr()}
    attrs: dict[str, Any] = {"in_features": m.in_features, "out_features": m.out_features}
    if w.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        attrs["qscheme"] = "per_tensor"
        t["weight_scale"] = torch.tensor([w.q_scale()], dtype=torch.float64)
        t["weight_zero_point"] = torch.tensor([w.q_zero_point()], dtype=torch.int64)
    elif w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        attrs.update(qscheme="per_channel", axis=int(w.q_per_channel_axis()))
        t["weight_scale"] = w.q_per_channel_scales().to(torch.float64)
        t["weight_zero_point"] = w.q_per_channel_zero_points().to(torch.int64)
    else:
        raise Unpackable(f"dynamic Linear with weight qscheme {w.qscheme()}")
    if b is not None:
        t["bias"] = b.detach()
    return attrs, t


def _dynamic_weight(a: Mapping[str, Any], t: Tensors) -> torch.Tensor:
    q, scale, zero = t["weight_int8"], t["weight_scale"], t["weight_zero_point"]
    if a["qscheme"] == "per_tensor":
        return torch._make_per_tensor_quantized_tensor(q, float(scale[0]), int(zero[0]))
    return torch._make_per_channel_quantized_tensor(q, scale, zero, int(a["axis"]))


def _unpack_dynamic(a: Mapping[str, Any], t: Tensors) -> nn.Module:
    m = _dynamic_linear_cls()(int(a["in_features"]), int(a["out_features"]), bias_="bias" in t, dtype=torch.qint8)
    m.set_weight_bias(_dynamic_weight(a, t), t.get("bias"))  # type: ignore[operator]
    return m


def _float_dynamic(a: Mapping[str, Any], t: Tensors) -> nn.Module:
    return _linear(_dynamic_weight(a, t).dequantize(), t.get("bias"))


def _pack_wo_linear(m: Any) -> tuple[dict[str, Any], Tensors]:
    t: Tensors = {"qweight": m.qweight, "scales": m.scales}
    if m.bias is not None:
        t["bias"] = m.bias.detach()
    return {"in_features": m.in_features, "out_features": m.out_features, "bits": m.bits, "group": m.group,
            "cols": m.cols, "compute": _dname(m.compute)}, t


def _unpack_wo_linear(a: Mapping[str, Any], t: Tensors) -> nn.Module:
    m = WeightOnlyLinear.__new__(WeightOnlyLinear)
    nn.Module.__init__(m)
    m.in_features, m.out_features, m.compute = int(a["in_features"]), int(a["out_features"]), _dtype(a["compute"])
    m.bits, m.group, m.cols = int(a["bits"]), int(a["group"]), int(a["cols"])
    m.register_buffer("qweight", t["qweight"])
    m.register_buffer("scales", t["scales"])
    m.bias = nn.Parameter(t["bias"], requires_grad=False) if "bias" in t else None  # type: ignore[assignment]
    return m


def _float_wo_linear(a: Mapping[str, Any], t: Tensors) -> nn.Module:
    m = _unpack_wo_linear(a, t)
    return _linear(m._dequant(m.qweight, m.scales, torch.float32), t.get("bias"))  # type: ignore[operator]


def _pack_wo_embedding(m: Any) -> tuple[dict[str, Any], Tensors]:
    return {"num_embeddings": m.num_embeddings, "embedding_dim": m.embedding_dim, "padding_idx": m.padding_idx,
            "bits": m.bits, "group": m.group, "cols": m.cols, "out_dtype": _dname(m.out_dtype)}, \
        {"qweight": m.qweight, "scales": m.scales}


def _unpack_wo_embedding(a: Mapping[str, Any], t: Tensors) -> nn.Module:
    m = WeightOnlyEmbedding.__new__(WeightOnlyEmbedding)
    nn.Module.__init__(m)
    m.num_embeddings, m.embedding_dim = int(a["num_embeddings"]), int(a["embedding_dim"])
    m.padding_idx, m.out_dtype = a["padding_idx"], _dtype(a["out_dtype"])
    m.bits, m.group, m.cols = int(a["bits"]), int(a["group"]), int(a["cols"])
    m.register_buffer("qweight", t["qweight"])
    m.register_buffer("scales", t["scales"])
    return m


def _float_wo_embedding(a: Mapping[str, Any], t: Tensors) -> nn.Module:
    m = _unpack_wo_embedding(a, t)
    w = m._dequant(m.qweight, m.scales, torch.float32)  # type: ignore[operator]
    return _embedding(w, a["padding_idx"])


def _pack_cast_linear(m: Any) -> tuple[dict[str, Any], Tensors]:
    t: Tensors = {"weight": m.weight.detach()}
    if m.bias is not None:
        t["bias"] = m.bias.detach()
    return {"in_features": m.in_features, "out_features": m.out_features, "out_dtype": _dname(m.out_dtype),
            "keep_output": bool(m.keep_output)}, t


def _unpack_cast_linear(a: Mapping[str, Any], t: Tensors) -> nn.Module:
    m = CastLinear(int(a["in_features"]), int(a["out_features"]), bias="bias" in t, device="meta")
    m.weight = nn.Parameter(t["weight"], requires_grad=False)
    if "bias" in t:
        m.bias = nn.Parameter(t["bias"], requires_grad=False)
    m.out_dtype, m.keep_output = _dtype(a["out_dtype"]), bool(a["keep_output"])  # type: ignore[assignment]
    return m


def _float_cast_linear(a: Mapping[str, Any], t: Tensors) -> nn.Module:
    return _linear(t["weight"].float(), t["bias"].float() if "bias" in t else None)


def _pack_cast_embedding(m: Any) -> tuple[dict[str, Any], Tensors]:
    return {"num_embeddings": m.num_embeddings, "embedding_dim": m.embedding_dim, "padding_idx": m.padding_idx,
            "max_norm": m.max_norm, "norm_type": m.norm_type, "scale_grad_by_freq": m.scale_grad_by_freq,
            "sparse": m.sparse, "out_dtype": _dname(m.out_dtype)}, {"weight": m.weight.detach()}


def _unpack_cast_embedding(a: Mapping[str, Any], t: Tensors) -> nn.Module:
    m = CastEmbedding(int(a["num_embeddings"]), int(a["embedding_dim"]), padding_idx=a["padding_idx"],
                      max_norm=a["max_norm"], norm_type=float(a["norm_type"]),
                      scale_grad_by_freq=bool(a["scale_grad_by_freq"]), sparse=bool(a["sparse"]), device="meta")
    m.weight = nn.Parameter(t["weight"], requires_grad=False)
    m.out_dtype = _dtype(a["out_dtype"])  # type: ignore[assignment]
    return m


def _float_cast_embedding(a: Mapping[str, Any], t: Tensors) -> nn.Module:
    return _embedding(t["weight"].float(), a["padding_idx"])


def _pack_static(m: Any) -> tuple[dict[str, Any], Tensors]:
    t: Tensors = {"qweight": m.qweight, "w_scale": m.w_scale}
    if m.bias is not None:
        t["bias"] = m.bias.detach()
    return {"in_features": m.in_features, "out_features": m.out_features, "rmin": m.rmin, "rmax": m.rmax,
            "per_channel": bool(m.per_channel), "activations": m.activations}, t


def _unpack_static(a: Mapping[str, Any], t: Tensors) -> nn.Module:
    if a["activations"] not in ACTIVATIONS:
        raise Unpackable(f"unknown activations {a['activations']!r}")
    m = StaticInt8Linear.__new__(StaticInt8Linear)
    nn.Module.__init__(m)
    m.in_features, m.out_features = int(a["in_features"]), int(a["out_features"])
    m.register_buffer("qweight", t["qweight"])
    m.register_buffer("w_scale", t["w_scale"])
    m.bias = nn.Parameter(t["bias"], requires_grad=False) if "bias" in t else None  # type: ignore[assignment]
    m.rmin, m.rmax, m.per_channel, m.activations = float(a["rmin"]), float(a["rmax"]), bool(a["per_channel"]), \
        str(a["activations"])
    m.a_scale, m.a_zero = activation_qparams(m.rmin, m.rmax, m.activations)
    m.qmin, m.qmax = ACTIVATIONS[m.activations]
    return m


def _float_static(a: Mapping[str, Any], t: Tensors) -> nn.Module:
    return _linear(t["qweight"].float() * t["w_scale"].float()[:, None], t.get("bias"))


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    m = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    m.weight = nn.Parameter(weight.float().contiguous())
    if bias is not None:
        m.bias = nn.Parameter(bias.float().contiguous())
    return m


def _embedding(weight: torch.Tensor, padding_idx: int | None) -> nn.Embedding:
    return nn.Embedding.from_pretrained(weight.float().contiguous(), freeze=False, padding_idx=padding_idx)


Packer = Callable[[Any], tuple[dict[str, Any], Tensors]]
Builder = Callable[[Mapping[str, Any], Tensors], nn.Module]


class Kind(NamedTuple):
    test: Callable[[nn.Module], bool]
    pack: Packer
    unpack: Builder
    dequantize: Builder


KINDS: dict[str, Kind] = {k: Kind(*v) for k, v in {
    "dynamic_int8_linear": (lambda m: isinstance(m, _dynamic_linear_cls()), _pack_dynamic, _unpack_dynamic,
                            _float_dynamic),
    "weight_only_linear": (lambda m: type(m) is WeightOnlyLinear, _pack_wo_linear, _unpack_wo_linear,
                           _float_wo_linear),
    "weight_only_embedding": (lambda m: type(m) is WeightOnlyEmbedding, _pack_wo_embedding, _unpack_wo_embedding,
                              _float_wo_embedding),
    "cast_linear": (lambda m: type(m) is CastLinear, _pack_cast_linear, _unpack_cast_linear, _float_cast_linear),
    "cast_embedding": (lambda m: type(m) is CastEmbedding, _pack_cast_embedding, _unpack_cast_embedding,
                       _float_cast_embedding),
    "static_int8_linear": (lambda m: type(m) is StaticInt8Linear, _pack_static, _unpack_static, _float_static),
}.items()}


def _kind(module: nn.Module) -> str | None:
    return next((k for k, kind in KINDS.items() if kind.test(module)), None)


# --- the whole model -------------------------------------------------------------------------
def float_keys(model: nn.Module, stored: Collection[int] = ()) -> dict[str, torch.Tensor]:
    """The model's float parameters and persistent buffers outside its quantized modules (and the
    modules whose ids are in ``stored``), by state-dict key, a tensor reached by several keys
    under its first one only."""
    quantized = [name + "." for name, m in model.named_modules(remove_duplicate=False)
                 if is_quantized_module(m) or id(m) in stored]
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict(keep_vars=True).items():
        if not isinstance(value, torch.Tensor) or any(key.startswith(q) for q in quantized) or id(value) in seen:
            continue
        seen.add(id(value))
        out[key] = value
    return out


def pack(model: nn.Module) -> tuple[Tensors, list[dict[str, Any]], dict[str, Any]]:
    """(tensors to store, the quantized modules' manifest entries, the model's own recorded
    ``autosqueeze_*`` flags). Raises :class:`Unpackable` for a quantized module of an unknown kind."""
    tensors: Tensors = {}
    modules: list[dict[str, Any]] = []
    first: dict[tuple[int, int, torch.dtype], str] = {}  # where a tensor was stored first
    for name, module in model.named_modules():  # a shared module once, under its first name
        if not is_quantized_module(module) or any(name.startswith(m["name"] + ".") for m in modules):
            continue  # (the packed parameters inside a dynamic Linear are part of it)
        kind = _kind(module)
        if kind is None:
            raise Unpackable(f"{name} is a {type(module).__name__}, which the saved format cannot store")
        attrs, own = KINDS[kind].pack(module)
        entry: dict[str, Any] = {"name": name, "kind": kind, "attrs": attrs, "tensors": sorted(own)}
        for field, t in sorted(own.items()):
            where = (t.data_ptr(), t.numel(), t.dtype)
            if t.numel() and where in first:  # a tensor two modules share (share_layers' tied biases): once
                entry.setdefault("shared", {})[field] = first[where]
                continue
            first[where] = f"{name}.{field}"
            tensors[f"{name}.{field}"] = t
        modules.append(entry)
    for key, value in float_keys(model).items():
        if key in tensors:
            raise Unpackable(f"tensor name {key} is used twice")
        tensors[key] = value
    stored = {key: t.detach().to("cpu").clone().contiguous() for key, t in tensors.items()}  # no shared storage
    flags = {k: v for k, v in vars(model).items()
             if k.startswith("autosqueeze_") and isinstance(v, (str, int, float, bool))}
    return stored, modules, flags


def unpack(model: nn.Module, tensors: Tensors, modules: list[dict[str, Any]], flags: Mapping[str, Any] | None = None,
           *, dequantize: bool = False) -> nn.Module:
    """Put the stored quantized ``modules`` into ``model`` (the replayed float structure, changed in
    place) and load every other stored tensor; ``dequantize`` puts float layers with the
    dequantized weights instead (and leaves out ``flags``). Raises :class:`Unpackable` when the
    stored tensors do not fit the structure."""
    rest = dict(tensors)
    placed: set[int] = set()  # the modules put back from their stored tensors
    for entry in modules:
        try:
            name, kind, attrs = str(entry["name"]), str(entry["kind"]), dict(entry["attrs"])
            shared = dict(entry.get("shared") or {})
            own = {field: tensors[shared[field]] if field in shared else rest.pop(f"{name}.{field}")
                   for field in entry["tensors"]}
        except (KeyError, TypeError) as err:
            raise Unpackable(f"quantized module entry {entry!r} has no tensor {err}") from None
        if kind not in KINDS:
            raise Unpackable(f"{name}: unknown quantized module kind {kind!r} (saved by a newer autosqueeze?)")
        try:
            old = model.get_submodule(name)
            new = (KINDS[kind].dequantize if dequantize else KINDS[kind].unpack)(attrs, own)
        except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as err:
            raise Unpackable(f"{name} ({kind}): {' '.join(str(err).split())[:200]}") from None
        if isinstance(old, nn.Embedding | nn.Linear) and not is_quantized_module(old):
            shape = tuple(old.weight.shape)
            have = (int(attrs.get("num_embeddings", attrs.get("out_features", -1)) or -1),
                    int(attrs.get("embedding_dim", attrs.get("in_features", -1)) or -1))
            if shape != have:
                raise Unpackable(f"{name}: stored shape {have} does not fit the recipe's structure {shape}")
        replace_module(model, name, new)
        placed.add(id(new))
    want = float_keys(model, placed)
    missing, unexpected = sorted(set(want) - set(rest)), sorted(set(rest) - set(want))
    if missing or unexpected:
        raise Unpackable(f"stored tensors do not match the structure: missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}")
    with torch.no_grad():
        for key, target in want.items():
            src = rest[key]
            if src.shape != target.shape or src.dtype != target.dtype:
                raise Unpackable(f"{key}: stored {src.dtype} {tuple(src.shape)}, the structure has {target.dtype} "
                                 f"{tuple(target.shape)}")
            target.copy_(src)
    if not dequantize:
        for k, v in (flags or {}).items():
            if k.startswith("autosqueeze_"):
                setattr(model, k, v)
    return model
