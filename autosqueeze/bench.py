"""``autosqueeze bench``: time saved models on a hardware profile, in one process.

A folder written by ``apply`` is timed the way the search and ``apply`` time a candidate: call
by call, alternately with its teacher (fp32 PyTorch) on the same inputs, and its speedup is the
median of the per-pair ratios teacher / model, with their p10–p90 spread
(:mod:`autosqueeze.measure.paired`). The teacher is the folder's own: ``--teacher`` when given,
else the cached teacher whose weights hash the recipe records, else the fp32 model the
manifest's ``teacher_config`` describes (the same structure with untrained weights: an fp32
dense model costs the same whatever its weights). A path without a teacher (a transformers
model folder, a hub name, ``default``) is timed alone, as before: ``unpaired: teacher not
found``, its speedup a ratio of medians against the first model.

A folder whose recipe deploys with ONNX Runtime is timed as it deploys: its ``model.onnx`` in an
ONNX Runtime session (the same thread count and inputs), not its PyTorch rebuild.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .artifact import MANIFEST, load_compressed, read_manifest, teacher_structure
from .measure import HardwareProfile, LatencySettings, LatencyStats, model_size
from .measure.paired import baseline_settings
from .runtimes.deployment import deploy, deploy_saved
from .runtimes.deployment import saved_runtime as folder_runtime

log = logging.getLogger(__name__)
UNPAIRED = "unpaired: teacher not found"


@dataclass
class BenchRow:
    name: str
    latency: LatencyStats  # the model as measured (within the pairs when paired)
    speedup: float  # paired: median per-pair ratio teacher / model; unpaired: the first model's median / this one's
    size: dict[str, Any]
    runtime: str = "torch"  # the runtime it was timed in (its recipe's, for a folder saved by apply)
    reference: str = UNPAIRED  # what the speedup compares with
    speedup_p10: float | None = None  # p10 / p90 of the per-pair ratios (None: unpaired)
    speedup_p90: float | None = None
    teacher_ms: float | None = None  # the teacher timed alone in this process (paired rows)
    latency_ms: float | None = None  # teacher_ms / speedup: the latency as search and apply state it

    @property
    def paired(self) -> bool:
        return self.speedup_p10 is not None


@dataclass
class Reference:
    """The teacher a saved folder is paired with, and its baseline (timed once, on first use)."""

    model: nn.Module
    label: str
    baseline: LatencyStats | None = None


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
    """The runtime a folder saved by ``apply`` deploys with (its recipe's profile, when the folder holds
    what that runtime deploys from: ``model.onnx`` for ONNX Runtime); ``torch`` for anything else."""
    folder = Path(path)
    if not (folder / MANIFEST).is_file():
        return "torch"
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        runtime = ((manifest.get("recipe") or {}).get("profile") or {}).get("runtime")
    except (ValueError, AttributeError):
        return "torch"  # load_compressed reports a corrupt manifest with its reason
    return folder_runtime(folder, runtime if isinstance(runtime, str) else None)


def time_saved(path: str, model: nn.Module, profile: HardwareProfile,
               settings: LatencySettings | None) -> tuple[LatencyStats, str]:
    """(latency, runtime) of a saved model in the runtime it deploys with."""
    with deploy_saved(path, model, profile, saved_runtime(path)) as deployment:
        return deployment.latency(settings), deployment.runtime


def find_reference(path: str, teacher_dir: str | None = None) -> tuple[str, Reference] | None:
    """(cache key, the teacher to pair a folder saved by ``apply`` with), or None for any other path
    (see the module docstring for the order: ``teacher_dir``, the cache, the manifest's config)."""
    from .teacher import cached_teacher_path, load_teacher

    folder = Path(path)
    if not (folder / MANIFEST).is_file():
        return None
    manifest = read_manifest(folder)
    if teacher_dir:
        key = str(Path(teacher_dir).resolve())
        return key, Reference(load_teacher(teacher_dir).model.eval(), f"teacher {teacher_dir}")
    cached = cached_teacher_path(manifest["recipe"].teacher.get("weights_hash"))
    if cached is not None:
        return str(cached), Reference(load_teacher(cached).model.eval(), "teacher (cache)")
    tc = manifest["teacher_config"]
    key = json.dumps(tc, sort_keys=True, default=str)
    try:
        model = teacher_structure(tc)
    except (ValueError, KeyError, TypeError) as err:
        log.warning("%s: no teacher to pair with (%s); timing it alone", path, err)
        return None
    return key, Reference(model, "teacher structure (manifest config, untrained weights)")


def bench(paths: list[str], profile: HardwareProfile, settings: LatencySettings | None = None, *,
          teacher_dir: str | None = None) -> list[BenchRow]:
    """One row per path, in order: a folder saved by ``apply`` paired with its teacher, anything
    else timed alone (speedup against the first path's median)."""
    if not paths:
        raise ValueError("give at least one model to time")
    st = settings or LatencySettings()
    models = [(p, load_any(p)) for p in paths]
    refs: dict[str, Reference] = {}
    rows: list[BenchRow] = []
    first_ms: float | None = None
    for name, model in models:
        found = find_reference(name, teacher_dir)
        runtime = saved_runtime(name)
        size = model_size(model).to_dict()
        if found is None:
            stats, runtime = time_saved(name, model, profile, st)
            first_ms = first_ms or stats.median_ms
            rows.append(BenchRow(name, stats, first_ms / stats.median_ms, size, runtime))
            continue
        ref = refs.setdefault(*found)
        if ref.baseline is None:  # as apply times it: alone, twice the repeats, fp32 PyTorch
            ref.baseline = deploy(ref.model, None, profile, runtime="torch").latency(baseline_settings(st))
        with deploy_saved(name, model, profile, runtime) as deployment:
            timing = deployment.timing(ref.model, st, ref.baseline.median_ms)
        first_ms = first_ms or timing.stats.median_ms
        rows.append(BenchRow(name, timing.stats, timing.speedup, size, runtime, f"paired: {ref.label}",
                             timing.speedup_p10, timing.speedup_p90, ref.baseline.median_ms, timing.latency_ms))
    return rows
