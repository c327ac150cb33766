"""A front a user can trust (issue 26): the study's references are points of the front, the floor is
flagged, no trial is spent on the empty recipe or on a step the machine cannot run faster, and a
repeated recipe is not a new trial. Hand-made studies and spaces; one tiny end-to-end search."""
from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import FixedTrial, TrialState, create_trial

from autosqueeze.report import table
from autosqueeze.report.analysis import official_metrics, references, runtime_references
from autosqueeze.report.build import report_sections
from autosqueeze.report.pareto import Baselines, NoTrialWithinBudget, front_summary, pareto_front, select
from autosqueeze.search.machine import drop_slow_steps, probe_machine
from autosqueeze.search.space import ONLY_STEP, load_space
from autosqueeze.search.study import finished_trials
from autosqueeze.search.trial_record import trial_records

optuna.logging.set_verbosity(optuna.logging.WARNING)
TEACHER_MS = 20.0


def _trial(methods: list[str], metric: float, latency: float, **attrs):
    ua = {"methods": methods, "status": "complete", "metric": metric, "latency_ms": latency,
          "speedup": TEACHER_MS / latency, "metrics": {"f1": metric, "accuracy": metric - 0.1},
          "recipe": {"format": 1, "steps": [{"method": m, "params": {}} for m in methods]}, **attrs}
    return create_trial(state=TrialState.COMPLETE, values=[metric, latency], user_attrs=ua,
                        constraints={"latency_budget_ms": 0.0})


def _study(*trials, storage: str | None = None) -> optuna.Study:
    """MRPC-like: teacher 0.90 at 20 ms, PyTorch int8 0.89 at 10 ms, ONNX Runtime int8 0.889 at 8 ms
    (2.5x), majority-class floor 0.812."""
    study = optuna.create_study(directions=["maximize", "minimize"], storage=storage, study_name="t")
    attrs = {
        "task": "mrpc", "main_metric": "f1",
        "teacher": {"search_metric": 0.90, "search_metrics": {"f1": 0.90, "accuracy": 0.85}, "latency_ms": TEACHER_MS},
        "int8_baseline": {"metric": 0.89, "metrics": {"f1": 0.89, "accuracy": 0.84}, "latency_ms": 10.0,
                          "speedup": 2.0},
        "ort_int8_baseline": {"metric": 0.889, "metrics": {"f1": 0.889, "accuracy": 0.838}, "latency_ms": 8.0,
                              "speedup": 2.5},
        "majority_baseline": {"metric": 0.812, "metrics": {"f1": 0.812, "accuracy": 0.684}, "predicts": "class '1'"},
    }
    for k, v in attrs.items():
        study.set_user_attr(k, v)
    study.add_trials(list(trials))
    return study


DOMINATED = (_trial(["drop_layers", "distill"], 0.85, 9.0),  # 0: the ORT int8 reference dominates it
             _trial(["prune_structured"], 0.86, 12.0),  # 1: both int8 references dominate it
             _trial(["drop_layers", "distill"], 0.80, 2.0),  # 2: fastest, but below the floor
             _trial(["cast_precision"], 0.70, 30.0))  # 3: slower and worse than the teacher (and below the floor)


def test_a_reference_dominated_trial_is_off_the_front_and_export_names_the_reference():
    good = _trial(["drop_layers", "distill", "quantize_dynamic"], 0.88, 5.0)  # 4: the one point worth shipping
    study = _study(*DOMINATED, good)
    records, baselines = trial_records(study), Baselines.from_attrs(study.user_attrs)
    assert [r.key for r in baselines.refs] == ["teacher", "int8_baseline", "ort_int8_baseline"]
    assert [r.number for r in pareto_front(records)] == [2, 4]  # trials alone: the one below the floor looks Pareto
    assert [r.number for r in pareto_front(records, baselines)] == [4]
    alone = trial_records(_study(*DOMINATED))
    assert [r.number for r in pareto_front(alone)] == [2, 0, 1] and pareto_front(alone, baselines) == []
    assert select(records, baselines=baselines).number == 4
    with pytest.raises(NoTrialWithinBudget) as err:
        select(records, trial_number=0, baselines=baselines)
    assert "trial 0" in str(err.value) and "dominated by the teacher's ONNX Runtime int8 copy (2.50x, 88.90%)" \
        in str(err.value)
    with pytest.raises(NoTrialWithinBudget, match="at or below the majority-class floor"):
        select(records, trial_number=2, baselines=baselines)


