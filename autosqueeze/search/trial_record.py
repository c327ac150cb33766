"""What one trial stores, as one type: written by the objective, read by report, CLI and export.

A trial keeps its results as Optuna user attributes; :class:`TrialRecord` has one field per
attribute, under the attribute's own name (the names are those of the first studies, so every
study on disk still reads). :meth:`TrialRecord.write` stores a record on a running trial,
:meth:`TrialRecord.from_trial` reads one back from a finished (frozen) trial — tolerant of
studies written before an attribute existed (it is then None) and of attributes this version
does not know (kept in ``extra`` and written back unchanged).

Besides the attributes a record says where the trial stands: its ``number``, Optuna ``state``
and whether it is ``feasible`` (complete, status ``complete``, every constraint <= 0). The
``metric`` of a trial counts only once it is COMPLETE: :meth:`from_trial` leaves it None
otherwise. ``fidelity`` and ``search`` are set on the final records of a finalized study
(report/fidelity.py): ``"final"`` and the trial's search-time numbers.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    from ..measure.assessment import Measurement
    from ..recipe import Recipe

__all__ = ["FINAL_ATTR", "STATUSES", "TrialRecord", "constraint_values", "is_feasible", "trial_records"]
STATUSES = ("complete", "over_budget", "stopped_early", "failed")  # what the objective writes as ``status``
_WHERE = ("number", "state", "feasible", "extra")  # fields that are not stored attributes
FINAL_ATTR = "final"  # study user attribute of a finalized study: {trial number (str): final record's attributes}


@dataclass(frozen=True)
class TrialRecord:
    # --- where the trial stands (from Optuna, not stored as attributes)
    number: int = -1
    state: str = ""  # Optuna's TrialState name (COMPLETE, FAIL, RUNNING, ...)
    feasible: bool = False
    # --- stored attributes; None: not stored (yet, or by an older version)
    status: str = ""  # complete | over_budget | stopped_early | failed (read back: running, pruned ... by state)
    worker: dict[str, Any] | None = None  # host and pid of the process that ran it (stale trials are failed by it)
    methods: tuple[str, ...] = ()  # the recipe's methods, in order (none: the teacher itself)
    recipe: dict[str, Any] | None = None  # Recipe.to_dict(), with ``measured`` once measured
    runtime: str | None = None  # what the candidate deploys with (torch, onnxruntime)
    duplicate_of: int | None = None  # the earlier trial whose stored result this one reuses
    error: str | None = None  # why it failed (one line, type and message)
    metric: float | None = None  # the task's main metric on dev (on the dev slice when stopped early)
    metrics: dict[str, float] | None = None  # every official metric on dev
    latency_ms: float | None = None  # baseline_ms / speedup (measure/paired.py)
    speedup: float | None = None  # paired with the teacher
    speedup_spread: dict[str, float] | None = None  # p10 / p90 of the per-pair ratios (newer studies)
    latency: dict[str, Any] | None = None  # LatencyStats scaled like latency_ms, and the scale
    latency_measured: dict[str, Any] | None = None  # LatencyStats as measured
    latency_measured_ms: float | None = None
    teacher_paired_ms: float | None = None  # the teacher's median within the pairs
    baseline_ms: float | None = None  # the teacher's baseline of the process that timed it
    probe_s: float | None = None  # seconds to build and time the structure
    trial_s: float | None = None  # seconds for the whole trial
    onnx: dict[str, Any] | None = None  # ONNX Runtime export details (runtime onnxruntime)
    early_stop: list[dict[str, Any]] | None = None  # the early stopper's checks
    stopped_at: dict[str, Any] | None = None  # the check that stopped it (status stopped_early)
    exit_stats: dict[str, Any] | None = None  # early exit: layers run on dev
    size: dict[str, Any] | None = None  # SizeReport.to_dict()
    size_pct: dict[str, float] | None = None  # total / non_embedding, % of the teacher
    dominated_by: str | None = None  # the study reference that dominates it (teacher, int8_baseline, ...; pareto.py)
    below_floor: bool | None = None  # its metric is at or below the majority-class floor (never exported)
    # --- final records of a finalized study only
    fidelity: str | None = None  # "final"
    search: dict[str, Any] | None = None  # the trial's search-time metric, latency_ms, speedup
    extra: dict[str, Any] = field(default_factory=dict)  # attributes this version does not know

    # --- reading
    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], **where: Any) -> TrialRecord:
        """A record from stored attributes (missing ones None, unknown ones in ``extra``);
        ``where`` sets number, state, feasible (and may override attributes)."""
        values = {**attrs, **where}
        known = {k: v for k, v in values.items() if k in _ATTRS or k in _WHERE[:3]}
        if known.get("methods") is not None:
            known["methods"] = tuple(known["methods"])
        else:
            known.pop("methods", None)
        if known.get("status") is None:
            known.pop("status", None)
        extra = {k: v for k, v in values.items() if k not in _ATTRS and k not in _WHERE}
        return cls(**known, extra=extra)

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> TrialRecord:
        """The record of a stored trial (any state; the status of one that never wrote its own
        follows its state: failed, running, pruned ...)."""
        ua = trial.user_attrs
        complete = trial.state == TrialState.COMPLETE
        status = ua.get("status") or ("failed" if trial.state == TrialState.FAIL else trial.state.name.lower())
        return cls.from_attrs(ua, number=trial.number, state=trial.state.name, status=status,
                              metric=ua.get("metric") if complete else None,
                              feasible=complete and status == "complete" and is_feasible(trial))

    # --- writing
    def to_attrs(self) -> dict[str, Any]:
        """The stored attributes: every attribute the record holds (not None; a status or a list of
        methods when not empty), then ``extra``."""
        out: dict[str, Any] = {}
        for name in _ATTRS:
            value = getattr(self, name)
            if value is None or (name in ("status", "methods") and not value):
                continue
            out[name] = list(value) if name == "methods" else value
        return {**out, **self.extra}

    @property
    def attrs(self) -> dict[str, Any]:
        """:meth:`to_attrs` (what the record holds, by attribute name)."""
        return self.to_attrs()

    def write(self, trial: optuna.Trial) -> None:
        """Store the record's attributes on ``trial`` (those it holds; the others are left as they are)."""
        for key, value in self.to_attrs().items():
            trial.set_user_attr(key, value)

    def with_result(self, result: Mapping[str, Any] | Measurement) -> TrialRecord:
        """This record with the values of ``result`` (the objective's measured values, by attribute name,
        or a :class:`~autosqueeze.measure.assessment.Measurement`)."""
        if not isinstance(result, Mapping):
            result = result.to_dict()
        new = TrialRecord.from_attrs(result)
        changed = {k: getattr(new, k) for k in _ATTRS if k in result}
        return dataclasses.replace(self, **changed, extra={**self.extra, **new.extra})

    # --- views
    @property
    def measurement(self) -> Measurement:
        """What was measured, typed (metric, latency, speedup with its spread, size, runtime ...)."""
        from ..measure.assessment import Measurement  # imported when read: the record itself needs only Optuna

        return Measurement.from_dict({k: v for k, v in self.to_attrs().items() if k in _MEASURED})

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

    @property
    def deployed_runtime(self) -> str | None:
        """The runtime it deploys with: the attribute, else the recipe's profile (older studies)."""
        return self.runtime or ((self.recipe or {}).get("profile") or {}).get("runtime")

    def to_recipe(self) -> Recipe:
        from ..recipe import Recipe  # the record itself needs only Optuna (storage reads it)

        if self.recipe is None:
            raise ValueError(f"trial {self.number} has no recipe")
        return Recipe.from_dict(self.recipe, f"trial {self.number}")


_ATTRS = tuple(f.name for f in dataclasses.fields(TrialRecord) if f.name not in _WHERE)
# the attributes a Measurement holds (measure/assessment.py: the same names)
_MEASURED = ("runtime", "metric", "metrics", "latency_ms", "speedup", "speedup_spread", "latency", "latency_measured",
             "latency_measured_ms", "teacher_paired_ms", "baseline_ms", "size", "size_pct", "exit_stats", "onnx")


def constraint_values(trial: FrozenTrial) -> list[float]:
    """The trial's constraint values as Optuna stored them (feasible when every one is <= 0)."""
    stored = [v for k, v in trial.system_attrs.items() if k.startswith("constraints")]
    return [float(c) for v in stored for c in (v if isinstance(v, (list, tuple)) else [v])]


def is_feasible(trial: FrozenTrial) -> bool:
    return all(c <= 0 for c in constraint_values(trial))


def trial_records(study: optuna.Study) -> list[TrialRecord]:
    """One record per trial, including failed, over-budget and running ones."""
    return [TrialRecord.from_trial(t) for t in study.get_trials(deepcopy=False)]
