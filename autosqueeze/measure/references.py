"""The three references every result is compared with, timed interleaved in one process.

The fp32 teacher in PyTorch, its PyTorch dynamic int8 (``quantize_dynamic``) and its ONNX
Runtime dynamic int8 (what a user deploys without autosqueeze) are called round-robin, one
call of each per round, together with any candidates; a speedup is the median over rounds of
the per-round ratio reference / candidate (:func:`paired_speedup`), with its p10–p90, so what
both calls of a round share (machine load, clocks) cancels. The ONNX Runtime session runs
with spinning off (its idle pool threads would otherwise steal the next PyTorch call's cores).

Used by the headline study (its reference stage) and the timing-agreement study; a search
records the same three points through its trial path (``search.objective.reference_points``).
"""
from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .latency import HardwareProfile, fixed_threads, synthetic_inputs

__all__ = ["REFERENCES", "interleaved", "paired_speedup", "reference_calls", "summarize", "time_references",
           "torch_int8"]
REFERENCES = ("teacher_fp32", "teacher_torch_int8", "teacher_ort_int8")


def interleaved(calls: dict[str, Callable[[], Any]], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds per call for each callable, timed round-robin (one call of each per round)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(warmup + rounds):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            if r >= warmup:
                times[name].append(1000 * (time.perf_counter() - t0))
    return times


def paired_speedup(ref: list[float], cand: list[float]) -> dict[str, float]:
    """Median and p10/p90 over rounds of ``ref / cand`` (same-round pairs)."""
    ratios = np.asarray(ref) / np.asarray(cand)
    return {"median": float(np.median(ratios)), "p10": float(np.percentile(ratios, 10)),
            "p90": float(np.percentile(ratios, 90))}


def summarize(times: dict[str, list[float]], candidates: list[str] | tuple[str, ...] = (),
              refs: tuple[str, ...] = REFERENCES) -> dict[str, Any]:
    """Per name: median/p10/p90 ms; each candidate's speedup against each reference present
    (``speedup_vs_fp32``, ``speedup_vs_torch_int8``, ``speedup_vs_ort_int8``), and the int8
    references' speedup against the fp32 teacher."""
    out: dict[str, Any] = {name: {"median_ms": float(np.median(t)), "p10_ms": float(np.percentile(t, 10)),
                                  "p90_ms": float(np.percentile(t, 90))} for name, t in times.items()}
    present = [r for r in refs if r in times]
    for name in candidates:
        for ref in present:
            out[name][f"speedup_vs_{ref.replace('teacher_', '')}"] = paired_speedup(times[ref], times[name])
    if refs and refs[0] in times:
        for ref in present[1:]:
            out[ref][f"speedup_vs_{refs[0].replace('teacher_', '')}"] = paired_speedup(times[refs[0]], times[ref])
    return out


def _vocab(model: nn.Module) -> int:
    return int(getattr(getattr(model, "config", None), "vocab_size", 1000))


def torch_int8(teacher: nn.Module) -> nn.Module:
    """A copy of ``teacher`` with PyTorch's dynamic int8 Linear layers (the ``quantize_dynamic`` method)."""
    from ..arch import get_adapter
    from ..methods import MethodContext, quantize_dynamic

    return quantize_dynamic.apply(copy.deepcopy(teacher), quantize_dynamic.QuantizeDynamicConfig(),
                                  MethodContext(adapter=get_adapter(teacher)))


@contextmanager
def reference_calls(teacher: nn.Module, profile: HardwareProfile,
                    inputs: dict[str, torch.Tensor] | None = None) -> Iterator[dict[str, Callable[[], Any]]]:
    """The three references as zero-argument calls on one batch (``inputs``, else a synthetic
    batch of the profile's shape), for :func:`interleaved` inside ``fixed_threads`` and
    ``torch.inference_mode``. The ONNX Runtime one needs the onnx extra."""
    from ..runtimes.ort import ort_dynamic_int8_session

    teacher.eval()
    batch = inputs if inputs is not None else synthetic_inputs(profile, _vocab(teacher))
    int8 = torch_int8(teacher)
    with tempfile.TemporaryDirectory(prefix="autosqueeze-refs-") as tmp:
        sess, names = ort_dynamic_int8_session(teacher, Path(tmp), profile)
        feed = {n: batch[n].numpy() for n in names if n in batch}
        for n in names:
            if n not in feed:  # token_type_ids
                feed[n] = np.zeros_like(batch["input_ids"].numpy())
        yield {"teacher_fp32": lambda: teacher(**batch), "teacher_torch_int8": lambda: int8(**batch),
               "teacher_ort_int8": lambda: sess.run(None, feed)}


def time_references(teacher: nn.Module, profile: HardwareProfile, rounds: int,
                    candidates: dict[str, nn.Module] | None = None) -> dict[str, Any]:
    """:func:`summarize` of the references and ``candidates`` (PyTorch models), timed interleaved
    for ``rounds`` rounds (after ``max(5, rounds // 20)`` warm-up rounds) on one synthetic batch."""
    batch = synthetic_inputs(profile, _vocab(teacher))
    with reference_calls(teacher, profile, batch) as calls, fixed_threads(profile.threads), torch.inference_mode():
        for name, model in (candidates or {}).items():
            calls[name] = (lambda m: (lambda: m(**batch)))(model.eval())
        times = interleaved(calls, rounds, warmup=max(5, rounds // 20))
    out = summarize(times, list(candidates or {}))
    out["rounds"] = rounds
    return out
