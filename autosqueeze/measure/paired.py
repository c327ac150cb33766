"""Paired timing: a candidate and the teacher timed call by call, alternately, on the same inputs.

A latency measured on a machine whose load changes (other work, a neighbour worker, turbo
and thermal states) moves by as much as 2x from one second to the next. Timing the
candidate alone and dividing by a teacher latency measured minutes earlier turns that into
fake speedups (the uncompressed teacher itself came out at 0.5x or 1.9x on this busy
2-core machine). Alternating the two models call by call and taking the median of the
per-pair ratios cancels whatever both calls of a pair share, which is nearly all of it.

:class:`Timing` is what a trial stores: the paired ``speedup``, ``latency_ms`` — the speedup
applied to the session's teacher baseline, ``baseline_ms / speedup``, which on a quiet
machine equals the candidate's own median — and the raw numbers. For early exit (timed on
real dev sentences, shorter than the profile's sequence length) the teacher is timed on
the same sentences, so the ratio compares like with like (:func:`timing_inputs`).

Used alike by the search (every trial), ``apply`` and the studies: :func:`baseline_settings`
is how carefully the teacher baseline is timed, :func:`needs_real_inputs` the one test for a
model whose cost depends on its inputs. This module times callables only: a runtime supplies
the candidate (``Deployment.timing`` of :func:`autosqueeze.runtimes.deploy`: the model itself for
PyTorch, the exported graph's session for ONNX Runtime), always paired with the same fp32
PyTorch teacher, so speedups of both runtimes are on one scale.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import TaskData
from .latency import (
    HardwareProfile,
    LatencySettings,
    LatencyStats,
    fixed_threads,
    needs_real_inputs,
    stats_from_samples,
    synthetic_inputs,
    wait_until_idle,
)
from .timing import Ratio, time_rounds

__all__ = ["Ratio", "Timing", "baseline_settings", "needs_real_inputs", "paired_latency", "paired_ratios",
           "paired_timing", "timing_inputs"]
REAL_BATCHES = 200  # at most this many dev batches time a data-dependent model


def timing_inputs(model: Any, data: TaskData, batch_size: int) -> list[dict[str, torch.Tensor]] | None:
    """Real dev batches (labels dropped) for a model that :func:`needs_real_inputs`, else None
    (the timers then use synthetic batches of the profile's shape)."""
    if not needs_real_inputs(model):
        return None
    return [{k: v for k, v in b.items() if k != "labels"}
            for b in data.eval_batches(batch_size=batch_size)][:REAL_BATCHES]


def baseline_settings(settings: LatencySettings) -> LatencySettings:
    """How the teacher baseline is timed: twice the repeats and seconds (every speedup divides by it)."""
    return LatencySettings(settings.warmup, 2 * settings.repeats, 2 * settings.min_time_s, settings.idle_wait_s)


@dataclass(frozen=True)
class Timing:
    """One candidate's latency, paired with the teacher's (see the module docstring)."""

    stats: LatencyStats  # the candidate, as measured
    speedup: float  # median over pairs of teacher / candidate
    latency_ms: float  # baseline_ms / speedup
    teacher_ms: float  # the teacher's median within the pairs
    speedup_p10: float | None = None  # p10 / p90 of the per-pair ratios (None: not timed in pairs)
    speedup_p90: float | None = None
    baseline_ms: float | None = None  # the teacher baseline: latency_ms = baseline_ms / speedup

    def to_result(self, baseline_ms: float | None = None) -> dict[str, Any]:
        """Trial attributes: ``latency`` holds the stats scaled like ``latency_ms``,
        ``latency_measured`` the raw ones; ``speedup_spread`` the p10–p90 of the pair ratios.
        ``baseline_ms``: default the one it was timed against."""
        if baseline_ms is None:
            baseline_ms = self.baseline_ms
        raw = self.stats.to_dict()
        factor = self.latency_ms / self.stats.median_ms
        scaled = {k: (v * factor if k.endswith("_ms") else v) for k, v in raw.items()}
        out = {"latency": {**scaled, "scale": factor}, "latency_ms": self.latency_ms, "speedup": self.speedup,
               "latency_measured": raw, "latency_measured_ms": self.stats.median_ms,
               "teacher_paired_ms": self.teacher_ms, "baseline_ms": baseline_ms}
        if self.speedup_p10 is not None and self.speedup_p90 is not None:
            out["speedup_spread"] = {"p10": self.speedup_p10, "p90": self.speedup_p90}
        return out

    @classmethod
    def paired(cls, stats: LatencyStats, teacher_stats: LatencyStats, speedup: Ratio, baseline_ms: float) -> Timing:
        """From :func:`paired_latency`'s result: the speedup's median and spread, ``baseline_ms / speedup``."""
        return cls(stats, speedup.median, baseline_ms / speedup.median, teacher_stats.median_ms,
                   speedup.p10, speedup.p90, baseline_ms)

    @classmethod
    def unpaired(cls, stats: LatencyStats, baseline_ms: float) -> Timing:
        """A candidate timed alone: the speedup is ``baseline_ms`` over its own median (no spread)."""
        return cls(stats, baseline_ms / stats.median_ms, stats.median_ms, baseline_ms, baseline_ms=baseline_ms)


def paired_latency(candidate: nn.Module | Callable[..., Any], teacher: nn.Module, profile: HardwareProfile,
                   settings: LatencySettings | None = None,
                   inputs: list[dict[str, torch.Tensor]] | None = None) -> tuple[LatencyStats, LatencyStats, Ratio]:
    """(candidate stats, teacher stats, the per-pair ratios teacher / candidate summarized: their
    median, p10 and p90); see :func:`paired_ratios`."""
    cand, teach, ratios = paired_ratios(candidate, teacher, profile, settings, inputs)
    return cand, teach, Ratio.of_ratios(ratios)


def paired_ratios(candidate: nn.Module | Callable[..., Any], teacher: nn.Module, profile: HardwareProfile,
                  settings: LatencySettings | None = None, inputs: list[dict[str, torch.Tensor]] | None = None,
                  ) -> tuple[LatencyStats, LatencyStats, np.ndarray]:
    """(candidate stats, teacher stats, every pair's ratio teacher / candidate).

    Each pair runs both models on the same batch, the first one alternating from pair to
    pair; ``settings`` give the warm-up calls, the minimum pairs and seconds. ``inputs``:
    real batches (cycled), else full-length synthetic ones of the profile's shape.
    ``candidate`` is a PyTorch model or any callable taking the batch as keyword tensors (an
    ONNX Runtime session wrapped by :class:`autosqueeze.runtimes.ort.OrtRunner`, created with
    spinning off so that its idle threads do not steal the teacher's cores).
    """
    st = settings or LatencySettings()
    vocab = int(getattr(getattr(teacher, "config", None), "vocab_size", 1000))
    device = torch.device(profile.device)
    batches = [{k: v.to(device) for k, v in b.items()} for b in (inputs or [synthetic_inputs(profile, vocab)])]
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    if isinstance(candidate, nn.Module):
        candidate.eval()
    teacher.eval()
    pair = {"candidate": lambda r: candidate(**batches[r % len(batches)]),
            "teacher": lambda r: teacher(**batches[r % len(batches)])}
    with fixed_threads(profile.threads), torch.inference_mode():
        wait_until_idle(profile.threads, st.idle_wait_s)
        ms = time_rounds(pair, warmup=st.warmup, repeats=st.repeats, min_time_s=st.min_time_s, order="alternate",
                         sync=sync)
    c_arr, t_arr = ms["candidate"], ms["teacher"]
    return (stats_from_samples(c_arr, warmup=st.warmup, threads=profile.threads),
            stats_from_samples(t_arr, warmup=st.warmup, threads=profile.threads), t_arr / c_arr)


def paired_timing(candidate: nn.Module | Callable[..., Any], teacher: nn.Module, profile: HardwareProfile,
                  settings: LatencySettings, baseline_ms: float,
                  inputs: list[dict[str, torch.Tensor]] | None = None) -> Timing:
    """The :class:`Timing` of ``candidate`` (a model, or what a runtime deploys it as: any callable
    taking the batch as keyword tensors) paired call by call with the fp32 PyTorch ``teacher``,
    against ``baseline_ms`` (the teacher's latency measured once for the study or in this process)."""
    return Timing.paired(*paired_latency(candidate, teacher, profile, settings, inputs), baseline_ms)
