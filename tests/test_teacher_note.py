"""An under-trained teacher is said in the report: the study records how much the teacher was
fine-tuned (steps, batch, passes over its training data), and a teacher that saw less than half
a pass gets a warning that its drops say little about a converged teacher."""
from __future__ import annotations

from autosqueeze.report.analysis import short_teacher_note
from autosqueeze.report.build import report_sections
from autosqueeze.report.pareto import trial_records
from autosqueeze.search.study import teacher_training
from tests.test_report import _mrpc_study


def test_the_teachers_training_is_recorded_in_passes_over_its_data():
    info = {"settings": {"steps": 200, "batch_size": 16}, "num_train_examples": 67349}
    assert teacher_training(info) == {"steps": 200, "batch_size": 16, "train_examples": 67349, "passes": 0.0475}
    assert teacher_training({"settings": {"steps": 0, "batch_size": 16}, "num_train_examples": 10}) is None
    assert teacher_training({"weights_hash": "x"}) is None  # a folder used as it is: nothing trained here


def test_a_teacher_trained_on_a_fraction_of_a_pass_is_flagged_in_the_report():
    study = _mrpc_study(0.90)
    short = {"steps": 200, "batch_size": 16, "train_examples": 3668, "passes": 0.8724}
    assert short_teacher_note({"teacher": {"training": short}}) is None
    study.set_user_attr("teacher", {**study.user_attrs["teacher"],
                                    "training": {**short, "steps": 50, "passes": 0.2181}})
    sections, _ = report_sections(study, trial_records(study), "f1")
    warnings = [n for s in sections for n in s.notes if n.startswith("warning:")]
    assert len(warnings) == 1 and "fine-tuned 50 steps at batch 16, 0.22 of one pass over its 3,668" in warnings[0]
    assert "under-trained" in warnings[0]
