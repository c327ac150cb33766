"""Trial records and the Pareto front of (metric ↑, latency ↓) — data only, no drawing."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna

from ..errors import UserError
from ..recipe import Recipe


@dataclass(frozen=True)
class TrialRecord:
    number: int
    state: str
    status: str  # complete | over_budget | failed | running
    metric: float | None
    latency_ms: float | None
    speedup: float | None
    methods: tuple[str, ...]
    feasible: bool
    recipe: dict[str, Any] | None
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return " + ".join(self.methods) or "teacher (no compression)"

    @property
    def recipe_summary(self) -> str:
        """Steps with their parameters in one line, e.g. ``drop_layers(keep=3) + quantize_dynamic()``."""
        steps = (self.recipe or {}).get("steps") or []
        parts = []
        for s in steps:
            params = ", ".join(f"{k}={v}" for k, v in (s.get("params") or {}).items())
            parts.append(f"{s.get('method')}({params})")
        return " + ".join(parts) or "(no compression)"

    def to_recipe(self) -> Recipe:
        if self.recipe is None:
            raise ValueError(f"trial {self.number} has no recipe")
        return Recipe.from_dict(self.recipe, f"trial {self.number}")


def trial_records(study: optuna.Study) -> list[TrialRecord]:
    """One record per trial, including failed and over-budget ones."""
    out = []
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        constraints = [v for k, v in t.system_attrs.items() if k.startswith("constraints")]
        flat = [c for v in constraints for c in (v if isinstance(v, (list, tuple)) else [v])]
        complete = t.state == optuna.trial.TrialState.COMPLETE
        status = ua.get("status", "failed" if t.state == optuna.trial.TrialState.FAIL else t.state.name.lower())
        out.append(TrialRecord(
            number=t.number, state=t.state.name, status=status,
            metric=ua.get("metric") if complete else None,
            latency_ms=ua.get("latency_ms"), speedup=ua.get("speedup"),
            methods=tuple(ua.get("methods", ())),
            feasible=complete and status == "complete" and all(c <= 0 for c in flat),
            recipe=ua.get("recipe"), attrs=dict(ua),
        ))
    return out


def pareto_front(records: list[TrialRecord]) -> list[TrialRecord]:
    """Feasible trials not dominated in (metric higher, latency lower), by latency.

    Trials with exactly the same metric and latency (e.g. one recipe sampled twice) appear
    once, as the earliest of them.
    """
    cands = [(r, *_point(r)) for r in records if r.feasible and r.metric is not None and r.latency_ms is not None]
    front = [(r, m, lat) for r, m, lat in cands if not any(
        (om >= m and olat <= lat) and (om > m or olat < lat) for _, om, olat in cands)]
    unique: dict[tuple[float, float], TrialRecord] = {}
    for r, m, lat in sorted(front, key=lambda t: t[0].number):
        unique.setdefault((m, lat), r)
    return sorted(unique.values(), key=lambda r: (_point(r)[1], r.number))


def _point(r: TrialRecord) -> tuple[float, float]:
    """(metric, latency) of a record known to have both (a front member)."""
    assert r.metric is not None and r.latency_ms is not None
    return r.metric, r.latency_ms


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
