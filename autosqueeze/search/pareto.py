"""The Pareto front of (metric ↑, latency ↓) over trial records — data only.

Below the report in the flow: the search picks the front's candidates for the final
fidelity (:mod:`autosqueeze.search.finalize`) and measures how the two fidelities rank them
(:func:`kendall_tau`); the report draws and tables them.
"""
from __future__ import annotations

import math

from .trial_record import TrialRecord

__all__ = ["kendall_tau", "pareto_front", "point"]


def pareto_front(records: list[TrialRecord]) -> list[TrialRecord]:
    """Feasible trials not dominated in (metric higher, latency lower), by latency.

    Trials with exactly the same metric and latency (e.g. one recipe sampled twice) appear
    once, as the earliest of them.
    """
    cands = [(r, *point(r)) for r in records if r.feasible and r.metric is not None and r.latency_ms is not None]
    front = [(r, m, lat) for r, m, lat in cands if not any(
        (om >= m and olat <= lat) and (om > m or olat < lat) for _, om, olat in cands)]
    unique: dict[tuple[float, float], TrialRecord] = {}
    for r, m, lat in sorted(front, key=lambda t: t[0].number):
        unique.setdefault((m, lat), r)
    return sorted(unique.values(), key=lambda r: (point(r)[1], r.number))


def point(r: TrialRecord) -> tuple[float, float]:
    """(metric, latency) of a record known to have both (a front member)."""
    assert r.metric is not None and r.latency_ms is not None
    return r.metric, r.latency_ms


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
