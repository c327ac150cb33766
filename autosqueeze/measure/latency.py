"""Latency of a model on a hardware profile: warm-up, many repeats, median and spread.

Knows nothing of Optuna. Threads are fixed for the measurement and restored after. A guard
waits (briefly) when the machine is busy and flags the result ``noisy`` when the spread is
large, so callers can re-measure or warn; speedups are always computed as ratios against a
baseline measured in the same process.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..capabilities import RealInputs
from .timing import time_rounds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HardwareProfile:
    """Where and how a model is timed: device, threads, batch and sequence shape, runtime."""

    device: str = "cpu"
    threads: int = 2
    batch_size: int = 1
    seq_len: int = 128
    runtime: str = "torch"

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"hardware.device must be 'cpu' or 'cuda', got {self.device!r}")
        for name in ("threads", "batch_size", "seq_len"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"hardware.{name} must be >= 1, got {getattr(self, name)}")
        if self.runtime not in ("torch", "onnxruntime"):
            raise ValueError(f"hardware.runtime must be 'torch' or 'onnxruntime', got {self.runtime!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LatencySettings:
    """How carefully to time: warm-up calls, minimum repeats and seconds, busy-machine wait."""

    warmup: int = 10
    repeats: int = 50
    min_time_s: float = 1.0
    idle_wait_s: float = 10.0

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.repeats < 3 or self.min_time_s < 0 or self.idle_wait_s < 0:
            raise ValueError(f"invalid latency settings {self}: need warmup >= 0, repeats >= 3, times >= 0")


@dataclass(frozen=True)
class LatencyStats:
    """Per-batch latency in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    repeats: int
    warmup: int
    threads: int
    noisy: bool

    @property
    def spread(self) -> float:
        """Relative spread (p90 − p10) / median."""
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "spread": self.spread}


@contextlib.contextmanager
def fixed_threads(n: int) -> Iterator[None]:
    """Run with exactly ``n`` intra-op threads, restoring the previous count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def needs_real_inputs(model: Any) -> bool:
    """Whether the model's cost depends on its inputs (a :class:`~autosqueeze.capabilities.RealInputs`
    model: early exit declares it): time and evaluate it on real dev batches at the profile's batch size,
    not on synthetic full-length ones. The one test for it (measure, search, deploy, runtimes and the
    methods all ask here)."""
    return isinstance(model, RealInputs) and bool(model.autosqueeze_needs_real_inputs)


def synthetic_inputs(profile: HardwareProfile, vocab_size: int = 1000, seed: int = 0) -> dict[str, torch.Tensor]:
    """Full-length random token ids of the profile's shape (no padding: worst case)."""
    g = torch.Generator().manual_seed(seed)
    shape = (profile.batch_size, profile.seq_len)
    ids = torch.randint(1000 if vocab_size > 2000 else 0, vocab_size, shape, generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones(shape, dtype=torch.long)}


def wait_until_idle(threads: int, max_wait_s: float = 10.0) -> bool:
    """Wait while the 1-minute load average says other work is using our cores."""
    if not hasattr(os, "getloadavg"):
        return True
    cores = os.cpu_count() or 1
    deadline = time.monotonic() + max_wait_s
    while os.getloadavg()[0] > cores + 0.5 and time.monotonic() < deadline:
        time.sleep(1.0)
    idle = os.getloadavg()[0] <= cores + 0.5
    if not idle:
        log.warning("machine busy (load %.1f on %d cores): latency may be inflated", os.getloadavg()[0], cores)
    return idle


def stats_from_samples(samples: np.ndarray, *, warmup: int, threads: int, noisy_spread: float = 0.5) -> LatencyStats:
    med = float(np.median(samples))
    p10, p90 = (float(x) for x in np.percentile(samples, [10, 90]))
    noisy = med > 0 and (p90 - p10) / med > noisy_spread
    return LatencyStats(med, p10, p90, float(samples.mean()), float(samples.std()), len(samples), warmup, threads,
                        noisy)


def latency_of(call: Callable[[], Any], *, threads: int, settings: LatencySettings,
               sync: Callable[[], None] | None = None) -> LatencyStats:
    """The latency of ``call`` alone: after waiting (briefly) for an idle machine, timed by
    :func:`autosqueeze.measure.timing.time_rounds` with ``settings``; a noisy result (large spread)
    is measured once more with twice the repeats and seconds."""
    st = settings
    wait_until_idle(threads, st.idle_wait_s)

    def timed(repeats: int, min_time_s: float) -> LatencyStats:
        ms = time_rounds({"call": lambda _round: call()}, warmup=st.warmup, repeats=repeats, min_time_s=min_time_s,
                         sync=sync)["call"]
        return stats_from_samples(ms, warmup=st.warmup, threads=threads)

    stats = timed(st.repeats, st.min_time_s)
    if stats.noisy:
        log.info("latency spread %.0f%%: measuring again", 100 * stats.spread)
        stats = timed(2 * st.repeats, 2 * st.min_time_s)
    return stats


def measure_latency(
    model: nn.Module | Callable[..., Any],
    profile: HardwareProfile,
    inputs: dict[str, torch.Tensor] | list[dict[str, torch.Tensor]] | None = None,
    *,
    settings: LatencySettings | None = None,
    vocab_size: int | None = None,
) -> LatencyStats:
    """Median latency (ms per batch) of ``model`` on ``profile``.

    ``inputs`` defaults to synthetic full-length batches of the profile's shape; pass a list
    of real batches (cycled) when the cost depends on the data (early exit). A noisy result
    (large spread) is re-measured once with more repeats.
    """
    st = settings or LatencySettings()
    if vocab_size is None:
        vocab_size = int(getattr(getattr(model, "config", None), "vocab_size", 1000))
    batches = inputs if isinstance(inputs, list) else [inputs or synthetic_inputs(profile, vocab_size)]
    device = torch.device(profile.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("hardware profile asks for cuda, but no CUDA device is available")
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    if isinstance(model, nn.Module):
        model.eval()
    counter = iter(range(1 << 62))

    def call() -> None:
        model(**batches[next(counter) % len(batches)])

    with fixed_threads(profile.threads), torch.inference_mode():
        return latency_of(call, threads=profile.threads, settings=st, sync=sync)
