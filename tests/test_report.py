"""Report data on a hand-made study: front, selection, history, importances, method counts, table."""
from __future__ import annotations

import csv
import io
import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from autosqueeze.report import table
from autosqueeze.report.analysis import (
    best_single_method,
    compression_methods,
    history,
    method_frequency,
    param_importances,
    references,
    status_counts,
    teacher_metric,
)
from autosqueeze.report.build import report_sections
from autosqueeze.report.pareto import NoTrialWithinBudget, pareto_front, select, trial_records
from autosqueeze.report.plots import write_html

optuna.logging.set_verbosity(optuna.logging.WARNING)
TEACHER_MS = 20.0
STEPS = {
    "drop_layers": {"method": "drop_layers", "params": {"keep": 3}},
    "distill": {"method": "distill", "params": {"steps": 40}},
    "quantize_dynamic": {"method": "quantize_dynamic", "params": {}},
    "prune_structured": {"method": "prune_structured", "params": {}},
}
DISTS = {"drop_layers.on": CategoricalDistribution([True, False]), "drop_layers.keep": IntDistribution(1, 5),
         "quantize_dynamic.on": CategoricalDistribution([True, False])}


def _trial(methods: list[str], metric: float | None, latency: float, status: str = "complete",
           state: TrialState = TrialState.COMPLETE, budget: float = 15.0, keep: int = 3):
    params = {"drop_layers.on": "drop_layers" in methods, "quantize_dynamic.on": "quantize_dynamic" in methods}
    if "drop_layers" in methods:
        params["drop_layers.keep"] = keep
    ua = {"methods": methods, "status": status, "latency_ms": latency, "speedup": TEACHER_MS / latency,
          "recipe": {"format": 1, "steps": [STEPS[m] for m in methods]}}
    if metric is not None and status in ("complete", "stopped_early"):
        ua["metric"] = metric
    if status == "complete":
        ua["size_pct"] = {"total": 100.0 - 10 * len(methods), "non_embedding": 100.0 - 20 * len(methods)}
    kw = {}
    if state == TrialState.COMPLETE:
        kw = {"values": [metric if metric is not None else 0.0, latency],
              "constraints": {"latency_budget_ms": latency - budget}}
    return create_trial(state=state, params=params, distributions={k: DISTS[k] for k in params}, user_attrs=ua, **kw)


