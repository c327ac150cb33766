"""The trial record (search/trial_record.py) and opening a study for reading (search/storage.py)."""
from __future__ import annotations

import dataclasses

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from autosqueeze.errors import StorageError
from autosqueeze.measure import LatencyStats
from autosqueeze.measure.paired import Timing
from autosqueeze.search.storage import open_study_for_reading
from autosqueeze.search.trial_record import TrialRecord, trial_records

# the attribute names studies on disk hold: renaming one would make old studies unreadable
STORED = {"worker", "methods", "recipe", "runtime", "duplicate_of", "status", "error", "metric", "metrics",
          "latency_ms", "speedup", "speedup_spread", "latency", "latency_measured", "latency_measured_ms",
          "teacher_paired_ms", "baseline_ms", "probe_s", "trial_s", "onnx", "early_stop", "stopped_at", "exit_stats",
          "size", "size_pct", "dominated_by", "below_floor"}
RECIPE = {"format": 1, "steps": [{"method": "drop_layers", "params": {"keep": 2}}], "seed": 0}


def test_fields_are_the_stored_attribute_names():
    names = {f.name for f in dataclasses.fields(TrialRecord)} - {"number", "state", "feasible", "extra"}
    assert names == STORED | {"fidelity", "search"}  # the last two: final records of a finalized study
    stats = LatencyStats(median_ms=2.0, p10_ms=1.9, p90_ms=2.5, mean_ms=2.0, std_ms=0.1, repeats=10, warmup=1,
                         threads=1, noisy=False)
    spread = {"speedup_p10": 3.5, "speedup_p90": 4.5} if "speedup_p10" in {f.name for f in dataclasses.fields(Timing)} \
        else {}
    timing = Timing(stats, speedup=4.0, latency_ms=2.5, teacher_ms=8.0, **spread)
    assert set(timing.to_result(10.0)) <= STORED  # what the objective stores from a timing


def test_written_and_read_back_through_optuna():
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    TrialRecord(worker={"host": "h", "pid": 1}).write(trial)
    TrialRecord(methods=("drop_layers",), recipe=RECIPE).write(trial)
    result = {"status": "complete", "metric": 0.8, "metrics": {"accuracy": 0.8}, "latency_ms": 2.5, "speedup": 4.0,
              "size_pct": {"total": 50.0}, "trial_s": 1.5, "new_in_a_later_version": [1, 2]}
    TrialRecord(recipe=RECIPE).with_result(result).write(trial)
    trial.set_constraint("latency_budget_ms", -1.0)
    study.tell(trial, [0.8, 2.5])
    frozen = study.trials[0]
    assert frozen.user_attrs == {"worker": {"host": "h", "pid": 1}, "methods": ["drop_layers"], "recipe": RECIPE,
                                 **result}
    r = TrialRecord.from_trial(frozen)
    assert (r.number, r.state, r.status, r.feasible) == (0, "COMPLETE", "complete", True)
    assert r.methods == ("drop_layers",) and r.metric == 0.8 and r.size_pct == {"total": 50.0}
    assert r.extra == {"new_in_a_later_version": [1, 2]}  # unknown attributes are kept
    assert r.to_attrs() == frozen.user_attrs == r.attrs  # and written back unchanged
    assert r.label == "drop_layers" and r.recipe_summary == "drop_layers(keep=2)"
    assert r.to_recipe().steps[0].method == "drop_layers"
    assert trial_records(study) == [r]


def test_older_and_unfinished_trials_read_with_missing_attributes():
    dist = {"x": CategoricalDistribution([0, 1])}
    old = create_trial(state=TrialState.COMPLETE, params={"x": 0}, distributions=dist, values=[0.7, 3.0],
                       user_attrs={"status": "complete", "metric": 0.7, "latency_ms": 3.0,
                                   "recipe": {**RECIPE, "profile": {"runtime": "onnxruntime"}}})
    failed = create_trial(state=TrialState.FAIL, params={"x": 1}, distributions=dist, user_attrs={"metric": 0.9})
    over = create_trial(state=TrialState.COMPLETE, params={"x": 1}, distributions=dist, values=[0.0, 9.0],
                        constraints={"latency_budget_ms": 4.0}, user_attrs={"status": "over_budget", "latency_ms": 9.0})
    r_old, r_failed, r_over = (TrialRecord.from_trial(t) for t in (old, failed, over))
    assert r_old.feasible and r_old.runtime is None and r_old.size_pct is None and r_old.methods == ()
    assert r_old.deployed_runtime == "onnxruntime"  # from the recipe's profile, as studies before the attribute
    assert r_failed.status == "failed" and r_failed.metric is None and not r_failed.feasible
    assert r_over.status == "over_budget" and not r_over.feasible and r_over.latency_ms == 9.0


def test_a_record_writes_only_what_it_holds():
    assert TrialRecord(status="failed", error="ValueError: x").to_attrs() == {"status": "failed",
                                                                              "error": "ValueError: x"}
    assert TrialRecord().to_attrs() == {}


def test_open_study_for_reading_builds_no_sampler(tmp_path, monkeypatch):
    import autosqueeze.search.study as study_mod

    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="s", storage=url, directions=["maximize", "minimize"])
    monkeypatch.setattr(study_mod, "make_sampler", lambda *a, **k: pytest.fail("a reader built a sampler"))
    assert open_study_for_reading(url, "s").study_name == "s"
    with pytest.raises(FileNotFoundError, match="no study 'other'.*autosqueeze search study.yaml"):
        open_study_for_reading(url, "other", "study.yaml")
    with pytest.raises(StorageError, match="no study database"):
        open_study_for_reading(f"sqlite:///{tmp_path / 'absent.db'}", "s")
