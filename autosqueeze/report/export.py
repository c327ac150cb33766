"""``autosqueeze export``: the most accurate Pareto recipe within a budget, with provenance.

When the study has been finalized (``autosqueeze finalize``), the choice is made among the
final (fully trained) points and the exported recipe is the final one; otherwise among the
search-time points. The recipe's ``measured.fidelity`` says which. A trial that one of the
study's references (the teacher, its PyTorch or ONNX Runtime int8 copy) dominates, or that scores
at or below the majority-class floor, is never exported: the refusal names the reference to
deploy instead.
"""
from __future__ import annotations

from pathlib import Path

import optuna

from ..recipe import Recipe
from ..search.study_record import StudyRecord
from ..study_config import StudyConfig
from .fidelity import records_for_export
from .pareto import (
    Baselines,
    NoTrialWithinBudget,
    TrialRecord,
    candidates,
    pareto_front,
    refuse_excluded,
    select,
)
from .provenance import add_provenance, selection_note


def teacher_metric(study: optuna.Study) -> float:
    value = StudyRecord.from_study(study).teacher_search_metric
    if value is None:
        raise NoTrialWithinBudget("the study recorded no teacher metric: run `autosqueeze search` on it again")
    return value


def fastest_within_drop(records: list[TrialRecord], reference: float, max_drop_pts: float,
                        baselines: Baselines | None = None) -> TrialRecord:
    """The fastest Pareto point whose metric is at most ``max_drop_pts`` points (x100) below ``reference``
    (never one the study's ``baselines`` exclude)."""
    if not max_drop_pts >= 0:
        raise NoTrialWithinBudget(f"--max-drop must be a number of points >= 0, got {max_drop_pts}")

    def within(r: TrialRecord) -> bool:
        return r.metric is not None and 100 * (reference - r.metric) <= max_drop_pts + 1e-9

    front = pareto_front(records, baselines)
    ok = [r for r in front if within(r)]
    excluded = candidates(records, within) if not ok else []
    if excluded and baselines is not None:  # each one dominated by a reference or below the floor
        raise refuse_excluded(excluded, baselines, f"within {max_drop_pts:g} points of the teacher")
    if not ok:
        best = max((r.metric for r in front if r.metric is not None), default=None)
        detail = f"the best point is {100 * (reference - best):.2f} points below" if best is not None else "none"
        raise NoTrialWithinBudget(f"no Pareto point within {max_drop_pts:g} points of the teacher's metric "
                                  f"{reference:.4f} ({detail}): allow a larger --max-drop")
    return min(ok, key=lambda r: (r.latency_ms or float("inf"), r.number))


def export_recipe(config: StudyConfig, out: Path, *, latency_budget_ms: float | None = None,
                  min_speedup: float | None = None, trial_number: int | None = None,
                  max_drop: float | None = None, storage: str | None = None) -> tuple[Path, TrialRecord]:
    """Pick a trial (raises NoTrialWithinBudget) and write its recipe atomically.

    Without a budget, a drop or a trial number, the most accurate trial of the front is exported.
    """
    from ..search.storage import open_study_for_reading

    study = open_study_for_reading(storage or config.storage_url, config.name, config.path)
    records, fidelity = records_for_export(study)
    study_record = StudyRecord.from_study(study)
    baselines = Baselines.from_record(study_record)
    if max_drop is not None:
        if latency_budget_ms is not None or min_speedup is not None or trial_number is not None:
            raise NoTrialWithinBudget("give --max-drop alone (it picks the fastest point within the drop)")
        record = fastest_within_drop(records, teacher_metric(study), max_drop, baselines)
        selection = f"the fastest Pareto point within {max_drop:g} points of the teacher ({fidelity} fidelity)"
    else:
        record = select(records, latency_budget_ms=latency_budget_ms, min_speedup=min_speedup,
                        trial_number=trial_number, baselines=baselines)
        selection = selection_note(latency_budget_ms, min_speedup, trial_number) + f" ({fidelity} fidelity)"
    recipe: Recipe = record.to_recipe()
    add_provenance(recipe, record, study_record, study_name=config.name, study_path=str(config.path),
                   selection=selection)
    recipe.measured = {**recipe.measured, "fidelity": fidelity}
    recipe.validate()
    return recipe.save(out), record
