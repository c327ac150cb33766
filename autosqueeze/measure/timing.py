"""The one timing kernel: rounds over any number of callables, and the ratio summary of two.

:func:`time_rounds` times every callable once per round, in the given order (``alternate``:
the order reversed every other round, so neither always runs first), after ``warmup`` untimed
rounds; it runs at least ``repeats`` rounds and ``min_time_s`` seconds, and at most 20 times
``repeats`` rounds. A callable takes the round's number (warm-up rounds count from 0, timed
rounds from 0 again), so that callables timed together can run on the same round's batch; the
order within a round is fixed, alternated or rotated, and a ``block`` can wrap groups of rounds.

:class:`Ratio` is what two callables timed in the same rounds give: the median over rounds of
the per-round ratio ``reference / candidate``, with the ratios' p10 and p90 (the spread), so
whatever both calls of a round share (machine load, clocks) cancels.

Single-model latency (:func:`autosqueeze.measure.latency.measure_latency`, ONNX Runtime's
``ort_latency``), paired timing against the teacher (:mod:`autosqueeze.measure.paired`), the
references timed together (:mod:`autosqueeze.measure.references`) and the deploy variants
(``runtimes.deploy_variants.time_sessions``) all time through here.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MAX_ROUNDS_FACTOR", "ORDERS", "REFERENCES", "Ratio", "interleaved", "paired_speedup", "summarize",
           "time_rounds"]
MAX_ROUNDS_FACTOR = 20  # at most this many times ``repeats`` rounds, whatever ``min_time_s`` asks
ORDERS = ("fixed", "alternate", "rotate")
# the three references (fp32 teacher first: the int8 ones' speedups are against it), timed by runtimes.references
REFERENCES = ("teacher_fp32", "teacher_torch_int8", "teacher_ort_int8")


def time_rounds(calls: Mapping[str, Callable[[int], Any]], *, warmup: int, repeats: int, min_time_s: float = 0.0,
                order: str = "fixed", sync: Callable[[], None] | None = None,
                block: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
                block_rounds: int = 5) -> dict[str, np.ndarray]:
    """Milliseconds per call for each of ``calls`` (same keys, one sample per timed round).

    ``warmup`` rounds call each untimed, then ``sync``; each timed round calls each once, its
    time including ``sync`` (a CUDA device's queue), until ``repeats`` rounds and ``min_time_s``
    seconds have passed (at most :data:`MAX_ROUNDS_FACTOR` × ``repeats`` rounds). ``order``:
    ``fixed`` (as given), ``alternate`` (reversed every other round) or ``rotate`` (the first
    moved one place further every round). ``block`` (e.g. pausing other work) wraps the warm-up
    rounds and then every ``block_rounds`` timed rounds.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    items: Sequence[tuple[str, Callable[[int], Any]]] = list(calls.items())

    def ordered(k: int) -> Sequence[tuple[str, Callable[[int], Any]]]:  # k: the timed round (warm-up ones < 0)
        if order == "alternate" and k % 2:
            return items[::-1]
        if order == "rotate":
            k %= len(items) or 1
            return list(items[k:]) + list(items[:k])
        return items

    wrap = block or contextlib.nullcontext
    if warmup > 0:
        with wrap():
            for r in range(warmup):
                for _, call in (ordered(r - warmup) if order == "rotate" else items):
                    call(r)
    if sync:
        sync()
    times: dict[str, list[float]] = {name: [] for name, _ in items}
    start, r = time.perf_counter(), 0

    def more() -> bool:
        return (r < repeats or time.perf_counter() - start < min_time_s) and r < MAX_ROUNDS_FACTOR * repeats

    while more():
        with wrap():
            for _ in range(block_rounds if block is not None else MAX_ROUNDS_FACTOR * repeats):
                for name, call in ordered(r):
                    t0 = time.perf_counter()
                    call(r)
                    if sync:
                        sync()
                    times[name].append((time.perf_counter() - t0) * 1e3)
                r += 1
                if not more():
                    break
    return {name: np.asarray(t) for name, t in times.items()}


@dataclass(frozen=True)
class Ratio:
    """Per-round ratios ``reference / candidate`` summarized: the median and its p10–p90 spread."""

    median: float
    p10: float
    p90: float

    @classmethod
    def of(cls, reference_ms: Sequence[float] | np.ndarray, candidate_ms: Sequence[float] | np.ndarray) -> Ratio:
        """The summary of ``reference_ms / candidate_ms``, round by round (same-round pairs)."""
        return cls.of_ratios(np.asarray(reference_ms) / np.asarray(candidate_ms))

    @classmethod
    def of_ratios(cls, ratios: Sequence[float] | np.ndarray) -> Ratio:
        """The summary of per-round ratios already divided."""
        return cls(float(np.median(ratios)), float(np.percentile(ratios, 10)), float(np.percentile(ratios, 90)))

    @classmethod
    def exact(cls, value: float) -> Ratio:
        """A ratio known without spread (e.g. two medians divided)."""
        return cls(float(value), float(value), float(value))

    def to_dict(self) -> dict[str, float]:
        return {"median": self.median, "p10": self.p10, "p90": self.p90}


def interleaved(calls: dict[str, Callable[[], Any]], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds per call for each callable, timed round-robin (one call of each per round)
    for ``rounds`` rounds after ``warmup`` untimed ones (:func:`~autosqueeze.measure.timing.time_rounds`)."""
    ms = time_rounds({name: (lambda c: (lambda _round: c()))(call) for name, call in calls.items()},
                     warmup=warmup, repeats=rounds)
    return {name: t.tolist() for name, t in ms.items()}


def paired_speedup(ref: list[float], cand: list[float]) -> dict[str, float]:
    """Median and p10/p90 over rounds of ``ref / cand`` (same-round pairs): :class:`Ratio` as a dict."""
    return Ratio.of(ref, cand).to_dict()


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
