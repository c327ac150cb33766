"""The Pareto front of (metric ↑, latency ↓) over trial records, with the study's references — data only.

Below the report in the flow: the search picks the front's candidates for the final
fidelity (:mod:`autosqueeze.search.finalize`) and measures how the two fidelities rank them
(:func:`kendall_tau`); the report draws and tables them.

A study records three references measured like its trials (``search.objective.reference_points``):
the fp32 teacher, its PyTorch dynamic int8 and its ONNX Runtime dynamic int8 copies, and the
majority-class floor (a constant predictor). :class:`Baselines` reads them from the study's
user attributes: a trial that a reference dominates (at least as accurate and at least as fast,
strictly better in one) or that scores at or below the floor is never on the front — a user
would deploy the reference, or nothing, instead. A study whose teacher itself scores at or below
the floor (an untrained teacher: the report warns that its scores barely beat a constant) applies
neither: the front is the trials' own.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .study_record import StudyRecord
from .trial_record import TrialRecord

__all__ = ["Baselines", "ReferencePoint", "dominates", "kendall_tau", "pareto_front", "point"]

# study user attribute -> (what a user reads, how to deploy it without autosqueeze)
REFERENCE_ATTRS = {
    "teacher": ("the teacher", "the teacher's own folder, uncompressed"),
    "int8_baseline": ("the teacher's PyTorch int8 copy",
                      "torch.ao.quantization.quantize_dynamic(teacher, {torch.nn.Linear}, dtype=torch.qint8)"),
    "ort_int8_baseline": ("the teacher's ONNX Runtime int8 copy",
                          "the teacher exported to ONNX and onnxruntime.quantization.quantize_dynamic "
                          "(QuantType.QInt8)"),
}


@dataclass(frozen=True)
class ReferencePoint:
    """A model a user can deploy without any trial: a point of the front that trials must beat."""

    key: str  # the study user attribute it comes from (teacher, int8_baseline, ort_int8_baseline)
    name: str  # e.g. "the teacher's ONNX Runtime int8 copy"
    metric: float
    latency_ms: float
    speedup: float | None = None
    deploy: str = ""  # how to deploy it

    def describe(self) -> str:
        """``the teacher's ONNX Runtime int8 copy (1.69x, 88.90%)``."""
        speed = f"{self.speedup:.2f}x, " if self.speedup is not None else f"{self.latency_ms:.2f} ms, "
        return f"{self.name} ({speed}{100 * self.metric:.2f}%)"


def dominates(m1: float, l1: float, m2: float, l2: float) -> bool:
    """Whether (metric m1, latency l1) dominates (m2, l2): at least as good in both, better in one."""
    return m1 >= m2 and l1 <= l2 and (m1 > m2 or l1 < l2)


@dataclass(frozen=True)
class Baselines:
    """The study's references and its majority-class floor, as the front uses them."""

    refs: tuple[ReferencePoint, ...] = ()
    floor: float | None = None  # the main metric of always predicting the majority class (None: not recorded)
    trivial_teacher: bool = False  # the teacher itself scores at or below the floor: neither is applied

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Baselines:
        """From a study's user attributes (:meth:`from_record`)."""
        return cls.from_record(StudyRecord.from_attrs(attrs))

    @classmethod
    def from_record(cls, study: StudyRecord) -> Baselines:
        """From a study's record (the references recorded; an older study may have none)."""
        main = study.main_metric
        refs = []
        for key, (name, deploy) in REFERENCE_ATTRS.items():
            a = study.reference(key)
            metric = a.get("search_metric") if key == "teacher" else a.get("metric")
            if metric is None and main:
                metric = (a.get("search_metrics") or a.get("metrics") or {}).get(main)
            latency = a.get("latency_ms")
            if metric is None or not latency or not _finite(metric) or not _finite(latency):
                continue
            speedup = 1.0 if key == "teacher" else a.get("speedup")
            refs.append(ReferencePoint(key, name, float(metric), float(latency),
                                       None if speedup is None else float(speedup), deploy))
        raw = study.reference("majority_baseline").get("metric")
        floor = float(raw) if raw is not None and _finite(raw) else None
        teacher = next((ref for ref in refs if ref.key == "teacher"), None)
        if floor is not None and teacher is not None and teacher.metric <= floor + 1e-12:
            return cls(trivial_teacher=True)  # every score is a constant's: the report warns instead
        return cls(tuple(refs), floor)

    def dominating(self, r: TrialRecord) -> ReferencePoint | None:
        """The reference that dominates the trial (the most accurate of those that do, then the fastest); None
        when none does or the trial has no point."""
        if r.metric is None or r.latency_ms is None:
            return None
        better = [ref for ref in self.refs if dominates(ref.metric, ref.latency_ms, r.metric, r.latency_ms)]
        return max(better, key=lambda ref: (ref.metric, -ref.latency_ms), default=None)

    def below_floor(self, r: TrialRecord) -> bool:
        """Whether the trial scores at or below the majority-class floor (no better than a constant)."""
        return self.floor is not None and r.metric is not None and r.metric <= self.floor + 1e-12

    def excludes(self, r: TrialRecord) -> bool:
        """Whether the trial can never be on the front (below the floor, or a reference dominates it)."""
        return self.below_floor(r) or self.dominating(r) is not None


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def pareto_front(records: list[TrialRecord], baselines: Baselines | None = None) -> list[TrialRecord]:
    """Feasible trials not dominated in (metric higher, latency lower), by latency.

    With ``baselines`` (the study's, :meth:`Baselines.from_record`) the references are points of
    the front too: a trial one of them dominates, or one at or below the majority-class floor, is
    left out. Trials with exactly the same metric and latency (e.g. one recipe sampled twice)
    appear once, as the earliest of them.
    """
    cands = [(r, *point(r)) for r in records if r.feasible and r.metric is not None and r.latency_ms is not None
             and not (baselines is not None and baselines.excludes(r))]
    front = [(r, m, lat) for r, m, lat in cands if not any(dominates(om, olat, m, lat) for _, om, olat in cands)]
    unique: dict[tuple[float, float], TrialRecord] = {}
    for r, m, lat in sorted(front, key=lambda t: t[0].number):
        unique.setdefault((m, lat), r)
    return sorted(unique.values(), key=lambda r: (point(r)[1], r.number))


def point(r: TrialRecord) -> tuple[float, float]:
    """(metric, latency) of a record known to have both (a front member)."""
    assert r.metric is not None and r.latency_ms is not None
    return r.metric, r.latency_ms


def kendall_tau(xs: list[float], ys: list[float]) -> float | None:
    """Kendall's τ-b between two equally long lists (None with fewer than 2 pairs or no variation)."""
    n = len(xs)
    if n != len(ys) or n < 2:
        return None
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = xs[i] - xs[j], ys[i] - ys[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return None if denom == 0 else (concordant - discordant) / denom
