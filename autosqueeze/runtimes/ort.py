"""ONNX Runtime: a session on the hardware profile, its latency, and a classifier wrapper.

The session runs on the CPU execution provider (CUDA when the profile says ``cuda`` and the
installed onnxruntime has it) with ``intra_op_num_threads = profile.threads`` and one
inter-op thread, all graph optimizations on (or the level the deploy variant recorded in the
file, see :mod:`autosqueeze.runtimes.variants`). Latency is timed the way
:func:`autosqueeze.measure.measure_latency` times PyTorch: same warm-up, repeats, busy-machine
wait and re-measure on a large spread, same synthetic inputs.
"""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..measure.latency import (
    HardwareProfile,
    LatencySettings,
    LatencyStats,
    latency_of,
    synthetic_inputs,
)
from .onnx_base import OnnxUnavailable, require

log = logging.getLogger(__name__)


LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC",
          "disabled": "ORT_DISABLE_ALL"}


def session_level(path: str | Path, opt_level: str | None = None) -> str:
    """The graph optimization level for ``path``: ``opt_level``, else the one its deploy variant
    recorded in the file, else ``all``."""
    if opt_level is not None:
        if opt_level not in LEVELS:
            raise ValueError(f"unknown graph optimization level {opt_level!r}; choose one of {tuple(LEVELS)}")
        return opt_level
    from .onnx_export import recorded_variant

    level = (recorded_variant(path) or {}).get("opt_level")
    return level if level in LEVELS else "all"


def make_session(path: str | Path, profile: HardwareProfile, *, spinning: bool = True,
                 opt_level: str | None = None, profile_file: str | None = None) -> Any:
    """An InferenceSession for ``path`` on the profile's device and thread count.

    ``opt_level``: ONNX Runtime's graph optimization level (see :func:`session_level`);
    ``profile_file``: a prefix to write ONNX Runtime's per-operator profile to (profiling on).

    ``spinning=False`` stops ONNX Runtime's pool threads from busy-waiting after each run. Any
    timing that interleaves ORT calls with PyTorch calls in one process must turn it off: the
    spinning threads steal the cores from the PyTorch call that comes next (half the CPU time
    goes to the kernel and the timings come out up to 10x off).
    """
    ort = require("onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(profile.threads)
    so.inter_op_num_threads = 1
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[session_level(path, opt_level)])
    if profile_file:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_file)
    so.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if profile.device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise OnnxUnavailable("the hardware profile asks for cuda, but this onnxruntime has no CUDA provider: "
                                  "pip install onnxruntime-gpu")
        providers = ["CUDAExecutionProvider"]
    return ort.InferenceSession(str(path), so, providers=providers)


def _feed(session: Any, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The session's inputs from a batch (token types default to zeros)."""
    feed = {}
    ids = batch["input_ids"]
    for inp in session.get_inputs():
        value = batch.get(inp.name)
        if value is None:
            if inp.name != "token_type_ids":
                raise ValueError(f"the ONNX model needs input {inp.name!r}, which the batch lacks")
            value = torch.zeros_like(ids)
        feed[inp.name] = value.detach().cpu().numpy().astype(np.int64)
    return feed


def ort_latency(session: Any, profile: HardwareProfile, inputs: list[dict[str, torch.Tensor]] | None = None,
                *, settings: LatencySettings | None = None, vocab_size: int = 1000) -> LatencyStats:
    """Median latency (ms per batch) of an ONNX Runtime session on ``profile``."""
    st = settings or LatencySettings()
    feeds = [_feed(session, b) for b in (inputs or [synthetic_inputs(profile, vocab_size)])]
    counter = iter(range(1 << 62))

    def call() -> None:
        session.run(None, feeds[next(counter) % len(feeds)])

    return latency_of(call, threads=profile.threads, settings=st)


class OrtRunner:
    """A session called like a model (``runner(**batch)``), for paired timing against PyTorch.

    The numpy feeds of each batch are made once (keyed by the batch's ``input_ids`` tensor), so
    a timed call is only ``session.run``.
    """

    def __init__(self, session: Any) -> None:
        self.session = session
        self._feeds: dict[int, tuple[torch.Tensor, dict[str, np.ndarray]]] = {}

    def __call__(self, **batch: torch.Tensor) -> Any:
        ids = batch["input_ids"]
        hit = self._feeds.get(id(ids))
        if hit is None or hit[0] is not ids:
            hit = (ids, _feed(self.session, batch))
            self._feeds[id(ids)] = hit
        return self.session.run(None, hit[1])


class OrtClassifier(nn.Module):
    """An ONNX Runtime session that answers like a transformers classifier (``.logits``), so the
    task metric of the exported model is computed by the same code as PyTorch's."""

    def __init__(self, session: Any, config: Any = None) -> None:
        super().__init__()
        self.session = session
        self.config = config

    def forward(self, **batch: torch.Tensor) -> SimpleNamespace:
        logits = self.session.run(["logits"], _feed(self.session, batch))[0]
        return SimpleNamespace(logits=torch.from_numpy(np.asarray(logits, dtype=np.float32)))


def ort_dynamic_int8_session(model: nn.Module, folder: str | Path, profile: HardwareProfile, *,
                             spinning: bool = False) -> tuple[Any, list[str]]:
    """(session, input names) of ``model`` exported to ONNX and quantized by ONNX Runtime's
    ``quantize_dynamic`` (int8 weights, every MatMul): what a user deploys without autosqueeze —
    the TorchScript exporter on the model as it runs (its own attention), ``quantize_dynamic``'s
    defaults (:data:`~autosqueeze.runtimes.variants.PLAIN_VARIANT`).

    Spinning is off by default: this session is meant to be timed interleaved with PyTorch.
    """
    from .onnx_export import export_onnx
    from .variants import PLAIN_VARIANT

    require("onnx")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = Path(folder)
    info = export_onnx(model, folder / "teacher.onnx", variant=PLAIN_VARIANT)
    quantize_dynamic(str(folder / "teacher.onnx"), str(folder / "teacher.int8.onnx"), weight_type=QuantType.QInt8)
    return make_session(folder / "teacher.int8.onnx", profile, spinning=spinning, opt_level="all"), list(info.inputs)