def fake_study(with_int8: bool = True) -> optuna.Study:
    """Eight trials covering every status; teacher 0.90 at 20 ms; budget 15 ms."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("main_metric", "accuracy")
    study.set_user_attr("latency_budget_ms", 15.0)
    study.set_user_attr("teacher", {"metrics": {"accuracy": 0.95}, "search_metric": 0.90, "latency_ms": TEACHER_MS})
    if with_int8:
        study.set_user_attr("int8_baseline", {"metric": 0.89, "latency_ms": 10.0, "speedup": 2.0})
    study.add_trials([
        _trial(["drop_layers", "distill"], 0.87, 10.0),  # 0: dominated by 1
        _trial(["quantize_dynamic"], 0.885, 9.5),  # 1: front
        _trial(["drop_layers", "distill", "quantize_dynamic"], 0.85, 4.0, keep=2),  # 2: front (fastest)
        _trial(["prune_structured"], None, 18.0, status="over_budget"),  # 3
        _trial(["drop_layers"], None, 5.0, status="failed", state=TrialState.FAIL),  # 4
        _trial(["drop_layers", "distill"], 0.88, 12.0, keep=4),  # 5: best drop_layers alone, not on the front
        _trial(["drop_layers", "distill"], 0.60, 5.0, status="stopped_early", keep=1),  # 6: not feasible
        _trial(["quantize_dynamic"], 0.885, 9.5),  # 7: same point as 1
    ])
    return study


@pytest.fixture()
def records():
    return trial_records(fake_study())


def test_records_and_front(records):
    by = {r.number: r for r in records}
    assert [r.number for r in records if r.feasible] == [0, 1, 2, 5, 7]
    assert by[3].status == "over_budget" and by[4].status == "failed" and by[6].status == "stopped_early"
    assert [r.number for r in pareto_front(records)] == [2, 1]  # by latency; 7 duplicates 1
    assert by[2].recipe_summary == "drop_layers(keep=3) + distill(steps=40) + quantize_dynamic()"
    assert status_counts(records) == {"complete": 5, "over_budget": 1, "failed": 1, "stopped_early": 1}


@pytest.mark.parametrize("kw, number", [
    ({}, 1), ({"latency_budget_ms": 100}, 1), ({"latency_budget_ms": 9.5}, 1), ({"latency_budget_ms": 9.0}, 2),
    ({"min_speedup": 2.0}, 1), ({"min_speedup": 3.0}, 2), ({"trial_number": 5}, 5),
])
def test_select(records, kw, number):
    assert select(records, **kw).number == number


@pytest.mark.parametrize("kw, message", [
    ({"latency_budget_ms": 1.0}, "the fastest is trial 2 at 4.00 ms"),
    ({"min_speedup": 50.0}, "no Pareto trial meets the budget (speedup >= 50.0x)"),
    ({"trial_number": 3}, "status over_budget"),
    ({"trial_number": 6}, "status stopped_early"),
    ({"trial_number": 99}, "no trial 99"),
    ({"trial_number": 1, "latency_budget_ms": 5.0}, "not both"),
    ({"latency_budget_ms": -1.0}, "positive"),
])
def test_select_refuses_with_a_reason(records, kw, message):
    with pytest.raises(NoTrialWithinBudget) as err:
        select(records, **kw)
    assert message in str(err.value)


def test_select_on_an_empty_study():
    with pytest.raises(NoTrialWithinBudget, match="no completed feasible trial"):
        select([], latency_budget_ms=10)


def test_history_tracks_the_best_feasible_values(records):
    points = history(records)
    assert [p.number for p in points] == list(range(8))
    assert [p.best_metric for p in points] == [0.87, 0.885, 0.885, 0.885, 0.885, 0.885, 0.885, 0.885]
    assert [p.best_latency_ms for p in points][:3] == [10.0, 9.5, 4.0]
    assert points[6].metric == 0.60 and points[6].best_metric == 0.885  # stopped early: drawn, never "best"


def test_method_frequency_and_single_methods(records):
    front = pareto_front(records)
    counts = {c.method: c for c in method_frequency(front, records)}
    assert counts["quantize_dynamic"].on_front == 2 and counts["quantize_dynamic"].front_share == 1.0
    assert counts["drop_layers"].on_front == 1 and counts["drop_layers"].in_feasible == 3
    assert counts["drop_layers"].in_trials == 5 and counts["prune_structured"].on_front == 0
    assert compression_methods(("drop_layers", "distill")) == ("drop_layers",)
    assert compression_methods(("distill",)) == ("distill",)  # nothing else: the training step is the method
    assert compression_methods(("qat", "quantize_dynamic")) == ("quantize_dynamic",)
    assert compression_methods(("not_a_method",)) == ("not_a_method",)
    best = best_single_method(records)
    assert {m: r.number for m, r in best.items()} == {"drop_layers": 5, "quantize_dynamic": 1}


def test_references_prefer_the_teacher_metric_on_the_search_data():
    attrs = fake_study().user_attrs
    assert teacher_metric(attrs, "accuracy") == 0.90
    refs = references(attrs, "accuracy")
    assert [(r.name, r.latency_ms, r.metric) for r in refs] == [
        ("teacher", 20.0, 0.90), ("int8 baseline (quantize_dynamic)", 10.0, 0.89)]
    assert [r.name for r in references(fake_study(with_int8=False).user_attrs, "accuracy")] == ["teacher"]
    assert references({}, "accuracy") == []
    assert teacher_metric({"teacher": {"metrics": {"accuracy": 0.7}}}, "accuracy") == 0.7


def test_effectiveness_rows(records):
    attrs = fake_study().user_attrs
    rows = table.effectiveness_rows(pareto_front(records), records, 0.90, references(attrs, "accuracy"))
    assert [(r["trial"], r["role"]) for r in rows] == [
        ("-", "reference"), ("-", "reference"), (1, "pareto, best quantize_dynamic alone"), (2, "pareto"),
        (5, "best drop_layers alone")]
    teacher, _, t1, t2, t5 = rows
    assert teacher["size_%"] == 100.0 and teacher["delta_pts"] == 0.0 and teacher["speedup"] == 1.0
    assert t1["metric"] == 88.5 and t1["delta_pts"] == -1.5 and t1["speedup"] == round(20 / 9.5, 2)
    assert t2["size_%"] == 70.0 and t2["size_no_emb_%"] == 40.0 and t5["latency_ms"] == 12.0
    md = table.to_markdown(rows, "accuracy")
    assert md.splitlines()[0].startswith("| trial | role | methods | size_% |") and "| accuracy |" in md
    assert "nan" not in md.lower()  # missing sizes of the int8 reference are blank cells
    parsed = list(csv.DictReader(io.StringIO(table.to_csv(rows, "accuracy"))))
    assert len(parsed) == 5 and parsed[2]["accuracy"] == "88.5" and parsed[1]["size_%"] == ""
    assert table.effectiveness_rows([], [], None, []) == []


def test_importances_need_enough_feasible_trials(records):
    imps = param_importances(fake_study(), records, "accuracy", min_trials=6)  # the study has 5 feasible
    assert [i.target for i in imps] == ["accuracy", "latency"]
    assert all(not i.values and "5 feasible trial(s)" in i.note and "at least 6" in i.note for i in imps)
    assert all(i.values and i.note is None for i in param_importances(fake_study(), records, "accuracy"))


def _scored_study(n: int, constant: bool = False) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial):
        x = trial.suggest_int("x", 1, 8)
        on = trial.suggest_categorical("q.on", [True, False])
        if on:  # conditional parameter
            trial.suggest_float("q.scale", 0.1, 1.0)
        trial.set_user_attr("status", "complete")
        trial.set_constraint("latency_budget_ms", -1.0)
        return (0.5 if constant else 0.5 + 0.05 * x), 10.0 / (2 if on else 1)

    study.optimize(objective, n_trials=n)
    return study


def test_importances_attribute_each_objective_to_its_parameter():
    study = _scored_study(16)
    metric, latency = param_importances(study, trial_records(study), "accuracy")
    assert metric.note is None and max(metric.values, key=metric.values.get) == "x"
    assert latency.note is None and set(latency.values) <= {"x", "q.on", "q.scale"}  # PED-ANOVA on 16 trials: noisy
    flat = _scored_study(8, constant=True)
    metric, _ = param_importances(flat, trial_records(flat), "accuracy")
    assert not metric.values and "same accuracy" in metric.note


def test_report_page_is_self_contained(tmp_path):
    study = fake_study()
    sections, rows = report_sections(study, trial_records(study), "accuracy")
    assert [s.title for s in sections][0].startswith("Pareto front") and len(rows) == 5
    assert any("over the latency budget" in n for s in sections for n in s.notes)
    out = write_html(sections, tmp_path / "r" / "report.html", "t", ["meta line"])
    page = out.read_text()
    assert page.count("<script type=\"text/javascript\">/**") <= 1  # plotly.js inlined once
    assert "plotly" in page.lower() and "<script src=" not in page  # nothing fetched: opens offline
    assert "Effectiveness" in page and "best drop_layers alone" in page and "meta line" in page
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]  # no temporary file left


def test_report_of_a_study_without_trials(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize"])
    sections, rows = report_sections(study, [], "metric")
    assert rows == [] and any("front is empty" in n for n in sections[0].notes)
    assert write_html(sections, tmp_path / "report.html", "empty").is_file()
    assert not math.isnan(len(sections))


def _mrpc_study(teacher_f1: float) -> optuna.Study:
    """An MRPC study whose trials and references carry both official metrics, and the majority floor."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("task", "mrpc")
    study.set_user_attr("main_metric", "f1")
    study.set_user_attr("teacher", {"search_metric": teacher_f1, "search_metrics": {"f1": teacher_f1, "accuracy": 0.70},
                                    "latency_ms": TEACHER_MS})
    study.set_user_attr("int8_baseline", {"metric": teacher_f1 - 0.01, "metrics": {"f1": teacher_f1 - 0.01,
                                                                                   "accuracy": 0.69},
                                          "latency_ms": 10.0, "speedup": 2.0})
    study.set_user_attr("majority_baseline", {"metric": 0.812, "metrics": {"f1": 0.812, "accuracy": 0.684},
                                              "predicts": "class '1'", "dev_examples": 408})
    trial = _trial(["quantize_dynamic"], 0.818, 9.5)
    trial.set_user_attr("metrics", {"f1": 0.818, "accuracy": 0.6912})
    study.add_trial(trial)
    return study


