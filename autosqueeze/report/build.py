"""``autosqueeze report``: study → report data → figures and tables → files.

Writes ``report.html`` (one self-contained page: front, history, importances, methods on the
front, effectiveness table), ``effectiveness.md`` and ``effectiveness.csv`` into the report
folder (``report/`` next to the study file by default). Read-only on the study.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from ..search.study_record import StudyRecord
from ..study_config import StudyConfig
from . import table
from .analysis import (
    history,
    method_frequency,
    official_metrics,
    param_importances,
    references,
    runtime_references,
    short_teacher_note,
    status_counts,
    teacher_metric,
    trivial_teacher_note,
)
from .fidelity import final_records
from .pareto import Baselines, TrialRecord, pareto_front, trial_records
from .plots import (
    Section,
    fidelity_figure,
    history_figure,
    importance_figure,
    method_frequency_figure,
    pareto_figure,
    write_html,
)


@dataclass
class ReportFiles:
    html: Path
    markdown: Path
    csv: Path
    n_trials: int
    n_front: int
    notes: list[str] = field(default_factory=list)


def _frequency_table(counts: list[Any], n_front: int) -> str:
    head = "<tr><th>method</th><th>on the front</th><th>share of the front</th><th>feasible trials</th>" \
           "<th>all trials</th></tr>"
    body = "".join(f"<tr><td>{html.escape(c.method)}</td><td>{c.on_front}</td><td>{100 * c.front_share:.0f}%</td>"
                   f"<td>{c.in_feasible}</td><td>{c.in_trials}</td></tr>" for c in counts)
    return f"<table class='methods'>{head}{body}</table><p class='meta'>{n_front} trials on the front.</p>"


def report_sections(study: optuna.Study, records: list[TrialRecord],
                    metric_name: str) -> tuple[list[Section], list[dict]]:
    """The page's sections and the effectiveness rows, from a study and its records."""
    record = StudyRecord.from_study(study)
    baselines = Baselines.from_record(record)
    front = pareto_front(records, baselines)
    refs = references(record, metric_name) + runtime_references(record)
    t_metric = teacher_metric(record, metric_name)
    budget = record.latency_budget_ms
    rows = table.effectiveness_rows(front, records, t_metric, refs, official_metrics(record, metric_name), baselines)
    counts = status_counts(records)
    notes = [n for n in (trivial_teacher_note(refs, metric_name), short_teacher_note(record)) if n]
    if not front:
        notes.append("no feasible completed trial yet: the front is empty (run `autosqueeze search`)"
                     if not any(r.feasible for r in records) else
                     "no trial is on the front: every feasible trial is dominated by a reference or scores at or "
                     "below the majority-class floor (deploy a reference instead; see the table)")
    notes += baseline_notes(records, baselines)
    if counts.get("over_budget"):
        notes.append(f"{counts['over_budget']} trial(s) over the latency budget are not drawn: they stop after their "
                     f"latency probe, untrained, so they have no metric")
    if not any(r.name.startswith("int8") for r in refs):
        notes.append("the study has no int8 baseline point (older study or search still starting)")
    imps = param_importances(study, records, metric_name)
    imp_notes = tuple(f"for {i.target}: {i.note}" for i in imps if i.note)
    freq = method_frequency(front, records)
    sections = [
        Section("Pareto front: metric vs latency",
                pareto_figure(records, front, metric_name, budget, refs,
                              flagged=[r for r in records if r.feasible and baselines.below_floor(r)]),
                tuple(notes)),
        Section("Effectiveness (survey style)", None, (), table.to_html(rows, metric_name)
                + "<p class='meta'>size: % of the teacher's bytes as deployed, with and without embeddings; "
                  "metrics ×100; delta in points against the teacher on the same dev data; the majority class "
                  "is a constant predictor (the floor).</p>"),
        Section("Optimization history", history_figure(history(records), metric_name)),
        Section("Parameter importances", importance_figure(imps), imp_notes),
        Section("Methods on the Pareto front", method_frequency_figure(freq) if freq else None,
                () if freq else ("no trial used a compression method yet",), _frequency_table(freq, len(front))),
    ]
    finals = final_records(study)
    if finals:
        summary = record.finalize or {}
        tau = summary.get("kendall_tau")
        rows_html = "".join(
            f"<tr><td>{r.number}</td><td>{html.escape(r.recipe_summary)}</td>"
            f"<td>{_num((r.search or {}).get('metric'), 4)}</td><td>{_num(r.metric, 4)}</td>"
            f"<td>{_num((r.search or {}).get('latency_ms'), 2)}</td><td>{_num(r.latency_ms, 2)}</td>"
            f"<td>{html.escape(table.speedup_text(r.speedup, r.speedup_spread))}</td></tr>" for r in finals)
        head = ("<tr><th>trial</th><th>final recipe</th><th>search metric</th><th>final metric</th>"
                "<th>search ms</th><th>final ms</th><th>final speedup (p10–p90)</th></tr>")
        sections.insert(1, Section(
            "Two fidelities: search-time -> final", fidelity_figure(finals, metric_name),
            (f"Kendall tau between search-time and final {metric_name} over {len(finals)} finalized candidates: "
             f"{'n/a' if tau is None else f'{tau:.2f}'}",),
            f"<table>{head}{rows_html}</table><p class='meta'>export chooses among the final points when the study "
            f"has any.</p>"))
    return sections, rows


