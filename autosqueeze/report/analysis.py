"""Report data beyond the front: reference points, history, importances, method counts.

Pure data from a study and its :class:`TrialRecord` list; drawing is in plots.py. Every
function here works on a study of any size — too few trials for an analysis give a note
saying so instead of an exception.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import optuna

from ..search.study_record import StudyRecord
from ..tasks import TASKS
from .pareto import TrialRecord

StudyAttrs: TypeAlias = StudyRecord | Mapping[str, Any]  # a study's record, or its user attributes as stored

MIN_TRIALS_FOR_IMPORTANCE = 5
MAJORITY = "majority class"  # the reference of a constant predictor (measure.metrics.majority_reference)


@dataclass(frozen=True)
class Reference:
    """A point every candidate is compared with (the teacher, its plain int8 copy)."""

    name: str
    latency_ms: float | None  # None: no model to time (the majority-class floor, drawn as a line)
    metric: float | None
    speedup: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # every official metric measured
    recipe: str | None = None  # what the point is, for the table
    speedup_spread: dict[str, float] | None = None  # p10 / p90 of its per-pair ratios (when timed in pairs)


def teacher_metric(study: StudyAttrs, metric_name: str) -> float | None:
    """The teacher's metric on the study's dev data (the search subset when there is one)."""
    teacher = StudyRecord.of(study).teacher_info
    value = teacher.get("search_metric")
    if value is None:
        value = (teacher.get("metrics") or {}).get(metric_name)
    return None if value is None else float(value)


def references(study: StudyAttrs, metric_name: str) -> list[Reference]:
    """Teacher and int8-baseline points from the study's record (those present)."""
    record = StudyRecord.of(study)
    out = []
    teacher = record.teacher_info
    if teacher.get("latency_ms"):
        out.append(Reference("teacher", float(teacher["latency_ms"]), teacher_metric(record, metric_name), 1.0,
                             dict(teacher.get("search_metrics") or teacher.get("metrics") or {}),
                             "(no compression)"))
    base = record.reference("int8_baseline")
    if base.get("latency_ms"):
        out.append(Reference("int8 baseline (quantize_dynamic)", float(base["latency_ms"]),
                             None if base.get("metric") is None else float(base["metric"]), base.get("speedup"),
                             dict(base.get("metrics") or {}), "quantize_dynamic()", base.get("speedup_spread")))
    floor = record.reference("majority_baseline")
    if floor.get("metric") is not None:
        out.append(Reference(MAJORITY, None, float(floor["metric"]), None, dict(floor.get("metrics") or {}),
                             f"always predicting {floor.get('predicts', 'the most frequent label')}"))
    return out


def official_metrics(study: StudyAttrs, metric_name: str) -> list[str]:
    """The study task's official metrics besides ``metric_name`` (MRPC: accuracy; STS-B: spearmanr),
    with ``<metric>_<split>`` for a task's further dev splits (MNLI: ``accuracy_mismatched``)."""
    spec = TASKS.get(str(StudyRecord.of(study).task))
    if spec is None:
        return []
    names = list(spec.metric_names) + [f"{m}_{s.replace('dev_', '')}" for s in spec.dev_splits[1:]
                                       for m in spec.metric_names]
    return [n for n in names if n != metric_name]


def trivial_teacher_note(refs: list[Reference], metric_name: str, margin: float = 0.01) -> str | None:
    """A warning when the teacher is within ``margin`` (1 point) of the majority-class floor."""
    teacher = next((r.metric for r in refs if r.name == "teacher" and r.metric is not None), None)
    floor = next((r for r in refs if r.name == MAJORITY and r.metric is not None), None)
    if teacher is None or floor is None or floor.metric is None or teacher - floor.metric >= margin:
        return None
    return (f"warning: the teacher's {metric_name} ({100 * teacher:.2f}) is within {100 * margin:g} point of "
            f"{floor.recipe or 'always predicting the majority class'} ({100 * floor.metric:.2f}): the scores here "
            f"barely beat a constant; train the teacher longer (teacher.steps) or judge by the task's other metrics")


SHORT_TEACHER_PASSES = 0.5  # below half a pass over its training data a teacher is read as under-trained


def short_teacher_note(study: StudyAttrs, passes: float = SHORT_TEACHER_PASSES) -> str | None:
    """A warning when the study's teacher was fine-tuned on less than ``passes`` of one pass over
    its training data (MiniLM-L6 on SST-2: 83.6% after 0.05 pass, 89% after 0.7 here)."""
    training = StudyRecord.of(study).teacher_info.get("training") or {}
    done = training.get("passes")
    if done is None or float(done) >= passes:
        return None
    return (f"warning: the teacher was fine-tuned {training['steps']} steps at batch {training['batch_size']}, "
            f"{float(done):.2f} of one pass over its {training['train_examples']:,} training examples: it is likely "
            f"under-trained, so the drops here are measured against a weak teacher and say little about a converged "
            f"one (teacher.steps of at least {passes:g} pass for figures to quote)")


def runtime_references(study: StudyAttrs) -> list[Reference]:
    """The teacher's ONNX Runtime dynamic int8 (what a user deploys without autosqueeze), when the
    study measured it (``ort_int8_baseline``: paired with the fp32 PyTorch teacher, like trials)."""
    base = StudyRecord.of(study).reference("ort_int8_baseline")
    if not base.get("latency_ms"):
        return []
    return [Reference("int8 baseline (ONNX Runtime dynamic int8)", float(base["latency_ms"]),
                      None if base.get("metric") is None else float(base["metric"]), base.get("speedup"),
                      dict(base.get("metrics") or {}), "quantize_dynamic() [onnxruntime]",
                      base.get("speedup_spread"))]


