"""One deployed model measured: dev metric, latency paired with the teacher, size — as one type.

:func:`assess` is the seam between a runtime and a measurement: it takes anything that answers
the :class:`Deployed` protocol (``autosqueeze.runtimes.deploy`` returns one: the PyTorch module
itself, or an ONNX Runtime graph and its session) and returns a :class:`Measurement`. This
module imports nothing of the runtimes: the deployment evaluates and times itself, through
:mod:`autosqueeze.measure.metrics` and :mod:`autosqueeze.measure.paired` (the one timing kernel).

:class:`Measurement` is what a trial stores (``TrialRecord``), what a recipe records
(``recipe.measured``: :meth:`Measurement.recorded`) and what ``apply`` reproduces. It is written
as a plain dict under the attribute names the first studies used (:meth:`Measurement.to_dict`)
and read back from any of them, older ones included (:meth:`Measurement.from_dict`: a missing
value is None, an unknown key is kept in ``extra`` and written back unchanged).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .latency import LatencySettings, fixed_threads
from .paired import Timing
from .size import SizeReport
from .timing import Ratio

__all__ = ["RECORDED", "Deployed", "Measurement", "assess"]
# what a recipe records of its trial's measurement (recipe.measured), by attribute name
RECORDED = ("metric", "metrics", "latency_ms", "speedup", "size")
_SIZE_FIELDS = tuple(f.name for f in dataclasses.fields(SizeReport))


class Deployed(Protocol):
    """What :func:`assess` needs of a deployed model (``autosqueeze.runtimes.Deployment`` is one)."""

    @property
    def runtime(self) -> str: ...

    def evaluate_with_stats(self, data: Any, extra: Mapping[str, Sequence[Any]] | None = None,
                            batch_size: int = 64) -> tuple[dict[str, float], dict[str, Any] | None]: ...

    def timing(self, teacher: Any, settings: LatencySettings, baseline_ms: float, inputs: Any = None, *,
               paired: bool = True) -> Timing: ...

    @property
    def size(self) -> SizeReport: ...

    @property
    def export_info(self) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class Measurement:
    """A deployed model's numbers (None: not measured). Field names are the stored attribute names."""

    runtime: str | None = None  # what it was timed and evaluated in (torch, onnxruntime)
    metric: float | None = None  # the task's main metric on dev
    metrics: dict[str, float] | None = None  # every official metric on dev (and extra splits)
    latency_ms: float | None = None  # baseline_ms / speedup
    speedup: Ratio | None = None  # teacher / model: median of the per-pair ratios, p10–p90 when paired
    paired: bool = False  # timed call by call with the teacher (the speedup's spread is known)
    latency: dict[str, Any] | None = None  # LatencyStats scaled like latency_ms, and the scale
    latency_measured: dict[str, Any] | None = None  # LatencyStats as measured
    latency_measured_ms: float | None = None
    teacher_paired_ms: float | None = None  # the teacher's median within the pairs
    baseline_ms: float | None = None  # the teacher baseline the speedup is applied to
    size: SizeReport | None = None  # bytes and stored elements, with and without embeddings
    size_pct: dict[str, float] | None = None  # total / non_embedding, % of the teacher
    exit_stats: dict[str, Any] | None = None  # early exit: layers run on dev
    onnx: dict[str, Any] | None = None  # the ONNX Runtime export's details (runtime onnxruntime)
    extra: dict[str, Any] = field(default_factory=dict)  # stored keys this type does not know

    # --- building
    @classmethod
    def of(cls, *, runtime: str | None, timing: Timing | None = None, metrics: dict[str, float] | None = None,
           main_metric: str | None = None, size: SizeReport | None = None, teacher_size: SizeReport | None = None,
           exit_stats: dict[str, Any] | None = None, onnx: dict[str, Any] | None = None,
           baseline_ms: float | None = None) -> Measurement:
        """From its parts: the timing (stated against ``baseline_ms``, default the baseline it was timed
        against), the metrics (the main one named), the size (and the teacher's, for ``size_pct``)."""
        values: dict[str, Any] = dict(runtime=runtime, exit_stats=exit_stats, onnx=onnx)
        if timing is not None:
            values.update(cls.from_dict(timing.to_result(baseline_ms)).timed())
        if metrics is not None:
            values.update(metrics=metrics, metric=metrics[main_metric] if main_metric is not None else None)
        if size is not None:
            values["size"] = size
            if teacher_size is not None:
                t = teacher_size
                values["size_pct"] = {"total": 100 * size.total_bytes / t.total_bytes,
                                      "non_embedding": 100 * size.non_embedding_bytes / t.non_embedding_bytes}
        return cls(**values)

    def timed(self) -> dict[str, Any]:
        """The timing fields alone (by field name), to build another measurement from."""
        names = ("latency_ms", "speedup", "paired", "latency", "latency_measured", "latency_measured_ms",
                 "teacher_paired_ms", "baseline_ms")
        return {n: getattr(self, n) for n in names}

    # --- reading and writing the stored form
    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Measurement:
        """From stored attributes (a trial's, ``recipe.measured``, apply's reproduced numbers), any version."""
        d = dict(values)
        known: dict[str, Any] = {}
        speedup, spread = d.pop("speedup", None), d.pop("speedup_spread", None)
        if speedup is not None:
            if isinstance(spread, Mapping) and "p10" in spread and "p90" in spread:
                known.update(speedup=Ratio(float(speedup), float(spread["p10"]), float(spread["p90"])), paired=True)
            else:
                known["speedup"] = Ratio.exact(speedup)
        elif spread is not None:
            d["speedup_spread"] = spread
        size = d.pop("size", None)
        if isinstance(size, Mapping) and all(k in size for k in _SIZE_FIELDS):
            known["size"] = SizeReport(**{k: size[k] for k in _SIZE_FIELDS})
        elif size is not None:
            d["size"] = size  # a form this version cannot read: kept as it was
        for f in dataclasses.fields(cls):
            if f.name in d and f.name not in ("speedup", "paired", "size", "extra"):
                known[f.name] = d.pop(f.name)
        return cls(**known, extra=d)

    def to_dict(self, keys: Sequence[str] | None = None) -> dict[str, Any]:
        """The stored form (the measured values only; ``keys``: only those), then ``extra``."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("paired", "extra") or value is None:
                continue
            if f.name == "speedup":
                out["speedup"] = value.median
                if self.paired:
                    out["speedup_spread"] = {"p10": value.p10, "p90": value.p90}
            elif f.name == "size":
                out["size"] = value.to_dict()
            else:
                out[f.name] = value
        out.update(self.extra)
        return out if keys is None else {k: out[k] for k in keys if k in out}

    def recorded(self) -> dict[str, Any]:
        """What a recipe records of it (``recipe.measured``)."""
        return self.to_dict(RECORDED)

    def to_result(self) -> dict[str, Any]:
        """:meth:`to_dict` (the trial attributes it fills)."""
        return self.to_dict()


def assess(deployment: Deployed, *, data: Any, main_metric: str, extra: Mapping[str, Sequence[Any]] | None = None,
           batch_size: int = 64, eval_threads: int | None = None,
           timing: Timing | Callable[[], Timing] | None = None, teacher: Any = None,
           settings: LatencySettings | None = None, baseline_ms: float | None = None, inputs: Any = None,
           paired: bool = True, teacher_size: SizeReport | None = None) -> Measurement:
    """``deployment`` measured: its dev metric (``extra`` splits too) computed in its runtime (with
    ``eval_threads`` PyTorch threads when given), then its timing — ``timing`` when already known, a
    callable to measure it now, else :meth:`Deployed.timing` against ``teacher`` and ``baseline_ms`` (a
    timing given is stated against ``baseline_ms`` when given) — and its size (against ``teacher_size``)."""
    threads = fixed_threads(eval_threads) if eval_threads is not None else None
    if threads is not None:
        with threads:
            metrics, exit_stats = deployment.evaluate_with_stats(data, extra, batch_size)
    else:
        metrics, exit_stats = deployment.evaluate_with_stats(data, extra, batch_size)
    if callable(timing):
        timing = timing()
    elif timing is None:
        if teacher is None or baseline_ms is None:
            raise ValueError("assess needs a timing, or a teacher and a baseline to time against")
        timing = deployment.timing(teacher, settings or LatencySettings(), baseline_ms, inputs, paired=paired)
    return Measurement.of(runtime=deployment.runtime, timing=timing, metrics=metrics, main_metric=main_metric,
                          size=deployment.size, teacher_size=teacher_size, exit_stats=exit_stats,
                          onnx=deployment.export_info, baseline_ms=baseline_ms)