def test_export_refuses_when_every_trial_under_the_budget_is_dominated(tmp_path, capsys):
    from autosqueeze.cli import main

    _study(*DOMINATED, storage=f"sqlite:///{tmp_path / 't.db'}")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "task": "mrpc", "trials": 4, "search_space": "quick"}))
    out = tmp_path / "recipe.yaml"
    assert main(["export", str(path), "-o", str(out), "--latency-budget", "12"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert "the teacher's ONNX Runtime int8 copy (2.50x, 88.90%) dominates every trial under 12 ms" in err[0]
    assert "the others score at or below the majority-class floor" in err[0] and "deploy it" in err[0]
    assert main(["export", str(path), "-o", str(out)]) == 2  # no budget: the most accurate trial is dominated too
    assert "dominates every trial" in capsys.readouterr().err
    assert main(["export", str(path), "-o", str(out), "--max-drop", "5"]) == 2
    assert "within 5 points of the teacher" in capsys.readouterr().err
    assert not out.exists()


def test_a_budget_no_trial_meets_and_an_untrained_teacher():
    study = _study(*DOMINATED)
    records = trial_records(study)
    with pytest.raises(NoTrialWithinBudget) as err:
        select(records, latency_budget_ms=1.0, baselines=Baselines.from_attrs(study.user_attrs))
    assert "no Pareto trial meets the budget (latency <= 1.0 ms)" in str(err.value) \
        and "dominates every trial of the study" in str(err.value)
    study.set_user_attr("teacher", {"search_metric": 0.80, "latency_ms": TEACHER_MS})  # below the floor itself
    baselines = Baselines.from_attrs(study.user_attrs)
    assert baselines.trivial_teacher and not baselines.refs and baselines.floor is None
    assert [r.number for r in pareto_front(records, baselines)] == [2, 0, 1]  # the trials' own front
    sections, _ = report_sections(study, records, "f1")
    assert any("the front is the trials' own" in n for n in sections[0].notes)


def test_the_floor_is_flagged_in_the_table_and_the_report():
    good = _trial(["quantize_dynamic"], 0.88, 5.0)
    study = _study(*DOMINATED, good)
    attrs, records = study.user_attrs, trial_records(study)
    baselines = Baselines.from_attrs(attrs)
    assert [r.number for r in records if baselines.below_floor(r)] == [2, 3]
    sections, rows = report_sections(study, records, "f1")
    by_trial = {r["trial"]: r for r in rows if r["role"] != "reference"}
    assert by_trial[2]["role"] == "below the floor" and by_trial[2]["below_floor"] == "yes"
    assert by_trial[4]["role"].startswith("pareto") and by_trial[4]["below_floor"] == "" \
        and by_trial[4]["dominated_by"] == ""
    single = by_trial[1]  # the best prune_structured alone: shown, with who dominates it
    assert single["role"] == "best prune_structured alone"
    assert single["dominated_by"] == "the teacher's PyTorch int8 copy"
    notes = sections[0].notes
    assert any("2 trial(s) score at or below the majority-class floor (81.20)" in n and "trials 2, 3" in n
               for n in notes), notes
    assert any("dominated by the teacher's ONNX Runtime int8 copy" in n for n in notes), notes
    parsed = list(csv.DictReader(io.StringIO(table.to_csv(rows, "f1"))))
    assert list(parsed[0])[-2:] == ["below_floor", "dominated_by"]
    assert "at or below the majority-class floor" in next(t.name for t in sections[0].figure.data
                                                          if t.name.startswith("at or below"))


def test_every_reference_row_carries_every_official_metric():
    attrs = _study().user_attrs
    refs = references(attrs, "f1") + runtime_references(attrs)
    rows = table.effectiveness_rows([], [], 0.90, refs, official_metrics(attrs, "f1"))
    assert [(r["methods"], r["accuracy"]) for r in rows] == [
        ("teacher", 85.0), ("int8 baseline (quantize_dynamic)", 84.0), ("majority class", 68.4),
        ("int8 baseline (ONNX Runtime dynamic int8)", 83.8)]


def test_the_progress_line_shows_what_helps_without_a_budget():
    study = _study(_trial(["quantize_dynamic"], 0.895, 8.0), _trial(["drop_layers", "distill"], 0.893, 4.0))
    line = front_summary(trial_records(study), study.user_attrs)
    assert line == "front 2 points; fastest within 1 point of the teacher: 5.00x at 0.8930 (trial 1, -0.70 pts)"
    study.set_user_attr("latency_budget_ms", 6.0)
    assert "best within 6 ms: 0.8930 (trial 1, 5.00x)" in front_summary(trial_records(study), study.user_attrs)


SPACE = [
    {"method": "drop_layers", "optional": True, "params": {"keep": {"type": "int", "low": 1, "high": 2}}},
    {"method": "distill", "requires_any": ["drop_layers"], "params": {"steps": 2}},
    {"method": "quantize_dynamic", "choice": "quantize", "optional": True},
    {"method": "cast_precision", "choice": "quantize", "optional": True, "params": {"dtype": "bf16"}},
]


def _space(tmp_path: Path, steps: list | None = None):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"steps": steps or SPACE}))
    return load_space(path)


