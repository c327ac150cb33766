"""Provenance of an exported recipe: where its model, numbers and machine come from.

An exported recipe says which base model it was made from (name and a hash of its weight
files), the teacher (settings and weights hash), task and seed (already in the recipe), the
machine its latency was measured on (a hardware fingerprint: CPU model and features, threads,
library versions) and everything the trial measured (metric, latency with spread, size).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from ..models import base_model_hash
from ..recipe import Recipe
from ..runtimes.fingerprint import hardware_fingerprint
from ..search.study_record import StudyRecord
from .pareto import TrialRecord

log = logging.getLogger(__name__)
MEASURED_KEYS = ("metric", "metrics", "latency_ms", "speedup", "baseline_ms", "size", "size_pct", "latency",
                 "exit_stats")


def selection_note(latency_budget_ms: float | None, min_speedup: float | None, trial_number: int | None) -> str:
    if trial_number is not None:
        return f"trial {trial_number}, named"
    wanted = [f"latency <= {latency_budget_ms:g} ms"] if latency_budget_ms is not None else []
    wanted += [f"speedup >= {min_speedup:g}x"] if min_speedup is not None else []
    return "the most accurate Pareto trial" + (f" with {' and '.join(wanted)}" if wanted else "")


def add_provenance(recipe: Recipe, record: TrialRecord, study: StudyRecord | Mapping[str, Any], *,
                   study_name: str, study_path: str, selection: str) -> Recipe:
    """Complete a trial's recipe with its provenance (in place; returns it); ``study``: the study's record
    (or its user attributes)."""
    study = StudyRecord.of(study)
    teacher = dict(recipe.teacher)
    study_teacher = study.teacher_info
    if not teacher.get("weights_hash") and study_teacher.get("weights_hash"):
        teacher["weights_hash"] = study_teacher["weights_hash"]
    base_hash = base_model_hash(recipe.base_model)
    if base_hash:
        teacher["base_weights_hash"] = base_hash
    recipe.teacher = teacher
    profile = dict(recipe.profile or study.profile or {})
    recorded = study.fingerprint
    if recorded:
        profile["fingerprint"] = {**recorded, "source": "recorded by the search"}
    else:  # the study recorded none: describe the exporting machine, and say so
        profile["fingerprint"] = {**hardware_fingerprint(profile.get("threads"), profile.get("runtime")),
                                  "source": "the machine that exported the recipe (the study recorded none)"}
    recipe.profile = profile
    measured = dict(recipe.measured)
    stored = record.to_attrs()
    for key in MEASURED_KEYS:
        if key not in measured and key in stored:
            measured[key] = stored[key]
    measured.update({"trial": record.number, "study": study_name})
    recipe.measured = measured
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    recipe.notes = list(recipe.notes) + [f"exported {stamp} from study {study_name!r} ({study_path}), trial "
                                         f"{record.number}: {selection}"]
    return recipe
