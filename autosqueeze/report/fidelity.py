"""Two fidelities, as data: the final (fully trained) points stored beside the search-time ones.

``autosqueeze finalize`` trains the front's candidates again at the study's final budget and
stores, per trial, a final entry in the study's ``final`` user attribute: the final recipe,
its metric, latency, speedup and size, measured like a trial. Here those entries become
:class:`TrialRecord` s (``fidelity: final``) that the report and ``export`` use whenever a
study has any, and the rank agreement between the two fidelities is computed (Kendall τ).
"""
from __future__ import annotations

from typing import Any

import optuna

from ..search.pareto import kendall_tau
from ..search.study_record import StudyRecord
from ..search.trial_record import FINAL_ATTR, TrialRecord, trial_records

__all__ = ["FINAL_ATTR", "final_entries", "final_records", "kendall_tau", "records_for_export"]


def final_entries(study: optuna.Study) -> dict[int, dict[str, Any]]:
    return StudyRecord.from_study(study).final_entries


def final_records(study: optuna.Study) -> list[TrialRecord]:
    """One record per finalized trial, with the final numbers and recipe (empty: none finalized)."""
    finals = final_entries(study)
    out = []
    for r in trial_records(study):
        f = finals.get(r.number)
        if f is None:
            continue
        out.append(TrialRecord.from_attrs(
            f, number=r.number, state=r.state, status="complete", feasible=r.feasible,
            methods=tuple(f.get("methods", r.methods)), recipe=f.get("recipe"), fidelity="final",
            search={"metric": r.metric, "latency_ms": r.latency_ms, "speedup": r.speedup},
        ))
    return out


def records_for_export(study: optuna.Study) -> tuple[list[TrialRecord], str]:
    """The final records when the study has been finalized, else the search-time ones; and which."""
    finals = final_records(study)
    return (finals, "final") if finals else (trial_records(study), "search")
