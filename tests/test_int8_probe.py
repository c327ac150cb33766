"""Dynamic int8 where the machine cannot run it faster: the study's int8 references (timed once,
paired with the fp32 teacher) join the machine probe; with no runtime faster in int8,
``quantize_dynamic`` is dropped from the space before the search (one line says why); with some
faster, a quantizing trial is offered only those."""
from __future__ import annotations

import logging

import optuna
import pytest
import yaml

from autosqueeze.recipe import Recipe, Step
from autosqueeze.search.machine import drop_slow_steps, int8_not_faster, slow_steps
from autosqueeze.search.space import SearchSpace, load_space, suggest_runtime
from autosqueeze.search.study import with_int8_speedups

SPACE = {"steps": [{"method": "drop_layers", "optional": True, "params": {"keep": {"type": "int", "low": 1,
                                                                                    "high": 2}}},
                   {"method": "quantize_dynamic", "optional": True}]}


def _space(tmp_path) -> SearchSpace:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(SPACE))
    return load_space(path)


def test_int8_is_dropped_only_where_no_runtime_runs_it_faster(tmp_path, caplog):
    space = _space(tmp_path)
    slow = {"device": "cpu", "bf16_units": True, "int8_speedup": {"torch": 0.8, "onnxruntime": 0.9}}
    assert int8_not_faster(slow) == {"torch": 0.8, "onnxruntime": 0.9}
    assert set(slow_steps(space, slow, ("torch", "onnxruntime"))) == {"quantize_dynamic"}
    with caplog.at_level(logging.WARNING):
        smaller = drop_slow_steps(space, slow, ("torch",))
    assert [s.method for s in smaller.steps] == ["drop_layers"]
    assert "dynamic int8 runs no faster than the fp32 teacher on this machine (torch 0.80x)" in caplog.text
    one_fast = {**slow, "int8_speedup": {"torch": 0.8, "onnxruntime": 1.6}}
    assert drop_slow_steps(space, one_fast, ("torch", "onnxruntime")) is space  # a runtime still gains
    assert drop_slow_steps(space, {**slow, "int8_speedup": {"torch": 1.4}}, ("torch",)) is space
    assert drop_slow_steps(space, {"device": "cpu", "bf16_units": True}, ("torch",)) is space  # nothing measured


def test_a_quantizing_trial_is_offered_only_the_runtimes_whose_int8_is_faster():
    quantized = Recipe(steps=[Step("drop_layers", {"keep": 1}), Step("quantize_dynamic", {})])
    plain = Recipe(steps=[Step("drop_layers", {"keep": 1})])
    both = ("torch", "onnxruntime")
    trial = optuna.trial.FixedTrial({"runtime": "torch"})
    assert suggest_runtime(trial, quantized, both, int8_slow=("torch",)) == "onnxruntime"  # not even suggested
    assert suggest_runtime(trial, plain, both, int8_slow=("torch",)) == "torch"  # fp32 recipes keep both
    assert suggest_runtime(trial, quantized, both) == "torch"
    assert suggest_runtime(trial, quantized, both, int8_slow=both) == "torch"  # none faster: nothing to prefer


def test_the_references_join_the_probe_once(monkeypatch):
    monkeypatch.setenv("AUTOSQUEEZE_INT8_PROBE", "1")
    study = optuna.create_study(directions=["maximize", "minimize"])
    assert with_int8_speedups(study) is None  # a study recorded before the probe existed: nothing changes
    study.set_user_attr("fingerprint", {"cpu": {}, "probe": {"device": "cpu", "bf16_units": False}})
    study.set_user_attr("int8_baseline", {"runtime": "torch", "speedup": 0.7})
    study.set_user_attr("ort_int8_baseline", {"runtime": "onnxruntime", "speedup": 1.8})
    probe = with_int8_speedups(study)
    assert probe is not None and probe["int8_speedup"] == {"torch": 0.7, "onnxruntime": 1.8}
    assert study.user_attrs["fingerprint"]["probe"]["int8_speedup"] == {"torch": 0.7, "onnxruntime": 1.8}
    study.set_user_attr("int8_baseline", {"runtime": "torch", "speedup": 2.0})  # recorded once: not re-read
    assert with_int8_speedups(study)["int8_speedup"]["torch"] == 0.7
    fresh = optuna.create_study(directions=["maximize", "minimize"])  # switched off: nothing added
    fresh.set_user_attr("fingerprint", {"probe": {"device": "cpu"}})
    fresh.set_user_attr("int8_baseline", {"runtime": "torch", "speedup": 0.7})
    monkeypatch.setenv("AUTOSQUEEZE_INT8_PROBE", "0")
    assert with_int8_speedups(fresh) == {"device": "cpu"}


@pytest.mark.slow
def test_a_search_on_a_machine_where_int8_is_slower_never_tries_it(tiny_model_dir, glue_dir, tmp_path,
                                                                   isolated_cache, monkeypatch, caplog):
    from autosqueeze.search import objective
    from autosqueeze.search import study as study_mod
    from autosqueeze.study_config import load_study_config
    from tests.test_cli_e2e import write_study

    real = objective.reference_points

    def slower_int8(sc):  # this machine's int8 references, as if its int8 kernels were slow
        refs = real(sc)
        for key in ("int8_baseline", "ort_int8_baseline"):
            if key in refs:
                refs[key]["speedup"] = 0.5
        return refs

    monkeypatch.setenv("AUTOSQUEEZE_INT8_PROBE", "1")
    monkeypatch.setattr(study_mod, "reference_points", slower_int8)
    config = load_study_config(write_study(tmp_path, tiny_model_dir, trials=2))
    with caplog.at_level(logging.WARNING):
        study_mod.run_search(config, str(glue_dir))
    assert "dynamic int8 runs no faster than the fp32 teacher" in caplog.text
    study = optuna.load_study(study_name="t", storage=config.storage_url)
    assert study.user_attrs["fingerprint"]["probe"]["int8_speedup"]["torch"] == 0.5
    methods = [s["method"] for t in study.trials if "recipe" in t.user_attrs for s in t.user_attrs["recipe"]["steps"]]
    assert methods and "quantize_dynamic" not in methods
