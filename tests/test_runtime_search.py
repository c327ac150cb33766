"""The runtime as a search dimension: spinning-off sessions, ORT candidates paired with the
PyTorch teacher, the runtimes a recipe is offered, hardware.runtimes, references, apply + bench."""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

from autosqueeze.arch import get_adapter
from autosqueeze.builder import build
from autosqueeze.measure import HardwareProfile, LatencySettings
from autosqueeze.measure import paired as paired_mod
from autosqueeze.methods import MethodContext
from autosqueeze.recipe import Recipe, Step
from autosqueeze.runtimes import offered_runtimes
from autosqueeze.runtimes.timing import timing_against_teacher
from autosqueeze.search.space import SpaceError, suggest_runtime
from autosqueeze.study_config import ConfigError, load_study_config
from tests.test_search_trials import load, write_study
from tests.tiny import tiny_bert

FAST = LatencySettings(warmup=1, repeats=3, min_time_s=0.0, idle_wait_s=0.0)
ORT = HardwareProfile(threads=1, seq_len=16, runtime="onnxruntime")
BOTH = ("torch", "onnxruntime")


def test_sessions_can_stop_spinning(tmp_path):
    pytest.importorskip("onnxruntime")
    from autosqueeze.runtimes import export_onnx
    from autosqueeze.runtimes.ort import make_session

    path = export_onnx(tiny_bert(layers=1), tmp_path / "m.onnx").path
    key = "session.intra_op.allow_spinning"
    assert make_session(path, ORT, spinning=False).get_session_options().get_session_config_entry(key) == "0"


def test_an_onnxruntime_candidate_is_paired_with_the_pytorch_teacher(monkeypatch):
    pytest.importorskip("onnxruntime")
    from autosqueeze.runtimes import ort as ort_mod

    teacher = tiny_bert(layers=2)
    recipe = Recipe(steps=[Step("drop_layers", {"keep": 1}), Step("quantize_dynamic", {})])
    built = build(recipe, teacher, MethodContext(adapter=get_adapter(teacher), teacher=teacher))
    spins, pairs = [], []
    real_session, real_paired = ort_mod.make_session, paired_mod.paired_latency
    monkeypatch.setattr(ort_mod, "make_session", lambda *a, **k: spins.append(k.get("spinning")) or  # type: ignore[func-returns-value]
                        real_session(*a, **k))
    monkeypatch.setattr(paired_mod, "paired_latency", lambda c, t, *a, **k: pairs.append((c, t)) or  # type: ignore[func-returns-value]
                        real_paired(c, t, *a, **k))
    timing = timing_against_teacher(built.model, teacher, ORT, FAST, 10.0,
                                    float_model=built.float_model, recipe=recipe)
    assert spins == [False]  # interleaved with PyTorch: no spinning pool threads
    assert len(pairs) == 1 and isinstance(pairs[0][0], ort_mod.OrtRunner) and pairs[0][1] is teacher
    assert timing.speedup > 0 and timing.latency_ms == pytest.approx(10.0 / timing.speedup)
    assert timing.teacher_ms != 10.0  # the teacher's median within the pairs, not the baseline


def test_offered_runtimes_follow_the_steps():
    assert offered_runtimes([Step("drop_layers", {"keep": 1})], BOTH) == list(BOTH)
    assert offered_runtimes([Step("quantize_static", {})], BOTH) == ["onnxruntime"]
    assert offered_runtimes([Step("early_exit", {})], BOTH) == ["torch"]
    assert offered_runtimes([{"method": "cast_precision", "params": {"dtype": "bf16"}}], BOTH) == ["torch"]
    assert offered_runtimes([Step("cast_precision", {"dtype": "fp16"})], BOTH) == list(BOTH)
    assert offered_runtimes([Step("prune_unstructured", {"kernel": "csr"})], BOTH) == ["torch"]
    assert offered_runtimes([Step("early_exit", {}), Step("quantize_static", {})], BOTH) == []


def test_suggest_runtime_keeps_one_categorical_per_choice_set():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        seen.add(suggest_runtime(trial, Recipe(steps=[Step("drop_layers", {"keep": 1})]), BOTH))
        assert set(trial.params) == {"runtime"}
        study.tell(trial, 0.0)
    assert seen == set(BOTH)
    trial = study.ask()
    assert suggest_runtime(trial, Recipe(steps=[Step("quantize_static", {})]), BOTH) == "onnxruntime"
    assert trial.params == {}  # one runtime offered: nothing to choose
    with pytest.raises(SpaceError, match="early exit"):
        suggest_runtime(study.ask(), Recipe(steps=[Step("early_exit", {})]), ("onnxruntime",))


def _study(tmp_path: Path, hardware: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"task": "sst2", "search_space": "quick", "hardware": hardware}))
    return path


def test_hardware_runtimes_in_the_study_file(tmp_path):
    cfg = load_study_config(_study(tmp_path, {"runtimes": ["onnxruntime", "torch"], "threads": 1}))
    assert cfg.search_runtimes == ("onnxruntime", "torch") and cfg.hardware.runtime == "onnxruntime"
    assert cfg.hardware.threads == 1
    cfg = load_study_config(_study(tmp_path, {"runtimes": ["torch", "onnxruntime"], "runtime": "onnxruntime"}))
    assert cfg.hardware.runtime == "onnxruntime" and cfg.runtimes == BOTH
    assert load_study_config(_study(tmp_path, {"runtime": "onnxruntime"})).search_runtimes == ("onnxruntime",)
    for bad, msg in (({"runtimes": ["tvm"]}, "unknown runtime"), ({"runtimes": []}, "non-empty list"),
                     ({"runtimes": ["torch", "torch"]}, "repeated"),
                     ({"runtimes": ["torch"], "runtime": "onnxruntime"}, "not one of"),
                     ({"runtimes": ["torch"], "cores": 2}, "unknown key")):
        with pytest.raises(ConfigError, match=msg):
            load_study_config(_study(tmp_path, bad))


