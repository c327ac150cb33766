"""Plotly figures and the report page (drawing only; the data comes from pareto.py / analysis.py)."""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .analysis import HistoryPoint, Importance, MethodCount, Reference
from .pareto import TrialRecord

REF_SYMBOLS = ("star", "diamond", "square", "triangle-up")
LAYOUT = {"template": "plotly_white", "height": 520, "margin": {"l": 60, "r": 30, "t": 60, "b": 50}}


def _hover(r: TrialRecord, metric_name: str) -> str:
    steps = (r.recipe or {}).get("steps", [])
    recipe = "<br>".join(html.escape(f"{s['method']} {s.get('params') or ''}") for s in steps) or "(no compression)"
    metric = "-" if r.metric is None else f"{r.metric:.4f}"
    metric += _other_metrics(r.metrics or {}, metric_name)
    spread = r.speedup_spread or {}
    within = f", p10–p90 {spread['p10']:.2f}–{spread['p90']:.2f}x" if "p10" in spread and "p90" in spread else ""
    lat = "-" if r.latency_ms is None else f"{r.latency_ms:.2f} ms ({(r.speedup or 0):.2f}x{within})"
    pct = r.size_pct or {}
    size = f"<br>size: {pct['total']:.1f}% of the teacher" if "total" in pct else ""
    return (f"<b>trial {r.number}</b> ({html.escape(r.status)})<br>{metric_name}: {metric}<br>latency: {lat}{size}"
            f"{_runtime_line(r)}<br>{recipe}")


def _other_metrics(metrics: dict[str, float], metric_name: str) -> str:
    """The task's other official metrics, one hover line each (e.g. MRPC's accuracy beside its F1)."""
    return "".join(f"<br>{html.escape(k)}: {v:.4f}" for k, v in metrics.items()
                   if k != metric_name and isinstance(v, (int, float)))


def _runtime_line(r: TrialRecord) -> str:
    """The runtime the trial deploys with (timed and evaluated in it), when the study recorded one."""
    runtime = r.deployed_runtime
    return f"<br>runtime: {html.escape(str(runtime))}" if runtime else ""


