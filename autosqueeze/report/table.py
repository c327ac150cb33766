"""The survey-style effectiveness table (data + Markdown / CSV / HTML text).

One row per Pareto trial, plus the most accurate feasible trial of each method tried alone
(when the study has such trials), plus the teacher and the plain int8 baseline as
references: size with and without embeddings (% of the teacher), speedup (with the p10–p90
spread of its per-pair ratios where the timing has one: ``2.1 (1.9–2.3)`` in the Markdown and
HTML tables, ``speedup_p10`` / ``speedup_p90`` columns in the CSV), latency, the
metric (×100, as GLUE tables print it) and its change against the teacher in points, then the
task's other official metrics (MRPC's accuracy beside its F1). The majority-class reference
(a constant predictor) shows the floor: it has a metric and no latency. The last two columns
flag a trial: ``below_floor`` (``yes``: it scores at or below the floor; such a trial is never on
the front nor exported, and each one that would otherwise be on the front gets a row, role
``below the floor``) and ``dominated_by`` (the reference that is at least as accurate and as fast).
"""
from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Sequence
from typing import Any

from .analysis import Reference, best_single_method
from .pareto import Baselines, TrialRecord, pareto_front

COLUMNS = ("trial", "role", "methods", "size_%", "size_no_emb_%", "speedup", "latency_ms", "metric", "delta_pts",
           "recipe", "below_floor", "dominated_by")
SPREAD = ("speedup_p10", "speedup_p90")  # CSV columns after ``speedup``; printed inside its cell elsewhere
NAN = float("nan")


def _r(value: Any, digits: int) -> float:
    return round(float(value), digits) if isinstance(value, (int, float)) and value == value else NAN


def _spread(spread: dict[str, Any] | None) -> dict[str, float]:
    """``speedup_p10`` / ``speedup_p90`` of a row (NaN when the timing stored no spread)."""
    spread = spread or {}
    return {"speedup_p10": _r(spread.get("p10"), 2), "speedup_p90": _r(spread.get("p90"), 2)}


def speedup_text(speedup: Any, spread: dict[str, Any] | None = None) -> str:
    """``3.19 (2.90–3.40)``: a speedup with the p10–p90 of its per-pair ratios (blank when there is
    no speedup, the number alone when there is no spread)."""
    value = _r(speedup, 2)
    if math.isnan(value):
        return ""
    lo, hi = (_r((spread or {}).get(k), 2) for k in ("p10", "p90"))
    return f"{value:g}" if math.isnan(lo) or math.isnan(hi) else f"{value:g} ({lo:.2f}–{hi:.2f})"


def _pct(metrics: dict[str, Any], names: Sequence[str]) -> dict[str, float]:
    """The other official metrics (×100) of a row, blank when not measured."""
    return {n: _r(None if metrics.get(n) is None else 100 * metrics[n], 2) for n in names}


def _row(r: TrialRecord, role: str, teacher_metric: float | None, other_metrics: Sequence[str] = (),
         baselines: Baselines | None = None) -> dict[str, Any]:
    pct = r.size_pct or {}
    ref = None if baselines is None else baselines.dominating(r)
    delta = NAN if teacher_metric is None or r.metric is None else 100 * (r.metric - teacher_metric)
    return {"trial": r.number, "role": role, "methods": r.label, "size_%": _r(pct.get("total"), 1),
            "size_no_emb_%": _r(pct.get("non_embedding"), 1), "speedup": _r(r.speedup, 2),
            **_spread(r.speedup_spread), "latency_ms": _r(r.latency_ms, 2),
            "metric": _r(None if r.metric is None else 100 * r.metric, 2),
            "delta_pts": _r(delta, 2), **_pct(r.metrics or {}, other_metrics),
            "recipe": r.recipe_summary + _runtime_note(r),
            "below_floor": "yes" if baselines is not None and baselines.below_floor(r) else "",
            "dominated_by": "" if ref is None else ref.name}


_UNNOTED = (None, "", "torch")  # no runtime recorded, or the default one (PyTorch)


def _runtime_note(r: TrialRecord) -> str:
    """`` [onnxruntime]`` for a trial deployed with ONNX Runtime (torch, the default, is not noted)."""
    runtime = r.deployed_runtime
    return "" if runtime in _UNNOTED else f" [{runtime}]"


