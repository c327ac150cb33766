"""``autosqueeze bench``: time saved models on a hardware profile, in one process.

The first model is the baseline; every speedup is a ratio against it, measured in the same
run with the same threads and inputs. A path can be a folder written by ``apply`` (loaded
with :func:`autosqueeze.load`), a transformers model folder, a hub name, or ``default``.

A folder whose recipe deploys with ONNX Runtime is timed as it deploys: its ``model.onnx`` in an
ONNX Runtime session (the same thread count and inputs), not its PyTorch rebuild.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .deploy import MANIFEST, ONNX, load_compressed
from .measure import HardwareProfile, LatencySettings, LatencyStats, measure_latency, model_size


@dataclass
class BenchRow:
    name: str
    latency: LatencyStats
    speedup: float
    size: dict[str, Any]
    runtime: str = "torch"  # the runtime it was timed in (its recipe's, for a folder saved by apply)


def load_any(path: str) -> nn.Module:
    """A compressed folder, or any sequence-classification model folder / hub name."""
    if (Path(path) / MANIFEST).is_file():
        return load_compressed(path)
    from transformers import AutoModelForSequenceClassification

    from .models import check_model_folder, pickle_allowed, resolve_model

    source = resolve_model(path)
    if Path(source).is_dir():
        check_model_folder(Path(source), tokenizer=False)
    safetensors_only = None if pickle_allowed() else True  # None: whichever the folder has
    return AutoModelForSequenceClassification.from_pretrained(source, use_safetensors=safetensors_only).eval()


def saved_runtime(path: str) -> str:
    """The runtime a folder saved by ``apply`` deploys with (its recipe's profile); ``torch`` for
    anything else, or when the folder has no ``model.onnx``."""
    folder = Path(path)
    if not (folder / MANIFEST).is_file() or not (folder / ONNX).is_file():
        return "torch"
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        runtime = ((manifest.get("recipe") or {}).get("profile") or {}).get("runtime")
    except (ValueError, AttributeError):
        return "torch"  # load_compressed reports a corrupt manifest with its reason
    return "onnxruntime" if runtime == "onnxruntime" else "torch"


def time_saved(path: str, model: nn.Module, profile: HardwareProfile,
               settings: LatencySettings | None) -> tuple[LatencyStats, str]:
    """(latency, runtime) of a saved model in the runtime it deploys with."""
    if saved_runtime(path) == "onnxruntime":
        from .runtimes.ort import make_session, ort_latency

        ort_profile = dataclasses.replace(profile, runtime="onnxruntime")
        vocab = int(getattr(getattr(model, "config", None), "vocab_size", 1000))
        return ort_latency(make_session(Path(path) / ONNX, ort_profile), ort_profile, settings=settings,
                           vocab_size=vocab), "onnxruntime"
    return measure_latency(model, profile, settings=settings), "torch"


def bench(paths: list[str], profile: HardwareProfile, settings: LatencySettings | None = None) -> list[BenchRow]:
    if not paths:
        raise ValueError("give at least one model to time")
    models = [(p, load_any(p)) for p in paths]
    rows: list[BenchRow] = []
    base_ms: float | None = None
    for name, model in models:
        stats, runtime = time_saved(name, model, profile, settings)
        base_ms = base_ms or stats.median_ms
        rows.append(BenchRow(name, stats, base_ms / stats.median_ms, model_size(model).to_dict(), runtime))
    return rows
