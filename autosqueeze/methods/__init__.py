"""Compression methods, one module each, registered by name (see registry.py).

Importing this package registers every built-in method; the list below is the registry's
only source of built-ins (no auto-discovery).
"""
from . import (  # noqa: F401  (registration side effects; quantize_static is deployed by ONNX Runtime)
    cast_precision,
    decompose_svd,
    distill,
    drop_layers,
    early_exit,
    elastic,
    prune_structured,
    prune_unstructured,
    prune_vocab,
    qat,
    quantize_dynamic,
    quantize_embeddings,
    quantize_static,
    quantize_weights,
    share_layers,
)
from .context import MethodContext
from .hooks import Prepared, StudyHook, StudyInputs
from .registry import (
    MethodError,
    MethodSpec,
    Stage,
    config_to_params,
    get_method,
    graph_int8_methods,
    int8_reference,
    method_names,
    method_specs,
    recovery_method,
    register,
)

__all__ = [
    "MethodContext", "MethodError", "MethodSpec", "Prepared", "Stage", "StudyHook", "StudyInputs", "config_to_params",
    "get_method", "graph_int8_methods", "int8_reference", "method_names", "method_specs", "recovery_method",
    "register",
]