def effectiveness_rows(front: list[TrialRecord], records: list[TrialRecord] | None = None,
                       teacher_metric: float | None = None,
                       refs: list[Reference] | None = None,
                       other_metrics: Sequence[str] = (), baselines: Baselines | None = None) -> list[dict[str, Any]]:
    """Rows: references first, then the front (most accurate first), then best single-method trials,
    then (with the study's ``baselines``) the trials at or below the majority-class floor that only the
    floor keeps off the front.

    ``other_metrics`` (see ``analysis.official_metrics``) add a column each, after the metric.
    A trial that is both on the front and the best of its method appears once, with both roles.
    """
    rows: list[dict[str, Any]] = []
    for ref in refs or []:
        is_teacher = ref.name == "teacher"
        delta = NAN if teacher_metric is None or ref.metric is None else 100 * (ref.metric - teacher_metric)
        rows.append({"trial": "-", "role": "reference", "methods": ref.name,
                     "size_%": 100.0 if is_teacher else NAN, "size_no_emb_%": 100.0 if is_teacher else NAN,
                     "speedup": _r(ref.speedup, 2), **_spread(ref.speedup_spread),
                     "latency_ms": _r(ref.latency_ms, 2),
                     "metric": _r(None if ref.metric is None else 100 * ref.metric, 2), "delta_pts": _r(delta, 2),
                     **_pct(ref.metrics, other_metrics), "recipe": ref.recipe or ref.name,
                     "below_floor": "", "dominated_by": ""})
    singles = best_single_method(records or [])
    best_of = {r.number: m for m, r in singles.items()}
    on_front = {r.number for r in front}
    for r in sorted(front, key=lambda r: (-(r.metric or 0), r.latency_ms or 0)):
        role = "pareto" + (f", best {best_of[r.number]} alone" if r.number in best_of else "")
        rows.append(_row(r, role, teacher_metric, other_metrics, baselines))
    for method, r in singles.items():
        if r.number not in on_front:
            rows.append(_row(r, f"best {method} alone", teacher_metric, other_metrics, baselines))
    if baselines is not None and baselines.floor is not None:  # the points only the floor keeps off the front
        shown = on_front | set(best_of)
        floor_only = Baselines(baselines.refs)
        for r in pareto_front(records or [], floor_only):
            if baselines.below_floor(r) and r.number not in shown:
                rows.append(_row(r, "below the floor", teacher_metric, other_metrics, baselines))
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:g}"
    return str(value)


def _text(row: dict[str, Any], column: str) -> str:
    """A cell of the Markdown / HTML tables: the speedup carries its spread."""
    if column == "speedup":
        return speedup_text(row["speedup"], {"p10": row.get("speedup_p10"), "p90": row.get("speedup_p90")})
    return _cell(row[column])


def _columns(rows: list[dict[str, Any]], spread: bool = False) -> list[str]:
    """COLUMNS with the rows' other-metric columns after ``delta_pts`` (and, with ``spread``, the
    speedup's p10 / p90 after ``speedup``)."""
    extra = [k for k in (rows[0] if rows else {}) if k not in COLUMNS and k not in SPREAD]
    i = COLUMNS.index("delta_pts") + 1
    cols = [*COLUMNS[:i], *extra, *COLUMNS[i:]]
    if spread:
        j = cols.index("speedup") + 1
        cols[j:j] = SPREAD
    return cols


def _header(metric_name: str, columns: list[str]) -> list[str]:
    return [metric_name if c == "metric" else c for c in columns]


def to_markdown(rows: list[dict[str, Any]], metric_name: str) -> str:
    cols = _columns(rows)
    lines = ["| " + " | ".join(_header(metric_name, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_text(r, c).replace("|", "\\|") for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]], metric_name: str = "metric") -> str:
    cols = _columns(rows, spread=True)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(_header(metric_name, cols))
    for r in rows:
        w.writerow([_cell(r.get(c, NAN)) for c in cols])
    return buf.getvalue()


def to_html(rows: list[dict[str, Any]], metric_name: str) -> str:
    cols = _columns(rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in _header(metric_name, cols))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_text(r, c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table class='effectiveness'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
