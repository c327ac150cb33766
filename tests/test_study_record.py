"""The study record (search/study_record.py): one type for the study-level attributes, on the old key layout."""
from __future__ import annotations

import dataclasses

import optuna
import pytest

from autosqueeze.report.analysis import references, runtime_references, teacher_metric
from autosqueeze.report.fidelity import final_entries
from autosqueeze.report.pareto import front_summary
from autosqueeze.search.pareto import Baselines
from autosqueeze.search.storage import open_study_for_reading
from autosqueeze.search.study_record import StudyRecord
from autosqueeze.search.trial_record import trial_records

# the attribute names studies on disk hold: renaming one would make old studies unreadable
STORED = {"task", "main_metric", "profile", "runtimes", "latency_budget_ms", "search_space", "early_stop",
          "fingerprint", "deploy_variant", "majority_baseline", "int8_baseline", "ort_int8_baseline", "teacher",
          "teacher_latency_runs", "final", "finalize"}
# a study as the search wrote it before StudyRecord existed: one set_user_attr per key
OLD_LAYOUT = {
    "task": "sst2", "main_metric": "accuracy",
    "profile": {"device": "cpu", "threads": 2, "batch_size": 1, "seq_len": 128, "runtime": "torch"},
    "runtimes": ["torch", "onnxruntime"], "latency_budget_ms": None, "search_space": "/x/space.yaml",
    "early_stop": {"enabled": False},
    "fingerprint": {"cpu": {"model": "EPYC"}, "probe": {"device": "cpu", "int8_speedup": {"torch": 1.5}}},
    "deploy_variant": {"how": "default", "variant": {"exporter": "torchscript"}, "label": "plain"},
    "majority_baseline": {"metric": 0.51, "metrics": {"accuracy": 0.51}, "predicts": "label 1"},
    "int8_baseline": {"metric": 0.86, "metrics": {"accuracy": 0.86}, "latency_ms": 20.0, "speedup": 1.5,
                      "runtime": "torch"},
    "ort_int8_baseline": {"metric": 0.87, "metrics": {"accuracy": 0.87}, "latency_ms": 15.0, "speedup": 2.0,
                          "runtime": "onnxruntime", "speedup_spread": {"p10": 1.9, "p90": 2.1}},
    "teacher": {"metrics": {"accuracy": 0.88}, "latency_ms": 30.0, "path": "/t", "weights_hash": "abc",
                "search_metric": 0.875, "search_metrics": {"accuracy": 0.875}, "training": None},
    "teacher_latency_runs": [{"latency_ms": 30.0}, {"latency_ms": 31.0, "host": "h", "pid": 1}],
    "final": {"0": {"status": "complete", "metric": 0.86, "latency_ms": 10.0}, "1": {"status": "failed"}},
    "finalize": {"kendall_tau": 1.0, "finalized": 1},
    "written_by_a_later_version": {"x": 1},
}


def test_fields_are_the_stored_attribute_names():
    assert {f.name for f in dataclasses.fields(StudyRecord)} - {"extra"} == STORED


def _old_study(url: str) -> None:
    study = optuna.create_study(study_name="old", storage=url, directions=["maximize", "minimize"])
    for key, value in OLD_LAYOUT.items():
        study.set_user_attr(key, value)
    trial = study.ask()
    trial.set_user_attr("status", "complete")
    trial.set_user_attr("metric", 0.86)
    trial.set_user_attr("latency_ms", 12.0)
    trial.set_user_attr("speedup", 2.5)
    trial.set_constraint("latency_budget_ms", -1.0)
    study.tell(trial, [0.86, 12.0])


def test_a_study_written_with_the_old_keys_reads(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    _old_study(url)
    study = open_study_for_reading(url, "old")
    r = StudyRecord.from_study(study)
    assert r.task == "sst2" and r.main_metric == "accuracy" and r.runtimes == ("torch", "onnxruntime")
    assert r.latency_budget_ms is None and r.teacher_latency_ms == 30.0 and r.teacher_weights_hash == "abc"
    assert r.teacher_search_metric == 0.875 and r.reference("int8_baseline")["speedup"] == 1.5
    assert r.teacher_latency_runs is not None and len(r.teacher_latency_runs) == 2
    assert r.final_entries == {0: {"status": "complete", "metric": 0.86, "latency_ms": 10.0}}
    assert r.extra == {"written_by_a_later_version": {"x": 1}}
    assert r.to_attrs() == {k: v for k, v in OLD_LAYOUT.items() if v is not None}  # written back unchanged
    # the readers give what they gave from the raw attributes
    assert Baselines.from_record(r) == Baselines.from_attrs(study.user_attrs)
    assert [ref.key for ref in Baselines.from_record(r).refs] == ["teacher", "int8_baseline", "ort_int8_baseline"]
    assert references(r, "accuracy") == references(study.user_attrs, "accuracy")
    assert runtime_references(r) == runtime_references(study.user_attrs) != []
    assert teacher_metric(r, "accuracy") == 0.875
    assert final_entries(study) == r.final_entries
    records = trial_records(study)
    assert front_summary(records, r) == front_summary(records, study.user_attrs)


def test_write_stores_what_the_record_holds_or_exactly_the_fields_named():
    study = optuna.create_study(directions=["maximize", "minimize"])
    StudyRecord(task="rte", latency_budget_ms=5.0).write(study)
    assert study.user_attrs == {"task": "rte", "latency_budget_ms": 5.0}
    StudyRecord(teacher_latency_runs=({"latency_ms": 1.0},)).write(study)  # the others are left as they are
    assert study.user_attrs == {"task": "rte", "latency_budget_ms": 5.0, "teacher_latency_runs": [{"latency_ms": 1.0}]}
    StudyRecord(task="rte").write(study, "task", "latency_budget_ms")  # named: None is stored too (no budget)
    assert study.user_attrs["latency_budget_ms"] is None
    with pytest.raises(KeyError, match="not a study attribute"):
        StudyRecord().write(study, "nope")
    assert StudyRecord.from_study(study) == StudyRecord.of(study.user_attrs) == StudyRecord.of(
        StudyRecord.from_study(study))


def test_reference_names_the_points_only():
    r = StudyRecord.from_attrs({"int8_baseline": "not a dict"})
    assert r.reference("int8_baseline") == {} and r.reference("teacher") == {}
    with pytest.raises(KeyError):
        r.reference("task")