@dataclass(frozen=True)
class HistoryPoint:
    number: int
    status: str
    metric: float | None
    latency_ms: float | None
    best_metric: float | None  # best feasible metric up to and including this trial
    best_latency_ms: float | None  # fastest feasible latency so far


def history(records: list[TrialRecord]) -> list[HistoryPoint]:
    """Every finished trial in order, with the running best feasible metric and latency."""
    out: list[HistoryPoint] = []
    best_m: float | None = None
    best_l: float | None = None
    for r in sorted(records, key=lambda r: r.number):
        if r.state == "RUNNING":
            continue
        if r.feasible and r.metric is not None:
            best_m = r.metric if best_m is None else max(best_m, r.metric)
            if r.latency_ms is not None:
                best_l = r.latency_ms if best_l is None else min(best_l, r.latency_ms)
        out.append(HistoryPoint(r.number, r.status, r.metric, r.latency_ms, best_m, best_l))
    return out


@dataclass
class Importance:
    """Parameter importances for one objective, or the note explaining why there are none."""

    target: str
    values: dict[str, float] = field(default_factory=dict)
    n_trials: int = 0
    note: str | None = None


def param_importances(study: optuna.Study, records: list[TrialRecord], metric_name: str,
                      min_trials: int = MIN_TRIALS_FOR_IMPORTANCE) -> list[Importance]:
    """Optuna's importances (its default evaluator) of the search parameters for the metric and
    for the latency, over the feasible completed trials only (over-budget trials were never
    trained: their metric is a placeholder)."""
    feasible = {r.number for r in records if r.feasible}
    trials = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
              if t.number in feasible and t.values is not None and len(t.values) == 2]
    out = []
    # PED-ANOVA ranks parameters by how they reach *low* target values: negate the metric
    for target, sign, idx in ((metric_name, -1.0, 0), ("latency", 1.0, 1)):
        imp = Importance(target, n_trials=len(trials))
        values = [t.values[idx] for t in trials]
        if len(trials) < min_trials:
            imp.note = (f"{len(trials)} feasible trial(s): parameter importances need at least {min_trials}; "
                        f"run more trials")
        elif not any(t.params for t in trials):
            imp.note = "the trials have no search parameters (a fixed recipe)"
        elif max(values) - min(values) <= 1e-12 * max(1.0, abs(max(values))):
            imp.note = f"every feasible trial has the same {target}: nothing to attribute"
        else:
            try:
                tmp = optuna.create_study(directions=study.directions)
                tmp.add_trials(trials)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    def _target(t: optuna.trial.FrozenTrial, i: int = idx, s: float = sign) -> float:
                        return s * t.values[i]

                    raw = optuna.importance.get_param_importances(tmp, target=_target)
                imp.values = {k: float(v) for k, v in raw.items() if not math.isnan(v)}
                if not imp.values:
                    imp.note = "Optuna found no parameter to attribute the variation to"
            except (ValueError, RuntimeError, ZeroDivisionError, IndexError) as err:
                imp.note = f"Optuna could not compute importances: {str(err).splitlines()[0] if str(err) else err!r}"
        out.append(imp)
    return out


@dataclass(frozen=True)
class MethodCount:
    method: str
    on_front: int
    front_share: float  # fraction of the front's trials that use it
    in_feasible: int  # feasible trials that use it
    in_trials: int  # all finished trials that used it


def method_frequency(front: list[TrialRecord], records: list[TrialRecord]) -> list[MethodCount]:
    """How often each method appears on the front (and, for contrast, in all trials)."""
    names = sorted({m for r in records for m in r.methods})
    done = [r for r in records if r.state != "RUNNING"]
    rows = [MethodCount(m, sum(m in r.methods for r in front), sum(m in r.methods for r in front) / max(1, len(front)),
                        sum(m in r.methods for r in done if r.feasible), sum(m in r.methods for r in done))
            for m in names]
    return sorted(rows, key=lambda c: (-c.on_front, -c.in_feasible, c.method))


def compression_methods(methods: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The methods of a recipe that compress: its training steps (``distill``, ``qat``) are the
    recovery of the others and are left out, unless the recipe has nothing else."""
    from ..methods import MethodError, get_method

    out = []
    for m in methods:
        try:
            spec = get_method(m)
        except MethodError:  # a method this install does not know: count it as compression
            out.append(m)
            continue
        if not spec.trains:
            out.append(m)
    return tuple(out) if out else tuple(methods)


def best_single_method(records: list[TrialRecord]) -> dict[str, TrialRecord]:
    """For each method tried alone (recovery aside), its most accurate feasible trial."""
    best: dict[str, TrialRecord] = {}
    for r in records:
        key = compression_methods(r.methods)
        if not r.feasible or r.metric is None or len(key) != 1:
            continue
        cur = best.get(key[0])
        if cur is None or (r.metric, -(r.latency_ms or 0)) > (cur.metric, -(cur.latency_ms or 0)):
            best[key[0]] = r
    return dict(sorted(best.items()))


def status_counts(records: list[TrialRecord]) -> dict[str, int]:
    """Trials per status (complete, over_budget, stopped_early, failed, running ...)."""
    out: dict[str, int] = {}
    for r in records:
        out[r.status] = out.get(r.status, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