def pareto_figure(records: list[TrialRecord], front: list[TrialRecord], metric_name: str,
                  budget_ms: float | None = None, refs: list[Reference] | None = None,
                  flagged: list[TrialRecord] | None = None) -> go.Figure:
    """Metric vs latency (log x): feasible trials coloured by the methods they use, the front as a
    staircase, stopped-early trials in grey, reference points as stars, the budget as a dashed line;
    ``flagged`` trials (at or below the majority-class floor) crossed out in red."""
    fig = go.Figure()
    done = [r for r in records if r.feasible and r.metric is not None and r.latency_ms is not None]
    groups: dict[str, list[TrialRecord]] = {}
    for r in done:
        groups.setdefault(r.label, []).append(r)
    for label, rs in sorted(groups.items()):
        fig.add_trace(go.Scatter(x=[r.latency_ms for r in rs], y=[r.metric for r in rs], mode="markers", name=label,
                                 marker={"size": 10, "opacity": 0.8}, text=[_hover(r, metric_name) for r in rs],
                                 hoverinfo="text", legendgroup="methods"))
    partial = [r for r in records if r.status == "stopped_early" and r.metric is not None and r.latency_ms]
    if partial:
        fig.add_trace(go.Scatter(x=[r.latency_ms for r in partial], y=[r.metric for r in partial], mode="markers",
                                 name="stopped early (metric on a dev slice)", hoverinfo="text",
                                 marker={"size": 8, "color": "lightgrey", "symbol": "circle-open"},
                                 text=[_hover(r, metric_name) for r in partial]))
    if flagged:
        fig.add_trace(go.Scatter(x=[r.latency_ms for r in flagged], y=[r.metric for r in flagged], mode="markers",
                                 name="at or below the majority-class floor (never exported)", hoverinfo="text",
                                 marker={"size": 14, "color": "red", "symbol": "x-thin-open", "line": {"width": 2}},
                                 text=[_hover(r, metric_name) for r in flagged]))
    if front:
        fig.add_trace(go.Scatter(x=[r.latency_ms for r in front], y=[r.metric for r in front], mode="lines+markers",
                                 name="Pareto front", line={"shape": "hv", "color": "black", "width": 1.5},
                                 marker={"symbol": "circle-open", "size": 15, "color": "black"},
                                 text=[_hover(r, metric_name) for r in front], hoverinfo="text"))
    ys = [r.metric for r in done + partial if r.metric is not None] + [
        ref.metric for ref in refs or [] if ref.metric is not None]
    xs = [r.latency_ms for r in done + partial if r.latency_ms] + [ref.latency_ms for ref in refs or []
                                                                  if ref.latency_ms]
    for i, ref in enumerate(refs or []):
        if ref.metric is None:
            continue
        hover = f"{html.escape(ref.name)}<br>{metric_name}: {ref.metric:.4f}{_other_metrics(ref.metrics, metric_name)}"
        if ref.latency_ms is None:  # a constant predictor (the majority-class floor): a level, not a point
            if xs:
                fig.add_trace(go.Scatter(
                    x=[min(xs) / 1.2, max(xs) * 1.2], y=[ref.metric] * 2, mode="lines", name=ref.name,
                    line={"dash": "dot", "color": "grey"}, hoverinfo="text",
                    text=[f"{hover}<br>{html.escape(ref.recipe or '')}"] * 2))
            continue
        fig.add_trace(go.Scatter(
            x=[ref.latency_ms], y=[ref.metric], mode="markers+text", name=ref.name, text=[ref.name],
            textposition="top center", marker={"symbol": REF_SYMBOLS[i % len(REF_SYMBOLS)], "size": 16},
            hovertext=[f"{hover}<br>latency: {ref.latency_ms:.2f} ms"],
            hoverinfo="text"))
    if budget_ms and ys:
        lo, hi = min(ys), max(ys)
        pad = 0.05 * (hi - lo or 1.0)
        fig.add_trace(go.Scatter(x=[budget_ms, budget_ms], y=[lo - pad, hi + pad], mode="lines",
                                 name=f"budget {budget_ms:g} ms", line={"dash": "dash", "color": "red"},
                                 hoverinfo="name"))
    fig.update_layout(title=f"{metric_name} vs latency (hover a point for its recipe)",
                      xaxis_title="latency per batch (ms, log scale)", yaxis_title=metric_name, xaxis_type="log",
                      **{**LAYOUT, "height": 620})
    return fig