def test_reports_show_every_official_metric_and_the_majority_floor(tmp_path):
    from autosqueeze.report.analysis import official_metrics, trivial_teacher_note
    from autosqueeze.report.plots import pareto_figure

    study = _mrpc_study(0.819)
    attrs, records = study.user_attrs, trial_records(study)
    assert official_metrics(attrs, "f1") == ["accuracy"]
    assert official_metrics({"task": "mnli"}, "accuracy") == ["accuracy_mismatched"]
    assert official_metrics({"task": "stsb"}, "pearson") == ["spearmanr"] and official_metrics({}, "f1") == []
    refs = references(attrs, "f1")
    assert [r.name for r in refs] == ["teacher", "int8 baseline (quantize_dynamic)", "majority class"]
    assert refs[2].latency_ms is None and refs[2].metrics["accuracy"] == 0.684
    sections, rows = report_sections(study, records, "f1")
    floor = next(r for r in rows if r["methods"] == "majority class")
    assert floor["metric"] == 81.2 and math.isnan(floor["latency_ms"])
    assert floor["accuracy"] == 68.4 and floor["delta_pts"] == -0.7 and "always predicting class '1'" in floor["recipe"]
    assert next(r for r in rows if r["trial"] == 0)["accuracy"] == 69.12
    md = table.to_markdown(rows, "f1")
    assert md.splitlines()[0].startswith("| trial | role | methods | size_% | size_no_emb_% | speedup | latency_ms | "
                                         "f1 | delta_pts | accuracy | recipe |")
    parsed = list(csv.DictReader(io.StringIO(table.to_csv(rows, "f1"))))
    assert [p["accuracy"] for p in parsed] == ["70", "69", "68.4", "69.12"]
    warning = [n for s in sections for n in s.notes if n.startswith("warning:")]
    assert len(warning) == 1 and "within 1 point" in warning[0] and "81.20" in warning[0], warning
    assert trivial_teacher_note(references(_mrpc_study(0.90).user_attrs, "f1"), "f1") is None
    fig = pareto_figure(records, pareto_front(records), "f1", None, refs)
    line = next(t for t in fig.data if t.name == "majority class")
    assert line.mode == "lines" and list(line.y) == [0.812, 0.812] and "accuracy: 0.6840" in line.text[0]
    trial_hover = next(t for t in fig.data if t.name == "quantize_dynamic").text[0]
    assert "f1: 0.8180" in trial_hover and "accuracy: 0.6912" in trial_hover
    page = write_html(sections, tmp_path / "report.html", "t").read_text()
    assert "within 1 point" in page and "majority class" in page


