"""``autosqueeze bench``: time saved models on a hardware profile, in one process.

The first model is the baseline; every speedup is a ratio against it, measured in the same
run with the same threads and inputs. A path can be a folder written by ``apply`` (loaded
with :func:`autosqueeze.load`), a transformers model folder, a hub name, or ``default``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .deploy import MANIFEST, load_compressed
from .measure import HardwareProfile, LatencySettings, LatencyStats, measure_latency, model_size


@dataclass
class BenchRow:
    name: str
    latency: LatencyStats
    speedup: float
    size: dict[str, Any]


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


def bench(paths: list[str], profile: HardwareProfile, settings: LatencySettings | None = None) -> list[BenchRow]:
    if not paths:
        raise ValueError("give at least one model to time")
    models = [(p, load_any(p)) for p in paths]
    rows: list[BenchRow] = []
    base_ms: float | None = None
    for name, model in models:
        stats = measure_latency(model, profile, settings=settings)
        base_ms = base_ms or stats.median_ms
        rows.append(BenchRow(name, stats, base_ms / stats.median_ms, model_size(model).to_dict()))
    return rows
