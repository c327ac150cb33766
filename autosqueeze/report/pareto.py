"""Choosing from the Pareto front of (metric ↑, latency ↓) — data only, no drawing.

The front itself is computed below the report (:func:`autosqueeze.search.pareto.pareto_front`,
re-exported here with :class:`autosqueeze.search.trial_record.TrialRecord`).
"""
from __future__ import annotations

from ..errors import UserError
from ..search.pareto import pareto_front
from ..search.pareto import point as _point
from ..search.trial_record import TrialRecord, trial_records

__all__ = ["NoTrialWithinBudget", "TrialRecord", "pareto_front", "select", "trial_records"]


class NoTrialWithinBudget(UserError, LookupError):
    """No Pareto trial meets the budget."""


def select(records: list[TrialRecord], *, latency_budget_ms: float | None = None, min_speedup: float | None = None,
           trial_number: int | None = None) -> TrialRecord:
    """The most accurate Pareto trial within the budget, or the named trial.

    The most accurate feasible trial within a budget is always on the front, so choosing
    among the front's trials is the same as choosing among all feasible ones.
    """
    if trial_number is not None and (latency_budget_ms is not None or min_speedup is not None):
        raise NoTrialWithinBudget("give either a trial number or a budget (latency / speedup), not both")
    for name, value in (("latency budget", latency_budget_ms), ("minimum speedup", min_speedup)):
        if value is not None and not value > 0:
            raise NoTrialWithinBudget(f"the {name} must be a positive number, got {value}")
    if trial_number is not None:
        for r in records:
            if r.number == trial_number:
                if r.recipe is None or r.status != "complete" or r.state != "COMPLETE":
                    raise NoTrialWithinBudget(f"trial {trial_number} has no finished model to export "
                                              f"(status {r.status}); pick a completed trial from the report")
                return r
        raise NoTrialWithinBudget(f"the study has no trial {trial_number}")
    front = pareto_front(records)
    if not front:
        raise NoTrialWithinBudget("the study has no completed feasible trial yet: run `autosqueeze search` first")
    ok = [r for r in front
          if (latency_budget_ms is None or _point(r)[1] <= latency_budget_ms)
          and (min_speedup is None or (r.speedup or 0) >= min_speedup)]
    if not ok:
        fastest = front[0]
        wanted = " and ".join(([f"latency <= {latency_budget_ms} ms"] if latency_budget_ms is not None else [])
                              + ([f"speedup >= {min_speedup}x"] if min_speedup is not None else []))
        raise NoTrialWithinBudget(
            f"no Pareto trial meets the budget ({wanted}); "
            f"the fastest is trial {fastest.number} at {fastest.latency_ms:.2f} ms ({fastest.speedup:.2f}x): "
            f"raise the budget or search longer"
        )
    return max(ok, key=lambda r: (_point(r)[0], -_point(r)[1]))
