"""One teacher reference latency per study: a resumed search keeps the first measurement as the
study's ``teacher.latency_ms``, applies its trials' paired speedups to it, and records each run's
own teacher latency in ``teacher_latency_runs``."""
from __future__ import annotations

import pytest

from autosqueeze.measure.latency import LatencyStats
from autosqueeze.search import study as study_mod
from autosqueeze.search.study import run_search
from autosqueeze.study_config import load_study_config
from tests.test_search_trials import load, write_study

NEW_EACH_TIME = [  # a continuous knob: every trial is a new recipe (none reuses an earlier result)
    {"method": "drop_layers", "params": {"keep": {"type": "int", "low": 1, "high": 2}}},
    {"method": "distill", "params": {"steps": 2, "temperature": {"type": "float", "low": 1.0, "high": 4.0}}},
]


def _stats(ms: float) -> LatencyStats:
    return LatencyStats(ms, 0.9 * ms, 1.1 * ms, ms, 0.0, 3, 1, 1, False)


def test_a_resumed_study_keeps_its_first_teacher_latency(tiny_model_dir, glue_dir, tmp_path, isolated_cache,
                                                         monkeypatch):
    baselines = iter([10.0, 20.0])  # the teacher "moved" between the two runs
    real = study_mod.measure_baseline

    def measure(sc):
        real(sc)
        sc.baseline = _stats(next(baselines))

    monkeypatch.setattr(study_mod, "measure_baseline", measure)
    path = write_study(tmp_path, tiny_model_dir, steps=NEW_EACH_TIME, trials=2)
    run_search(load_study_config(path), str(glue_dir))
    run_search(load_study_config(path), str(glue_dir), trials=4)  # resumed: a new process, a new baseline
    study = load(path)
    assert study.user_attrs["teacher"]["latency_ms"] == 10.0  # the figure the report quotes: the first
    runs = study.user_attrs["teacher_latency_runs"]
    assert [r["latency_ms"] for r in runs] == [10.0, 20.0] and all("at" in r and "p90_ms" in r for r in runs)
    trials = [t for t in study.trials if t.user_attrs.get("status") == "complete"]
    assert len(trials) == 4 and not any("duplicate_of" in t.user_attrs for t in trials)
    for t in trials:  # before and after the resume: on one scale, the study's reference
        assert t.user_attrs["baseline_ms"] == 10.0
        assert t.user_attrs["latency_ms"] == pytest.approx(10.0 / t.user_attrs["speedup"])
    assert study.user_attrs["int8_baseline"]["baseline_ms"] == 10.0
