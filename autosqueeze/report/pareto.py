"""Choosing from the Pareto front of (metric ↑, latency ↓) — data only, no drawing.

The front itself is computed below the report (:func:`autosqueeze.search.pareto.pareto_front`,
re-exported here with :class:`autosqueeze.search.trial_record.TrialRecord` and the study's
:class:`~autosqueeze.search.pareto.Baselines`). With the baselines, a choice never returns a trial
that one of the study's references dominates or that scores at or below the majority-class floor:
it refuses, naming the reference to deploy instead.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import UserError
from ..search.pareto import Baselines, ReferencePoint, dominates, pareto_front
from ..search.pareto import point as _point
from ..search.study_record import StudyRecord
from ..search.trial_record import TrialRecord, trial_records

__all__ = ["Baselines", "NoTrialWithinBudget", "ReferencePoint", "TrialRecord", "front_summary", "pareto_front",
           "select", "trial_records"]


class NoTrialWithinBudget(UserError, LookupError):
    """No Pareto trial meets the budget."""


def refuse_excluded(cands: list[TrialRecord], baselines: Baselines, where: str) -> NoTrialWithinBudget:
    """The refusal when every candidate ``where`` (e.g. "under 12 ms") is excluded by the baselines:
    it names the reference to deploy instead (the most accurate one that dominates every candidate above
    the floor, else the one that dominates the most accurate candidate)."""
    best = max(cands, key=lambda r: (_point(r)[0], -_point(r)[1]))
    above = [r for r in cands if not baselines.below_floor(r)]
    floor_note = "" if len(above) == len(cands) else " (the others score at or below the majority-class floor)"
    if above:
        whole = [ref for ref in sorted(baselines.refs, key=lambda ref: (-ref.metric, ref.latency_ms))
                 if all(dominates(ref.metric, ref.latency_ms, *_point(r)) for r in above)]
        if whole:
            return NoTrialWithinBudget(f"{whole[0].describe()} dominates every trial {where}{floor_note}: deploy it "
                                       f"({whole[0].deploy}) instead, or search longer")
        top = max(above, key=lambda r: (_point(r)[0], -_point(r)[1]))
        ref = baselines.dominating(top)
        assert ref is not None
        return NoTrialWithinBudget(f"every trial {where} is dominated by a reference{floor_note}; the most accurate, "
                                   f"trial {top.number}, by {ref.describe()}: deploy it ({ref.deploy}) instead, "
                                   f"or search longer")
    assert baselines.floor is not None and best.metric is not None
    return NoTrialWithinBudget(
        f"every trial {where} scores at or below the majority-class floor ({100 * baselines.floor:.2f}; "
        f"the best, trial {best.number}, {100 * best.metric:.2f}): none is worth deploying; train the teacher "
        f"longer or give the trials more recovery")


def check_exportable(r: TrialRecord, baselines: Baselines | None) -> None:
    """Refuse a trial a reference dominates or that scores at or below the floor (one line)."""
    if baselines is None:
        return
    ref = baselines.dominating(r)
    if ref is not None:
        raise NoTrialWithinBudget(
            f"trial {r.number} ({r.speedup or 0:.2f}x, {100 * (r.metric or 0):.2f}%) is dominated by {ref.describe()}: "
            f"deploy it ({ref.deploy}) instead")
    if baselines.below_floor(r):
        assert baselines.floor is not None
        raise NoTrialWithinBudget(
            f"trial {r.number} scores {100 * (r.metric or 0):.2f}, at or below the majority-class floor "
            f"({100 * baselines.floor:.2f}): it is no better than a constant; pick another trial")


def candidates(records: list[TrialRecord], keep: Callable[[TrialRecord], bool]) -> list[TrialRecord]:
    """The feasible trials with a point that ``keep`` accepts, front or not (those a refusal speaks of)."""
    return [r for r in records if r.feasible and r.metric is not None and r.latency_ms is not None and keep(r)]


def select(records: list[TrialRecord], *, latency_budget_ms: float | None = None, min_speedup: float | None = None,
           trial_number: int | None = None, baselines: Baselines | None = None) -> TrialRecord:
    """The most accurate Pareto trial within the budget, or the named trial.

    The most accurate feasible trial within a budget is always on the front, so choosing
    among the front's trials is the same as choosing among all feasible ones. With the study's
    ``baselines`` a trial a reference dominates, or one at or below the floor, is never returned.
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
                check_exportable(r, baselines)
                return r
        raise NoTrialWithinBudget(f"the study has no trial {trial_number}")

    def within(r: TrialRecord) -> bool:
        return (latency_budget_ms is None or _point(r)[1] <= latency_budget_ms) \
            and (min_speedup is None or (r.speedup or 0) >= min_speedup)

    wanted = " and ".join(([f"latency <= {latency_budget_ms} ms"] if latency_budget_ms is not None else [])
                          + ([f"speedup >= {min_speedup}x"] if min_speedup is not None else []))
    where = " and ".join(([f"under {latency_budget_ms:g} ms"] if latency_budget_ms is not None else [])
                         + ([f"at {min_speedup:g}x or faster"] if min_speedup is not None else []))
    front = pareto_front(records, baselines)
    ok = [r for r in front if within(r)]
    if ok:
        return max(ok, key=lambda r: (_point(r)[0], -_point(r)[1]))
    excluded = candidates(records, within)
    if excluded and baselines is not None:  # trials within the budget, each dominated by a reference or below the floor
        raise refuse_excluded(excluded, baselines, where or "of the study")
    if not front:
        every = candidates(records, lambda r: True)
        if not every or baselines is None:
            raise NoTrialWithinBudget("the study has no completed feasible trial yet: run `autosqueeze search` first")
        raise NoTrialWithinBudget(f"no Pareto trial meets the budget ({wanted}); "
                                  + str(refuse_excluded(every, baselines, "of the study")))
    fastest = front[0]
    raise NoTrialWithinBudget(
        f"no Pareto trial meets the budget ({wanted}); "
        f"the fastest is trial {fastest.number} at {fastest.latency_ms:.2f} ms ({fastest.speedup:.2f}x): "
        f"raise the budget or search longer"
    )


