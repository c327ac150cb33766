"""``autosqueeze export``: the most accurate Pareto recipe within a budget, with provenance."""
from __future__ import annotations

from pathlib import Path

from ..recipe import Recipe
from ..search.study import open_study
from ..study_config import StudyConfig
from .pareto import TrialRecord, select, trial_records


def export_recipe(config: StudyConfig, out: Path, *, latency_budget_ms: float | None = None,
                  min_speedup: float | None = None, trial_number: int | None = None,
                  storage: str | None = None) -> tuple[Path, TrialRecord]:
    """Pick a trial (raises NoTrialWithinBudget) and write its recipe atomically."""
    study = open_study(config, storage, create=False)
    record = select(trial_records(study), latency_budget_ms=latency_budget_ms, min_speedup=min_speedup,
                    trial_number=trial_number)
    recipe: Recipe = record.to_recipe()
    recipe.notes = list(recipe.notes) + [f"exported from study {config.name!r} ({config.path}), trial {record.number}"]
    recipe.validate()
    return recipe.save(out), record