def history_figure(points: list[HistoryPoint], metric_name: str) -> go.Figure:
    """Per trial: metric (top) and latency (bottom), with the best feasible value so far."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=(metric_name, "latency (ms)"))
    ok = [p for p in points if p.metric is not None]
    lat = [p for p in points if p.latency_ms is not None]
    text = [f"trial {p.number}: {html.escape(p.status)}" for p in ok]
    fig.add_trace(go.Scatter(x=[p.number for p in ok], y=[p.metric for p in ok], mode="markers", name=metric_name,
                             text=text, marker={"color": ["#1f77b4" if p.status == "complete" else "lightgrey"
                                                          for p in ok]}), row=1, col=1)
    fig.add_trace(go.Scatter(x=[p.number for p in points], y=[p.best_metric for p in points], mode="lines",
                             name=f"best feasible {metric_name}", line={"shape": "hv"}), row=1, col=1)
    fig.add_trace(go.Scatter(x=[p.number for p in lat], y=[p.latency_ms for p in lat], mode="markers",
                             name="latency", text=[f"trial {p.number}: {html.escape(p.status)}" for p in lat],
                             marker={"color": ["#ff7f0e" if p.status == "complete" else "lightgrey" for p in lat]}),
                  row=2, col=1)
    fig.add_trace(go.Scatter(x=[p.number for p in points], y=[p.best_latency_ms for p in points], mode="lines",
                             name="fastest feasible", line={"shape": "hv"}), row=2, col=1)
    fig.update_yaxes(type="log", row=2, col=1)
    fig.update_xaxes(title_text="trial", row=2, col=1)
    fig.update_layout(title="optimization history (grey: over budget, stopped early or failed)", **LAYOUT)
    return fig


def importance_figure(importances: list[Importance]) -> go.Figure | None:
    """Horizontal bars per objective; None when no objective has importances (notes say why)."""
    shown = [imp for imp in importances if imp.values]
    if not shown:
        return None
    fig = make_subplots(rows=1, cols=len(shown), subplot_titles=[f"for {imp.target}" for imp in shown])
    for i, imp in enumerate(shown, start=1):
        items = sorted(imp.values.items(), key=lambda kv: kv[1])
        fig.add_trace(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h", name=imp.target,
                             hovertemplate="%{y}: %{x:.3f}<extra></extra>"), row=1, col=i)
    fig.update_layout(title=f"parameter importances (Optuna, {shown[0].n_trials} feasible trials)", showlegend=False,
                      **{**LAYOUT, "height": max(320, 60 + 28 * max(len(imp.values) for imp in shown))})
    return fig


def method_frequency_figure(counts: list[MethodCount]) -> go.Figure:
    """How many Pareto trials use each method, beside how many feasible trials did."""
    names = [c.method for c in counts]
    fig = go.Figure([
        go.Bar(x=names, y=[c.on_front for c in counts], name="on the Pareto front"),
        go.Bar(x=names, y=[c.in_feasible for c in counts], name="in feasible trials", opacity=0.5),
    ])
    fig.update_layout(title="methods on the Pareto front", barmode="group", yaxis_title="trials", **LAYOUT)
    return fig


@dataclass
class Section:
    """One part of the page: a heading, an optional figure, notes and HTML (tables)."""

    title: str
    figure: go.Figure | None = None
    notes: tuple[str, ...] = ()
    html: str = ""


STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
td:nth-child(3),td:last-child{text-align:left}p.note{color:#8a5a00}p.meta{color:#555}"""


def write_html(sections: list[Section], out: Path, title: str, meta: list[str] | None = None) -> Path:
    """One self-contained page: plotly.js inlined once, so it opens offline; written atomically."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<p class='meta'>{html.escape(m)}</p>" for m in meta or []]
    first = True
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        parts += [f"<p class='note'>{html.escape(n)}</p>" for n in s.notes]
        if s.figure is not None:
            parts.append(s.figure.to_html(full_html=False, include_plotlyjs=first, config={"responsive": True}))
            first = False
        parts.append(s.html)
    parts.append("</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(out)
    return out


def fidelity_figure(finals: list[TrialRecord], metric_name: str) -> go.Figure:
    """Each finalized candidate as an arrow: search-time point (open) -> final point (filled)."""
    fig = go.Figure()
    for i, r in enumerate(finals):
        search = r.search or {}
        if search.get("latency_ms") is None or search.get("metric") is None or r.metric is None:
            continue
        fig.add_trace(go.Scatter(
            x=[search["latency_ms"], r.latency_ms], y=[search["metric"], r.metric], mode="lines+markers",
            name=f"trial {r.number}", legendgroup="final", showlegend=i == 0 or len(finals) <= 10,
            marker={"symbol": ["circle-open", "circle"], "size": [10, 12]}, hoverinfo="text",
            text=[f"trial {r.number} at search time<br>{metric_name} {search['metric']:.4f}, "
                  f"{search['latency_ms']:.2f} ms", _hover(r, metric_name)]))
    fig.update_layout(xaxis_title="latency (ms, log)", yaxis_title=metric_name, xaxis_type="log",
                      title="search-time point -> final point (after full-fidelity training)")
    return fig