def baseline_notes(records: list[TrialRecord], baselines: Baselines) -> list[str]:
    """One note each for the feasible trials at or below the majority-class floor and for those a reference
    dominates (neither kind is on the front nor exported)."""
    done = [r for r in records if r.feasible and r.metric is not None and r.latency_ms is not None]
    if baselines.trivial_teacher:
        return ["the teacher scores at or below the majority-class floor: the front is the trials' own (neither the "
                "references nor the floor are applied) and no score here means more than a constant's"]
    notes = []
    low = [r.number for r in done if baselines.below_floor(r)]
    if low and baselines.floor is not None:
        notes.append(f"{len(low)} trial(s) score at or below the majority-class floor ({100 * baselines.floor:.2f}): "
                     f"flagged below_floor, never on the front nor exported (trials {_numbers(low)})")
    by: dict[str, list[int]] = {}
    for r in done:
        ref = baselines.dominating(r)
        if ref is not None and not baselines.below_floor(r):
            by.setdefault(ref.name, []).append(r.number)
    for name, numbers in by.items():
        notes.append(f"{len(numbers)} trial(s) dominated by {name} (at least as accurate and as fast): not on the "
                     f"front, never exported (trials {_numbers(numbers)})")
    return notes


def _numbers(numbers: list[int], most: int = 12) -> str:
    head = ", ".join(str(n) for n in numbers[:most])
    return head + (f" and {len(numbers) - most} more" if len(numbers) > most else "")


def _num(value: Any, digits: int) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def write_report(config: StudyConfig, out_dir: Path | None = None, storage: str | None = None) -> ReportFiles:
    """Write the page and the tables for the study of ``config``; returns their paths."""
    from ..search.storage import open_study_for_reading

    study = open_study_for_reading(storage or config.storage_url, config.name, config.path)
    records = trial_records(study)
    record = StudyRecord.from_study(study)
    metric_name = record.main_metric or "metric"
    sections, rows = report_sections(study, records, metric_name)
    out_dir = Path(out_dir) if out_dir else config.report_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    profile = record.profile or config.hardware.to_dict()
    counts = status_counts(records)
    meta = [f"model {config.model}, task {config.task} ({metric_name}), study file {config.path}",
            "hardware profile: " + ", ".join(f"{k} {v}" for k, v in profile.items()),
            f"latency budget: {str(record.latency_budget_ms) + ' ms' if record.latency_budget_ms else 'none'}; "
            "trials: "
            + ", ".join(f"{n} {s}" for s, n in counts.items())]
    title = f"autosqueeze study {config.name}: {config.task}, {len(records)} trials"
    html_path = write_html(sections, out_dir / "report.html", title, meta)
    md = out_dir / "effectiveness.md"
    warnings = [n for s in sections for n in s.notes if n.startswith("warning:")]
    header = f"# {title}\n\n" + "\n".join(f"- {m}" for m in meta) + "\n\n" + "".join(f"> {w}\n\n" for w in warnings)
    _write_atomic(md, header + table.to_markdown(rows, metric_name))
    csv_path = out_dir / "effectiveness.csv"
    _write_atomic(csv_path, table.to_csv(rows, metric_name))
    notes = [n for s in sections for n in s.notes]
    return ReportFiles(html_path, md, csv_path, len(records), len(pareto_front(records, Baselines.from_record(record))),
                       notes)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