def front_summary(records: list[TrialRecord], study: StudyRecord | Mapping[str, Any]) -> str:
    """Where a study's front stands, in one phrase for a progress line: with a budget, the most
    accurate point within it; without, the fastest point within 1 point of the teacher and the
    front's size (references and floor applied)."""
    study = StudyRecord.of(study)
    baselines = Baselines.from_record(study)
    front = pareto_front(records, baselines)
    budget = study.latency_budget_ms
    size = f"front {len(front)} point{'s' if len(front) != 1 else ''}"
    if not front and any(r.feasible and r.metric is not None for r in records):
        return f"{size}: every trial is dominated by a reference or at or below the majority-class floor"
    if budget:
        ok = [r for r in front if _point(r)[1] <= budget]
        if not ok:
            return f"{size}; none within {budget:g} ms yet"
        best = max(ok, key=lambda r: (_point(r)[0], -_point(r)[1]))
        return f"{size}; best within {budget:g} ms: {_point(best)[0]:.4f} (trial {best.number}, " \
               f"{best.speedup or 0:.2f}x)"
    teacher = next((ref for ref in baselines.refs if ref.key == "teacher"), None)
    if teacher is None:
        if not front:
            return size
        top = max(front, key=lambda r: (_point(r)[0], -_point(r)[1]))
        return f"{size}; most accurate: {_point(top)[0]:.4f} (trial {top.number}, {top.speedup or 0:.2f}x)"
    near = [r for r in front if 100 * (teacher.metric - _point(r)[0]) <= 1.0 + 1e-9]
    if not near:
        return f"{size}; none within 1 point of the teacher ({teacher.metric:.4f}) yet"
    fast = min(near, key=lambda r: (_point(r)[1], r.number))
    return (f"{size}; fastest within 1 point of the teacher: {fast.speedup or 0:.2f}x at {_point(fast)[0]:.4f} "
            f"(trial {fast.number}, {100 * (_point(fast)[0] - teacher.metric):+.2f} pts)")