def test_majority_reference_is_the_floor_of_a_constant_predictor():
    from autosqueeze.data import TaskData
    from autosqueeze.measure.metrics import majority_reference
    from autosqueeze.tasks import TASKS, Example

    mrpc = [Example(("a", "b"), y) for y in (1, 1, 1, 0)]
    ref = majority_reference(TaskData(TASKS["mrpc"], None, [], mrpc))
    assert ref["predicts"] == "class '1'" and ref["metrics"]["accuracy"] == 0.75
    assert ref["metric"] == ref["metrics"]["f1"] == pytest.approx(2 * 0.75 / 1.75) and ref["dev_examples"] == 4
    mnli = TaskData(TASKS["mnli"], None, [], [Example(("a", "b"), y) for y in (2, 2, 0)])
    ref = majority_reference(mnli, {"mismatched": [Example(("a", "b"), y) for y in (0, 2, 1, 1)]})
    assert ref["metrics"] == {"accuracy": pytest.approx(2 / 3), "accuracy_mismatched": 0.25}
    ref = majority_reference(TaskData(TASKS["stsb"], None, [], [Example(("a", "b"), y) for y in (1.0, 2.0, 4.5)]))
    assert ref["predicts"].startswith("the mean score 2.5") and ref["metrics"] == {"pearson": 0.0, "spearmanr": 0.0}


