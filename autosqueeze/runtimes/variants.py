"""How a model's ONNX Runtime graph is built: exporter, attention form, fusions, int8 kernels, session level.

A :class:`DeployVariant` is a small, JSON-serializable choice (``to_dict`` / ``from_dict``)
that :func:`~autosqueeze.runtimes.onnx_export.export_for_deployment`,
:class:`~autosqueeze.runtimes.deployed.OrtDeployment`, :func:`~autosqueeze.runtimes.ort_runner`
and :func:`~autosqueeze.runtimes.deployed_latency` accept (``variant=``) and record in
:class:`~autosqueeze.runtimes.onnx_export.OnnxInfo` (``info.variant``) and in the ONNX file's
metadata (``autosqueeze.variant``), so that a session made later from the file (``bench``, a
saved folder) runs at the same graph-optimization level.

Which variant is used when none is passed: the one a recipe records in its profile
(``recipe.profile["deploy_variant"]``, :func:`variant_of_recipe`, so a recipe exported by a study
that measured its variant deploys the same way in ``apply``), else :func:`active_variant`: the
one set for this process with :func:`set_active_variant` (e.g. after
:func:`~autosqueeze.runtimes.deploy_variants.choose_variant` measured the candidates on this
machine), else ``$AUTOSQUEEZE_DEPLOY_VARIANT`` (JSON, or a path to a JSON file), else
:data:`DEFAULT_VARIANT`.

:data:`DEFAULT_VARIANT` is what the graph analysis of issue 25 (studies/deploy_graph) found
leanest: the TorchScript exporter with eager attention (the ``sdpa`` attention of transformers
exports to a per-layer IsNaN/Where mask sub-graph; the dynamo exporter's graph keeps GELU as
Div/Erf/Add/Mul/Mul that ONNX Runtime does not fuse, and unfused LayerNorm residuals), ONNX
Runtime's own fusions at level ``all``, and ``quantize_dynamic``'s QOperator ops with signed
int8 weights per tensor (unsigned weights take a slower u8u8 kernel). Measured on a 2-core
Intel Xeon with AVX-512 VNNI and AMX (studies/deploy_graph/results, three processes), it runs
1.13-1.25x faster than a plain export and 1.31-1.41x faster than the dynamo path used before,
on the int8 teacher and the headline's five structures alike; the ``extended`` level was 2-3%
faster still there, which is why a study measures its own machine's best (``deploy: measure``,
:mod:`autosqueeze.search.deploy_choice`) instead of trusting this default. This module imports
nothing heavy (no torch).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_VARIANT", "ENV", "LEGACY_VARIANT", "PLAIN_VARIANT", "DeployVariant", "Int8Variant",
           "active_variant", "parse_deploy_setting", "resolve_variant", "set_active_variant", "variant_of_recipe"]
RECIPE_KEY = "deploy_variant"  # in Recipe.profile

ENV = "AUTOSQUEEZE_DEPLOY_VARIANT"
EXPORTERS = ("torchscript", "dynamo")
ATTENTIONS = ("eager", "model")  # eager: exported from the eager attention code; model: as the model runs (sdpa)
FUSIONS = ("none", "bert")  # bert: onnxruntime.transformers.optimizer fusions (Attention, SkipLayerNorm, BiasGelu)
OPT_LEVELS = ("all", "extended", "basic", "disabled")
INT8_FORMATS = ("QOperator",)  # dynamic int8 in ONNX Runtime: QOperator ops only (static int8 is always QDQ)
WEIGHT_TYPES = ("QInt8", "QUInt8")


@dataclass(frozen=True)
class Int8Variant:
    """How ``quantize_dynamic`` steps are redone by ``onnxruntime.quantization.quantize_dynamic``."""

    format: str = "QOperator"
    per_channel: bool = False
    weight_type: str = "QInt8"
    reduce_range: bool = False

    def __post_init__(self) -> None:
        if self.format not in INT8_FORMATS:
            raise ValueError(f"int8 format must be one of {INT8_FORMATS} for dynamic int8 (ONNX Runtime's "
                             f"quantize_dynamic writes QOperator ops; quantize_static recipes use QDQ), "
                             f"got {self.format!r}")
        if self.weight_type not in WEIGHT_TYPES:
            raise ValueError(f"int8 weight_type must be one of {WEIGHT_TYPES}, got {self.weight_type!r}")
        for name in ("per_channel", "reduce_range"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"int8 {name} must be true or false, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class DeployVariant:
    """One way to build and run a model's ONNX Runtime graph (see the module docstring)."""

    exporter: str = "torchscript"  # tried first; the other exporter is the fallback
    attention: str = "eager"
    fusion: str = "none"
    opt_level: str = "all"  # the session's graph_optimization_level
    int8: Int8Variant = field(default_factory=Int8Variant)

    def __post_init__(self) -> None:
        for name, allowed in (("exporter", EXPORTERS), ("attention", ATTENTIONS), ("fusion", FUSIONS),
                              ("opt_level", OPT_LEVELS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"deploy variant {name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not isinstance(self.int8, Int8Variant):
            raise ValueError(f"deploy variant int8 must be an Int8Variant, got {self.int8!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | DeployVariant) -> DeployVariant:
        """A variant from its dict (missing keys: the default's); unknown keys are refused."""
        if isinstance(data, DeployVariant):
            return data
        if not isinstance(data, dict):
            raise ValueError(f"a deploy variant is a mapping, got {type(data).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        extra = set(data) - known
        if extra:
            raise ValueError(f"unknown deploy variant keys {sorted(extra)}; known: {sorted(known)}")
        int8 = data.get("int8") or {}
        if isinstance(int8, dict):
            bad = set(int8) - set(Int8Variant.__dataclass_fields__)
            if bad:
                raise ValueError(f"unknown int8 keys {sorted(bad)}; known: {sorted(Int8Variant.__dataclass_fields__)}")
            int8 = Int8Variant(**int8)
        return cls(**{**{k: v for k, v in data.items() if k != "int8"}, "int8": int8})

    def with_(self, **changes: Any) -> DeployVariant:
        """A copy with ``changes`` (``int8`` may be a dict of int8 fields to change)."""
        if isinstance(changes.get("int8"), dict):
            changes["int8"] = replace(self.int8, **changes["int8"])
        return replace(self, **changes)

    @property
    def label(self) -> str:
        """A short name: ``torchscript/eager/none/all/QInt8-tensor``."""
        q = self.int8
        tail = f"{q.weight_type}-{'channel' if q.per_channel else 'tensor'}{'-rr' if q.reduce_range else ''}"
        return f"{self.exporter}/{self.attention}/{self.fusion}/{self.opt_level}/{tail}"


DEFAULT_VARIANT = DeployVariant()
# what the project deployed before issue 25: the dynamo exporter, the model's own (sdpa) attention
LEGACY_VARIANT = DeployVariant(exporter="dynamo", attention="model")
# a plain export: TorchScript exporter, the model as it runs, quantize_dynamic's defaults
PLAIN_VARIANT = DeployVariant(exporter="torchscript", attention="model")

_active: DeployVariant | None = None


def set_active_variant(variant: DeployVariant | dict[str, Any] | None) -> DeployVariant | None:
    """Make ``variant`` this process's default (None: back to the environment / built-in default);
    returns the previous one set."""
    global _active
    before = _active
    _active = None if variant is None else DeployVariant.from_dict(variant)
    return before


def _from_env() -> DeployVariant | None:
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return None
    text = Path(raw).read_text() if not raw.startswith("{") and Path(raw).is_file() else raw
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ValueError(f"${ENV} is neither JSON nor a JSON file: {err}") from None
    return DeployVariant.from_dict(data.get("variant", data) if isinstance(data, dict) else data)


def active_variant() -> DeployVariant:
    """The variant used when none is passed (see the module docstring)."""
    return _active or _from_env() or DEFAULT_VARIANT


def variant_of_recipe(recipe: Any) -> DeployVariant | None:
    """The variant a recipe records (``recipe.profile["deploy_variant"]``), or None."""
    profile = getattr(recipe, "profile", None)
    raw = profile.get(RECIPE_KEY) if isinstance(profile, dict) else None
    return DeployVariant.from_dict(raw) if raw else None


def resolve_variant(variant: DeployVariant | dict[str, Any] | None, recipe: Any = None) -> DeployVariant:
    """``variant`` as a :class:`DeployVariant` (None: the ``recipe``'s, else :func:`active_variant`)."""
    if variant is not None:
        return DeployVariant.from_dict(variant)
    return variant_of_recipe(recipe) or active_variant()


def parse_deploy_setting(value: Any) -> DeployVariant | str:
    """A study file's ``deploy:`` setting: absent / ``default`` → :data:`DEFAULT_VARIANT`;
    ``measure`` → the string ``"measure"`` (time the candidates once per study with
    :func:`~autosqueeze.runtimes.deploy_variants.choose_variant`); ``legacy`` / ``plain`` → those
    variants; a mapping → that variant (``{"variant": {...}}``, a saved choice, also works)."""
    if value is None or value == "default":
        return DEFAULT_VARIANT
    if value == "measure":
        return "measure"
    if value == "legacy":
        return LEGACY_VARIANT
    if value == "plain":
        return PLAIN_VARIANT
    if isinstance(value, dict):
        return DeployVariant.from_dict(value.get("variant", value))
    raise ValueError(f"deploy must be default, measure, legacy, plain or a variant mapping, got {value!r}")
