"""Two fidelities, as data: the final (fully trained) points stored beside the search-time ones.

``autosqueeze finalize`` trains the front's candidates again at the study's final budget and
stores, per trial, a final entry in the study's ``final`` user attribute: the final recipe,
its metric, latency, speedup and size, measured like a trial. Here those entries become
:class:`TrialRecord` s (``fidelity: final``) that the report and ``export`` use whenever a
study has any, and the rank agreement between the two fidelities is computed (Kendall τ).
"""
from __future__ import annotations

import math
from typing import Any

import optuna

from ..search.trial_record import TrialRecord, trial_records

FINAL_ATTR = "final"  # study user attribute: {trial number (str): final entry}


def final_entries(study: optuna.Study) -> dict[int, dict[str, Any]]:
    raw = study.user_attrs.get(FINAL_ATTR) or {}
    return {int(k): v for k, v in raw.items() if isinstance(v, dict) and v.get("status") == "complete"}


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


def kendall_tau(xs: list[float], ys: list[float]) -> float | None:
    """Kendall's τ-b between two equally long lists (None with fewer than 2 pairs or no variation)."""
    n = len(xs)
    if n != len(ys) or n < 2:
        return None
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = xs[i] - xs[j], ys[i] - ys[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return None if denom == 0 else (concordant - discordant) / denom