def test_saved_runtime_of_a_folder(tmp_path):
    from autosqueeze.bench import saved_runtime

    (tmp_path / "autosqueeze.json").write_text(json.dumps({"recipe": {"profile": {"runtime": "onnxruntime"}}}))
    assert saved_runtime(str(tmp_path)) == "torch"  # no model.onnx: timed in PyTorch
    (tmp_path / "model.onnx").write_bytes(b"")
    assert saved_runtime(str(tmp_path)) == "onnxruntime"
    assert saved_runtime("default") == "torch"


MIXED_SPACE = [
    {"method": "drop_layers", "params": {"keep": {"type": "int", "low": 1, "high": 2}}},
    {"method": "quantize_dynamic", "optional": True},
]


def test_a_study_over_both_runtimes(tiny_model_dir, glue_dir, tmp_path, isolated_cache, monkeypatch):
    """Trials pick a runtime, are timed paired and evaluated in it; references include ORT int8;
    the report shows them; apply writes model.onnx for an ORT recipe and bench times it in ORT."""
    pytest.importorskip("onnxruntime")
    from autosqueeze.runtimes.deployment import OrtDeployment
    from autosqueeze.search.study import run_search

    evaluated = []  # the runtime of every deployment whose metric a trial or a reference computed in ONNX Runtime
    real_eval = OrtDeployment.evaluate_with_stats
    monkeypatch.setattr(OrtDeployment, "evaluate_with_stats",
                        lambda self, *a, **k: evaluated.append(self.runtime) or real_eval(self, *a, **k))  # type: ignore[func-returns-value]
    path = write_study(tmp_path, tiny_model_dir, steps=MIXED_SPACE, trials=6,
                       hardware={"seq_len": 16, "threads": 1, "runtimes": ["torch", "onnxruntime"]})
    run_search(load_study_config(path), str(glue_dir))
    study = load(path)
    trials = [t for t in study.trials if t.user_attrs.get("status") == "complete"]
    runtimes = {t.user_attrs["runtime"] for t in trials}
    assert runtimes == set(BOTH)  # the front can mix both
    for t in trials:
        assert t.user_attrs["recipe"]["profile"]["runtime"] == t.user_attrs["runtime"] == t.params["runtime"]
        assert t.user_attrs["speedup"] > 0 and t.user_attrs["teacher_paired_ms"] > 0
        assert ("onnx" in t.user_attrs) == (t.user_attrs["runtime"] == "onnxruntime")
    attrs = study.user_attrs
    assert attrs["runtimes"] == list(BOTH) and attrs["profile"]["runtime"] == "torch"
    assert attrs["ort_int8_baseline"]["runtime"] == "onnxruntime" and attrs["int8_baseline"]["runtime"] == "torch"
    assert evaluated.count("onnxruntime") >= 1 + sum(t.user_attrs["runtime"] == "onnxruntime" for t in trials
                                                     if "duplicate_of" not in t.user_attrs)

    from autosqueeze.report.analysis import runtime_references
    from autosqueeze.report.build import write_report

    assert [r.name for r in runtime_references(attrs)] == ["int8 baseline (ONNX Runtime dynamic int8)"]
    page = write_report(load_study_config(path)).html
    assert "ONNX Runtime dynamic int8" in page.read_text() and "runtime: onnxruntime" in page.read_text()

    from autosqueeze.apply import rebuild
    from autosqueeze.bench import bench

    ort_trial = next(t for t in trials if t.user_attrs["runtime"] == "onnxruntime")
    recipe = Recipe.from_dict(ort_trial.user_attrs["recipe"])
    recipe.save(tmp_path / "recipe.yaml")
    rebuilt = rebuild(tmp_path / "recipe.yaml", tmp_path / "model", str(glue_dir), onnx=False)
    assert (rebuilt.out / "model.onnx").is_file()  # the recipe's runtime deploys it
    assert rebuilt.reproduced["runtime"] == "onnxruntime"
    assert rebuilt.reproduced["metric"] == ort_trial.user_attrs["metric"]  # the ORT graph's metric, as searched
    rows = bench([str(rebuilt.out)], HardwareProfile(threads=1, seq_len=16), FAST)
    assert rows[0].runtime == "onnxruntime"


def test_reference_speedups_are_medians_of_same_round_ratios():
    from autosqueeze.measure.references import interleaved, summarize

    order: list[str] = []
    times = interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, rounds=3, warmup=1)
    assert order == ["a", "b"] * 4 and [len(t) for t in times.values()] == [3, 3]
    times = {"teacher_fp32": [10.0, 30.0, 10.0], "teacher_torch_int8": [5.0, 15.0, 5.0],
             "teacher_ort_int8": [4.0, 12.0, 4.0], "cand": [2.0, 6.0, 2.0]}
    out = summarize(times, ["cand"])
    assert out["cand"]["speedup_vs_fp32"]["median"] == 5.0  # every round 5x, although the ms swing 3x
    assert out["cand"]["speedup_vs_torch_int8"]["median"] == 2.5 and out["cand"]["speedup_vs_ort_int8"]["median"] == 2.0
    assert out["teacher_torch_int8"]["speedup_vs_fp32"]["median"] == 2.0 and out["cand"]["median_ms"] == 2.0
