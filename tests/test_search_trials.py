"""Trials of the search: latency budget, early stopping, latency cache, failures, reference points."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from autosqueeze.errors import TrialsKeepFailing
from autosqueeze.measure import paired as timing_mod
from autosqueeze.methods import distill as distill_mod
from autosqueeze.methods import registry
from autosqueeze.recipe import Recipe, Step
from autosqueeze.search import objective as objective_mod
from autosqueeze.search.early_stop import EarlyStopper, EarlyStopSettings, TrialStoppedEarly
from autosqueeze.search.study import prepare, run_search
from autosqueeze.study_config import load_study_config

FAST_LATENCY = {"warmup": 1, "repeats": 3, "min_time_s": 0.0, "idle_wait_s": 0.0}
DEPTH_SPACE = [
    {"method": "drop_layers", "params": {"keep": {"type": "int", "low": 1, "high": 2}}},
    {"method": "distill", "params": {"steps": 8}},
    {"method": "quantize_dynamic", "optional": True},
]


def write_study(folder: Path, model: Path, steps: list | None = None, trials: int = 3, **extra) -> Path:
    """A study on the tiny model and the GLUE fixtures (teacher: 3 steps)."""
    (folder / "space.yaml").write_text(yaml.safe_dump({"steps": steps or DEPTH_SPACE}))
    study = {"name": "t", "task": "sst2", "model": str(model), "search_space": "space.yaml", "trials": trials,
             "sampler": "random", "teacher": {"steps": 3, "batch_size": 4, "max_seq_len": 16, "threads": 1},
             "recovery": {"batch_size": 4, "max_seq_len": 16, "threads": 1},  # 1 thread: no spinning on a busy box
             "hardware": {"seq_len": 16, "threads": 1},
             "latency": FAST_LATENCY, **extra}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def load(path: Path) -> optuna.Study:
    return optuna.load_study(study_name="t", storage=f"sqlite:///{path.parent / 't.db'}")


def count_training(monkeypatch) -> list[int]:
    """Count recovery training runs (distill's and qat's training loop)."""
    calls: list[int] = []
    real = distill_mod.train_loop

    def counted(*args, **kwargs):
        calls.append(kwargs.get("steps", 0))
        return real(*args, **kwargs)

    monkeypatch.setattr(distill_mod, "train_loop", counted)
    return calls


def test_over_budget_trials_cost_no_training_and_are_infeasible(tiny_model_dir, glue_dir, tmp_path,
                                                                isolated_cache, monkeypatch):
    calls = count_training(monkeypatch)
    path = write_study(tmp_path, tiny_model_dir)
    run_search(load_study_config(path), str(glue_dir), budget_ms=1e-6)
    assert calls == []  # stopped right after the latency probe
    trials = load(path).trials
    assert len(trials) == 3
    for t in trials:
        assert t.state == TrialState.COMPLETE and t.user_attrs["status"] == "over_budget"
        assert t.constraints["latency_budget_ms"] > 0  # infeasible to the sampler, not dropped
        assert t.values[0] == objective_mod.INFEASIBLE_METRIC and t.values[1] == t.user_attrs["latency_ms"]
        assert "recipe" in t.user_attrs
    run_search(load_study_config(path), str(glue_dir), trials=4)  # no budget: the next trial trains
    assert len(calls) == 1
    assert load(path).trials[-1].constraints["latency_budget_ms"] == 0


def test_identical_architectures_reuse_the_cached_latency(tiny_model_dir, glue_dir, tmp_path, isolated_cache,
                                                          monkeypatch):
    sc = prepare(load_study_config(write_study(tmp_path, tiny_model_dir)), str(glue_dir), None)
    measured: list[int] = []
    real = timing_mod.paired_latency
    monkeypatch.setattr(timing_mod, "paired_latency", lambda m, *a, **k: measured.append(1) or real(m, *a, **k))  # type: ignore[func-returns-value]
    a = Recipe(steps=[Step("drop_layers", {"keep": 1}), Step("distill", {"steps": 2})])
    b = Recipe(steps=[Step("drop_layers", {"keep": 1}), Step("distill", {"steps": 4, "temperature": 4.0})])
    ra, rb = objective_mod.evaluate_recipe(a, sc), objective_mod.evaluate_recipe(b, sc)
    assert len(measured) == 1
    assert ra.latency_ms == rb.latency_ms and ra.speedup == rb.speedup
    objective_mod.evaluate_recipe(Recipe(steps=[Step("drop_layers", {"keep": 2})]), sc)
    assert len(measured) == 2  # another structure is measured


class FakeClock:
    """perf_counter for measure/timing.py: models advance it by cost x the machine's current load."""

    def __init__(self) -> None:
        self.now, self.calls = 0.0, 0

    def __call__(self) -> float:
        return self.now

    def run(self, cost_ms: float) -> None:
        self.calls += 1
        load = 3.0 if (self.calls // 7) % 2 else 1.0  # the machine gets 3x busier every 7 calls
        self.now += cost_ms * load / 1e3


def test_paired_timing_cancels_changing_load(monkeypatch):
    from autosqueeze.measure import paired as timing
    from autosqueeze.measure import timing as kernel
    from autosqueeze.measure.latency import HardwareProfile, LatencySettings

    clock = FakeClock()
    monkeypatch.setattr(kernel.time, "perf_counter", clock)

    class Model(torch.nn.Module):
        def __init__(self, cost: float) -> None:
            super().__init__()
            self.cost = cost

        def forward(self, **inputs):
            clock.run(self.cost)

    settings = LatencySettings(warmup=0, repeats=40, min_time_s=0.0, idle_wait_s=0.0)
    cand, teach, ratio = timing.paired_latency(Model(2.0), Model(8.0), HardwareProfile(threads=1), settings)
    assert ratio.median == 4.0  # the true speedup, although each model's own samples swing 3x
    assert cand.p90_ms == 3 * cand.p10_ms


def test_speedups_do_not_move_with_machine_load(tiny_model_dir, glue_dir, tmp_path, isolated_cache, monkeypatch):
    """A candidate timed while the machine is twice as busy keeps its speedup and latency."""
    from autosqueeze.measure.latency import LatencyStats
    from autosqueeze.measure.timing import Ratio

    sc = prepare(load_study_config(write_study(tmp_path, tiny_model_dir)), str(glue_dir), None)
    load = {"factor": 1.0}

    def stats(ms: float) -> LatencyStats:
        return LatencyStats(ms, ms, ms, ms, 0.0, 3, 1, 1, False)

    def fake(model, teacher, *args, **kwargs):
        c, t = 2.5 * len(model.bert.encoder.layer) * load["factor"], 10.0 * load["factor"]
        return stats(c), stats(t), Ratio.exact(t / c)

    monkeypatch.setattr(timing_mod, "paired_latency", fake)
    sc.baseline = stats(10.0)
    quiet = objective_mod.evaluate_recipe(Recipe(steps=[Step("drop_layers", {"keep": 1})]), sc)
    load["factor"] = 2.0
    busy = objective_mod.evaluate_recipe(Recipe(steps=[Step("drop_layers", {"keep": 2})]), sc)
    assert quiet.speedup == 4.0 and quiet.latency_ms == 2.5
    assert busy.speedup == 2.0 and busy.latency_ms == 5.0  # not 10 ms / 1x, as an unpaired ratio would say
    m = busy.measurement
    assert m.latency_measured_ms == 10.0 and m.teacher_paired_ms == 20.0
    assert m.latency is not None and m.latency_measured is not None
    assert m.latency["median_ms"] == 5.0 and m.latency_measured["median_ms"] == 10.0


def test_teacher_outputs_are_shared_across_trials(tiny_model_dir, glue_dir, tmp_path, isolated_cache):
    sc = prepare(load_study_config(write_study(tmp_path, tiny_model_dir)), str(glue_dir), None)
    recipe = Recipe(steps=[Step("drop_layers", {"keep": 1}), Step("distill", {"steps": 3})])
    objective_mod.evaluate_recipe(recipe, sc)
    store = sc.teacher_outputs
    n = len(store.entries)
    objective_mod.evaluate_recipe(Recipe(steps=[Step("drop_layers", {"keep": 2}), Step("distill", {"steps": 3})]), sc)
    assert n == 3 and len(sc.teacher_outputs.entries) == n  # same batches: no new forward


# --- early stopping ---------------------------------------------------------------------
def stopper(metrics: list[float], ref: float | None, total: int = 100, **settings) -> EarlyStopper:
    values = iter(metrics)
    model = torch.nn.Linear(2, 2)
    s = EarlyStopper(EarlyStopSettings(**settings), total, latency_ms=5.0, reference=lambda lat: ref,
                     evaluate=lambda m: next(values), n=400)
    s.hook(model)
    return s


def run_steps(s: EarlyStopper, steps: range) -> None:
    for step in steps:
        s.hook(s.model)
        s.should_stop(step)


def test_rule_stops_a_trial_that_cannot_reach_the_front():
    s = stopper([0.55], ref=0.85)
    with pytest.raises(TrialStoppedEarly) as stop:
        run_steps(s, range(1, 101))
    rec = stop.value.record
    assert rec["step"] == 25 and rec["progress"] == 0.25  # the first checkpoint
    assert math.isclose(rec["margin"], 0.10 * 0.75 + 2.0 * math.sqrt(0.25 / 400))
    assert rec["bound"] < rec["reference"] == 0.85


def test_rule_keeps_trials_within_the_margin_and_without_a_reference():
    s = stopper([0.74, 0.78], ref=0.85)  # 0.74 + 0.125 >= 0.85 at 25%; 0.78 + 0.10 >= 0.85 at 50%
    run_steps(s, range(1, 101))
    assert [h["step"] for h in s.history] == [25, 50]
    s = stopper([0.1, 0.1], ref=None)  # nothing on the front at this latency or faster
    run_steps(s, range(1, 101))
    assert len(s.history) == 2
    s = stopper([0.1, 0.1], ref=0.85, enabled=True, checkpoints=(0.5,))
    s.fresh = False
    s.should_stop(60)  # a training run that passes no post-step hook is not evaluated
    assert s.history == []


def test_progress_spans_several_training_runs():
    s = stopper([0.8, 0.8], ref=0.85, total=200, checkpoints=(0.25, 0.75))
    run_steps(s, range(1, 101))  # first run (e.g. distill): 100 of 200 steps
    run_steps(s, range(1, 101))  # second run restarts at 1 (e.g. qat)
    assert [h["step"] for h in s.history] == [50, 150]


def test_search_records_stopped_trials_as_dominated_points(tiny_model_dir, glue_dir, tmp_path, isolated_cache,
                                                           monkeypatch):
    calls = count_training(monkeypatch)
    path = write_study(tmp_path, tiny_model_dir, [
        {"method": "drop_layers", "params": {"keep": 1}}, {"method": "distill", "params": {"steps": 20}}], trials=2)
    config = load_study_config(path)
    study = optuna.create_study(study_name="t", storage=config.storage_url, directions=["maximize", "minimize"])
    # a front trial faster than anything and better than anything: every trained trial must stop
    study.add_trial(optuna.trial.create_trial(
        values=[1.0, 1e-6], user_attrs={"status": "complete", "metric": 1.0, "latency_ms": 1e-6},
        system_attrs={"constraints:latency_budget_ms": 0.0}))
    progress: list[tuple[str, int]] = []
    run_search(config, str(glue_dir), progress=lambda what, done, total, stats: progress.append((what, done)),
               early_stop=EarlyStopSettings(z=0.0))  # 4 dev examples: no noise allowance, or nothing stops
    t = load(path).trials[1]
    assert t.state == TrialState.COMPLETE and t.user_attrs["status"] == "stopped_early"
    at = t.user_attrs["stopped_at"]
    assert at["reference"] == 1.0 and at["step"] == 5 and at["bound"] < 1.0
    assert max(d for w, d in progress if w == "distill") == 5 < 20  # training really ended early
    assert t.values == [at["metric"], t.user_attrs["latency_ms"]]
    assert t.constraints["latency_budget_ms"] == 0 and len(calls) == 1


# --- failures ---------------------------------------------------------------------------
def test_failing_trials_are_recorded_with_their_reason_and_the_study_goes_on(tiny_model_dir, glue_dir, tmp_path,
                                                                             isolated_cache, monkeypatch):
    spec = registry.get_method("drop_layers")

    def out_of_memory(model, config, ctx):
        if not ctx.probe:  # the build after the latency probe
            raise RuntimeError("out of memory (simulated)")
        return spec.apply(model, config, ctx)

    def nan_loss(config, teacher, layer_map, hidden_index=None):
        return lambda student, batch: student(**{k: v for k,
                                                 v in batch.items() if k != "labels"}).logits.sum() * math.nan

    config = load_study_config(write_study(tmp_path, tiny_model_dir, trials=3))
    with monkeypatch.context() as m, pytest.raises(TrialsKeepFailing, match=r"1 trials in a row failed.*out of memory"):
        m.setitem(registry._REGISTRY, "drop_layers", dataclasses.replace(spec, apply=out_of_memory))
        run_search(config, str(glue_dir), trials=1, max_failures_in_a_row=1)
    with monkeypatch.context() as m, pytest.raises(TrialsKeepFailing, match="loss became nan"):
        m.setattr(distill_mod, "distill_loss", nan_loss)
        run_search(config, str(glue_dir), trials=1, max_failures_in_a_row=1)
    summary = run_search(config, str(glue_dir), trials=1)  # the study goes on; failures are not results
    assert summary.done == 1
    trials = load(config.path).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[0].user_attrs["error"] == "RuntimeError: out of memory (simulated)"
    assert "loss became nan" in trials[1].user_attrs["error"] and trials[1].user_attrs["status"] == "failed"
    assert trials[1].user_attrs["recipe"]["steps"][0]["method"] == "drop_layers"  # what failed is kept


def test_reference_points_and_samplers(tiny_model_dir, glue_dir, tmp_path, isolated_cache):
    for sampler in ("tpe", "nsga2", "random"):
        folder = tmp_path / sampler
        folder.mkdir()
        path = write_study(folder, tiny_model_dir, trials=2, sampler=sampler)
        run_search(load_study_config(path), str(glue_dir))
        study = load(path)
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    attrs = study.user_attrs
    int8 = attrs["int8_baseline"]
    assert set(int8) >= {"metric", "latency_ms", "speedup"} and 0 <= int8["metric"] <= 1
    assert math.isclose(int8["speedup"], attrs["teacher"]["latency_ms"] / int8["latency_ms"], rel_tol=0.5)
    assert set(attrs["teacher"]) >= {"metrics", "latency_ms", "size", "path", "search_metric", "weights_hash"}


def test_random_sampler_is_seeded(tiny_model_dir, glue_dir, tmp_path, isolated_cache):
    params = []
    for run in ("a", "b"):
        folder = tmp_path / run
        folder.mkdir()
        path = write_study(folder, tiny_model_dir, trials=2, seed=7)
        run_search(load_study_config(path), str(glue_dir))
        params.append([t.params for t in load(path).trials])
    assert params[0] == params[1]


def test_a_range_the_model_cannot_satisfy_stops_the_search_before_any_trial(tiny_model_dir, glue_dir, tmp_path,
                                                                           isolated_cache, capsys):
    from autosqueeze.cli import main

    path = write_study(tmp_path, tiny_model_dir, [  # the tiny model has 3 layers
        {"method": "drop_layers", "params": {"keep": {"type": "int", "low": 1, "high": 5}}},
        {"method": "distill", "params": {"steps": 2}}])
    assert main(["search", str(path), "--data-dir", str(glue_dir)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1
    assert str(tmp_path / "space.yaml") in err[0] and "drop_layers.keep = 5" in err[0]
    assert "only 3 layers" in err[0] and "narrow the range of drop_layers.keep" in err[0]
    assert not (tmp_path / "t.db").exists()  # a new study's database is created only once it can run


def test_a_worker_with_another_teacher_is_refused(tiny_model_dir, glue_dir, tmp_path, isolated_cache):
    from autosqueeze.study_config import ConfigError

    path = write_study(tmp_path, tiny_model_dir, trials=1)
    run_search(load_study_config(path), str(glue_dir))
    study = load(path)
    study.set_user_attr("teacher", {**study.user_attrs["teacher"], "weights_hash": "0123456789abcdef"})
    with pytest.raises(ConfigError, match="a study compresses one teacher"):
        run_search(load_study_config(path), str(glue_dir), trials=2)
    assert len(load(path).trials) == 1


def test_a_recipe_sampled_again_reuses_its_result_without_training(tiny_model_dir, glue_dir, tmp_path,
                                                                   isolated_cache, monkeypatch):
    calls = count_training(monkeypatch)
    fixed = [{"method": "drop_layers", "params": {"keep": 1}}, {"method": "distill", "params": {"steps": 8}}]
    path = write_study(tmp_path, tiny_model_dir, steps=fixed, trials=3)
    run_search(load_study_config(path), str(glue_dir))
    assert calls == [8]  # trained once: trials 1 and 2 proposed the same recipe
    first, *again = sorted(load(path).trials, key=lambda t: t.number)
    assert "duplicate_of" not in first.user_attrs and first.user_attrs["status"] == "complete"
    for t in again:
        assert t.user_attrs["duplicate_of"] == first.number and t.values == first.values
        assert t.user_attrs["metrics"] == first.user_attrs["metrics"]


def test_a_reused_result_over_a_new_budget_is_measured_again_and_infeasible(tiny_model_dir, glue_dir, tmp_path,
                                                                            isolated_cache):
    fixed = [{"method": "drop_layers", "params": {"keep": 1}}]
    path = write_study(tmp_path, tiny_model_dir, steps=fixed, trials=1)
    run_search(load_study_config(path), str(glue_dir))
    run_search(load_study_config(path), str(glue_dir), trials=2, budget_ms=1e-6)
    second = sorted(load(path).trials, key=lambda t: t.number)[1]
    assert "duplicate_of" not in second.user_attrs and second.user_attrs["status"] == "over_budget"