def test_tables_and_hover_show_the_speedup_spread(tmp_path):
    """A point timed in pairs shows the p10–p90 of its per-pair ratios beside its speedup; one
    without a stored spread (older studies) shows the speedup alone."""
    from autosqueeze.report.plots import pareto_figure

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("main_metric", "accuracy")
    study.set_user_attr("teacher", {"search_metric": 0.90, "latency_ms": TEACHER_MS})
    study.set_user_attr("int8_baseline", {"metric": 0.89, "latency_ms": 10.0, "speedup": 2.0,
                                          "speedup_spread": {"p10": 1.8, "p90": 2.2}})
    spread = _trial(["quantize_dynamic"], 0.885, 6.25)  # speedup 3.2
    spread.set_user_attr("speedup_spread", {"p10": 2.9, "p90": 3.4})
    study.add_trials([spread, _trial(["drop_layers", "distill"], 0.80, 4.0)])
    records = trial_records(study)
    sections, rows = report_sections(study, records, "accuracy")
    by_trial = {r["trial"]: r for r in rows if r["role"] != "reference"}
    assert by_trial[0]["speedup"] == 3.2 and (by_trial[0]["speedup_p10"], by_trial[0]["speedup_p90"]) == (2.9, 3.4)
    assert math.isnan(by_trial[1]["speedup_p10"])
    md = table.to_markdown(rows, "accuracy")
    assert "| 3.2 (2.90–3.40) |" in md and "| 5 |" in md  # trial 1 (no spread): the number alone
    assert "| 2 (1.80–2.20) |" in md and "| 1 |" in md  # the int8 reference's spread; the teacher's 1
    assert md.splitlines()[0].startswith("| trial | role | methods | size_% | size_no_emb_% | speedup | latency_ms |")
    parsed = list(csv.DictReader(io.StringIO(table.to_csv(rows, "accuracy"))))
    assert list(parsed[0])[5:8] == ["speedup", "speedup_p10", "speedup_p90"]
    row0 = next(p for p in parsed if p["trial"] == "0")
    assert (row0["speedup"], row0["speedup_p10"], row0["speedup_p90"]) == ("3.2", "2.9", "3.4")
    assert next(p for p in parsed if p["trial"] == "1")["speedup_p10"] == ""
    assert "<td>3.2 (2.90–3.40)</td>" in table.to_html(rows, "accuracy")
    fig = pareto_figure(records, pareto_front(records), "accuracy")
    hover = next(t for t in fig.data if t.name == "quantize_dynamic").text[0]
    assert "3.20x, p10–p90 2.90–3.40x" in hover
