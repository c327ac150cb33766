"""``autosqueeze report``: study → Pareto data → figures and tables → files."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..search.study import open_study
from ..study_config import StudyConfig
from . import table
from .pareto import pareto_front, trial_records
from .plots import pareto_figure, write_html


@dataclass
class ReportFiles:
    html: Path
    markdown: Path
    csv: Path
    n_trials: int
    n_front: int


def write_report(config: StudyConfig, out_dir: Path | None = None, storage: str | None = None) -> ReportFiles:
    study = open_study(config, storage, create=False)
    records = trial_records(study)
    front = pareto_front(records)
    ua = study.user_attrs
    metric_name = ua.get("main_metric", "metric")
    teacher = ua.get("teacher", {})
    teacher_metric = teacher.get("metrics", {}).get(metric_name, float("nan"))
    refs = {}
    if teacher.get("latency_ms"):
        refs["teacher"] = (teacher["latency_ms"], teacher_metric)
    fig = pareto_figure(records, front, metric_name, ua.get("latency_budget_ms"), refs)
    rows = table.effectiveness_rows(front, teacher_metric)
    out_dir = out_dir or config.report_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"autosqueeze study {config.name}: {config.task}, {len(records)} trials"
    html_path = write_html([fig], [table.to_html(rows, metric_name)], out_dir / "report.html", title)
    md = out_dir / "effectiveness.md"
    md.write_text(table.to_markdown(rows, metric_name))
    csv_path = out_dir / "effectiveness.csv"
    csv_path.write_text(table.to_csv(rows))
    return ReportFiles(html_path, md, csv_path, len(records), len(front))
