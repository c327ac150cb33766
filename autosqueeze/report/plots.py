"""Plotly figures from report data (drawing only; the data comes from pareto.py)."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from .pareto import TrialRecord


def _hover(r: TrialRecord, metric_name: str) -> str:
    steps = (r.recipe or {}).get("steps", [])
    recipe = "<br>".join(html.escape(f"{s['method']} {s['params']}") for s in steps) or "(no compression)"
    return (f"trial {r.number}<br>{metric_name}: {r.metric:.4f}<br>latency: {r.latency_ms:.2f} ms "
            f"({r.speedup:.2f}x)<br>{recipe}")


def pareto_figure(records: list[TrialRecord], front: list[TrialRecord], metric_name: str,
                  budget_ms: float | None = None, references: dict[str, tuple[float, float]] | None = None) -> go.Figure:
    """Metric vs latency (log x), front highlighted, coloured by the methods used."""
    fig = go.Figure()
    done = [r for r in records if r.metric is not None and r.latency_ms is not None]
    groups: dict[str, list[TrialRecord]] = {}
    for r in done:
        groups.setdefault(r.label, []).append(r)
    for label, rs in sorted(groups.items()):
        fig.add_trace(go.Scatter(
            x=[r.latency_ms for r in rs], y=[r.metric for r in rs], mode="markers", name=label,
            marker={"size": 9, "opacity": 0.75}, text=[_hover(r, metric_name) for r in rs], hoverinfo="text"))
    if front:
        fig.add_trace(go.Scatter(
            x=[r.latency_ms for r in front], y=[r.metric for r in front], mode="lines+markers", name="Pareto front",
            line={"shape": "hv", "color": "black"}, marker={"symbol": "circle-open", "size": 14, "color": "black"},
            text=[_hover(r, metric_name) for r in front], hoverinfo="text"))
    for name, (lat, met) in (references or {}).items():
        fig.add_trace(go.Scatter(x=[lat], y=[met], mode="markers+text", name=name, text=[name],
                                 textposition="top center", marker={"symbol": "star", "size": 15}))
    if budget_ms:
        fig.add_vline(x=budget_ms, line_dash="dash", line_color="red", annotation_text=f"budget {budget_ms} ms")
    fig.update_layout(title=f"{metric_name} vs latency", xaxis_title="latency per batch (ms, log scale)",
                      yaxis_title=metric_name, xaxis_type="log", template="plotly_white", height=600)
    return fig


def write_html(figures: list[go.Figure], tables_html: list[str], out: Path, title: str) -> Path:
    """One self-contained page (plotly.js inlined, so it opens offline)."""
    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for i, fig in enumerate(figures):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    parts.extend(tables_html)
    parts.append("</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(out)
    return out
