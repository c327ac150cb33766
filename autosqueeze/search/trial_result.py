"""What evaluating one recipe gives (``search.objective.evaluate_recipe``), as one type.

A :class:`TrialResult` is how the trial ended (``status``), what was measured (a
:class:`~autosqueeze.measure.assessment.Measurement`: the probe's timing alone for a trial over
the latency budget, the dev metric on the early stopper's slice for one stopped early, everything
for a complete one), the seconds it took and the early stopper's record. :meth:`TrialResult.to_dict`
is the attributes a trial stores (``TrialRecord.with_result``), under their stored names;
:meth:`TrialResult.from_dict` reads them back (an earlier trial's result reused for a repeated recipe).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..measure.assessment import Measurement

__all__ = ["TrialResult"]
_OWN = ("status", "probe_s", "trial_s", "early_stop", "stopped_at")  # stored beside the measurement's attributes


@dataclass(frozen=True)
class TrialResult:
    status: str  # complete | over_budget | stopped_early
    measurement: Measurement
    probe_s: float | None = None  # seconds to build and time the structure
    trial_s: float | None = None  # seconds for the whole trial
    early_stop: list[dict[str, Any]] | None = None  # the early stopper's checks
    stopped_at: dict[str, Any] | None = None  # the check that stopped it (status stopped_early)

    # --- what is read most
    @property
    def metric(self) -> float | None:
        """The task's main metric on dev (on the stopper's dev slice when stopped early; None over budget)."""
        return self.measurement.metric

    @property
    def latency_ms(self) -> float | None:
        return self.measurement.latency_ms

    @property
    def speedup(self) -> float | None:
        """The speedup's median (paired with the teacher)."""
        return None if self.measurement.speedup is None else self.measurement.speedup.median

    # --- the stored form
    def to_dict(self) -> dict[str, Any]:
        """The attributes a trial stores: the measurement's, then the trial's own (those it holds)."""
        own = {name: getattr(self, name) for name in _OWN}
        return {**self.measurement.to_dict(), **{k: v for k, v in own.items() if v is not None}}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrialResult:
        """From a trial's stored attributes (unknown ones are kept in the measurement's ``extra``)."""
        rest = {k: v for k, v in values.items() if k not in _OWN}
        return cls(status=str(values.get("status") or ""), measurement=Measurement.from_dict(rest),
                   **{k: values.get(k) for k in _OWN[1:]})
