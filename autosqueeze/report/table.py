"""The survey-style effectiveness table: size (with/without embeddings, % of the teacher),
speedup, metric and its change — one row per Pareto trial."""
from __future__ import annotations

import csv
import html
import io
from typing import Any

from .pareto import TrialRecord

COLUMNS = ("trial", "methods", "size_%", "size_no_emb_%", "speedup", "latency_ms", "metric", "delta_pts")


def effectiveness_rows(front: list[TrialRecord], teacher_metric: float) -> list[dict[str, Any]]:
    rows = []
    for r in sorted(front, key=lambda r: -(r.metric or 0)):
        pct = r.attrs.get("size_pct", {})
        rows.append({
            "trial": r.number, "methods": r.label,
            "size_%": round(pct.get("total", float("nan")), 1),
            "size_no_emb_%": round(pct.get("non_embedding", float("nan")), 1),
            "speedup": round(r.speedup or float("nan"), 2), "latency_ms": round(r.latency_ms or float("nan"), 2),
            "metric": round(100 * (r.metric or 0), 2), "delta_pts": round(100 * ((r.metric or 0) - teacher_metric), 2),
        })
    return rows


def to_markdown(rows: list[dict[str, Any]], metric_name: str) -> str:
    head = [c.replace("metric", metric_name) for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def to_html(rows: list[dict[str, Any]], metric_name: str) -> str:
    head = "".join(f"<th>{html.escape(c.replace('metric', metric_name))}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in COLUMNS) + "</tr>" for r in rows)
    return (f"<h2>Effectiveness of the Pareto trials</h2><table border='1' cellpadding='4' "
            f"style='border-collapse:collapse'><tr>{head}</tr>{body}</table>")
