"""``autosqueeze export``: the most accurate Pareto recipe within a budget, with provenance."""
from __future__ import annotations

from pathlib import Path

from ..recipe import Recipe
from ..study_config import StudyConfig
from .pareto import TrialRecord, select, trial_records
from .provenance import add_provenance, selection_note


def export_recipe(config: StudyConfig, out: Path, *, latency_budget_ms: float | None = None,
                  min_speedup: float | None = None, trial_number: int | None = None,
                  storage: str | None = None) -> tuple[Path, TrialRecord]:
    """Pick a trial (raises NoTrialWithinBudget) and write its recipe atomically.

    Without a budget or a trial number, the most accurate trial of the front is exported.
    """
    from ..search.study import open_study

    study = open_study(config, storage, create=False)
    record = select(trial_records(study), latency_budget_ms=latency_budget_ms, min_speedup=min_speedup,
                    trial_number=trial_number)
    recipe: Recipe = record.to_recipe()
    add_provenance(recipe, record, study.user_attrs, study_name=config.name, study_path=str(config.path),
                   selection=selection_note(latency_budget_ms, min_speedup, trial_number))
    recipe.validate()
    return recipe.save(out), record