def test_the_empty_recipe_is_never_sampled(tmp_path):
    space = _space(tmp_path)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), directions=["maximize", "minimize"])
    forced = 0
    for _ in range(60):
        trial = study.ask()
        recipe = space.suggest(trial)
        assert recipe.steps, trial.params
        recipe.validate()
        forced += ONLY_STEP in trial.params
        study.tell(trial, [0.5, 1.0])
    assert forced > 0  # the sampler did switch everything off; one step was switched on instead
    off = {"drop_layers.on": False, "choice.quantize": "none"}
    with pytest.raises(ValueError):  # FixedTrial: the all-off trial must answer choice.only_step
        space.suggest(FixedTrial(off))


def test_bf16_is_dropped_on_a_cpu_without_bf16_units(tmp_path, caplog):
    space = _space(tmp_path)
    assert probe_machine(features=["avx2", "avx512f"]) == {"device": "cpu", "bf16_units": False,
                                                           "units_rule": "registry"}
    assert probe_machine(features=["avx2", "amx_bf16"])["bf16_units"] is True
    assert probe_machine(features=[])["bf16_units"] is None  # unknown CPU: nothing is dropped
    with caplog.at_level(logging.WARNING, logger="autosqueeze"):
        smaller = drop_slow_steps(space, probe_machine(features=["avx2"]))
    assert [s.id for s in smaller.steps] == ["drop_layers", "distill", "quantize_dynamic"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "dropped cast_precision (cast_precision)" in lines[0] \
        and "without bf16 units" in lines[0], lines
    for probe in ({"device": "cpu", "bf16_units": True}, {"device": "cpu", "bf16_units": None}, None,
                  {"device": "cuda", "bf16_units": False}):
        assert drop_slow_steps(space, probe) is space
    required = _space(tmp_path, [{"method": "drop_layers", "optional": True, "params": {"keep": 1}},
                                 {"method": "cast_precision", "params": {"dtype": "bf16"}}])
    assert len(drop_slow_steps(required, {"device": "cpu", "bf16_units": False}).steps) == 2  # every trial needs it


def test_a_repeated_recipe_is_not_a_new_trial():
    study = _study(_trial(["quantize_dynamic"], 0.88, 5.0), _trial(["quantize_dynamic"], 0.88, 5.0, duplicate_of=0))
    assert len(study.trials) == 2 and finished_trials(study) == 1


def test_a_search_drops_bf16_records_the_probe_and_flags_its_trials(tiny_model_dir, glue_dir, tmp_path,
                                                                     isolated_cache, caplog):
    from autosqueeze.search.study import run_search
    from autosqueeze.study_config import load_study_config
    from tests.test_search_trials import load, write_study

    path = write_study(tmp_path, tiny_model_dir, SPACE, trials=2)
    with caplog.at_level(logging.WARNING, logger="autosqueeze"):
        run_search(load_study_config(path), str(glue_dir), machine_probe={"device": "cpu", "bf16_units": False})
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 1 and "cast_precision" in dropped[0]
    study = load(path)
    assert study.user_attrs["fingerprint"]["probe"] == {"device": "cpu", "bf16_units": False}
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) >= 2
    for t in done:
        assert t.user_attrs["methods"] and "cast_precision" not in t.user_attrs["methods"]
        if t.user_attrs["status"] == "complete":
            assert isinstance(t.user_attrs["below_floor"], bool)  # shown beside the trial in the dashboard
