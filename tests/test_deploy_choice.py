"""The study's ONNX Runtime graph (``deploy:``): validated with the study file, chosen once per
study (measured on this machine when asked), recorded in the study, written into every trial's
recipe and deployed by ``apply`` from the recipe."""
from __future__ import annotations

import json
from types import SimpleNamespace

import optuna
import pytest
import yaml

from autosqueeze.errors import ConfigError
from autosqueeze.runtimes import variants as V
from autosqueeze.search.deploy_choice import ATTR, study_variant
from autosqueeze.study_config import load_study_config


def _study_file(tmp_path, **extra):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"steps": [{"method": "quantize_dynamic"}]}))
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"task": "sst2", "search_space": "space.yaml", **extra}))
    return path


@pytest.mark.bad_input
@pytest.mark.parametrize("value", ["fastest", 3, {"exporter": "onnxmlir"}, {"int8": {"weight_type": "int3"}}])
def test_a_bad_deploy_setting_is_refused_in_one_line(tmp_path, value):
    with pytest.raises(ConfigError) as err:
        load_study_config(_study_file(tmp_path, deploy=value))
    assert "'deploy'" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("value", [None, "default", "measure", "plain", "legacy", {"exporter": "dynamo"}])
def test_deploy_settings_that_load(tmp_path, value):
    extra = {} if value is None else {"deploy": value}
    assert load_study_config(_study_file(tmp_path, **extra)).deploy == ("measure" if value is None else value)


def _sc(runtimes):
    return SimpleNamespace(runtimes=runtimes, profile=SimpleNamespace(runtime=runtimes[0]), deploy_variant=None)


def test_the_variant_is_recorded_once_and_read_back_by_later_processes():
    study = optuna.create_study(directions=["maximize", "minimize"])
    sc = _sc(("torch", "onnxruntime"))
    assert study_variant(study, sc, "plain") == V.PLAIN_VARIANT
    assert study.user_attrs[ATTR]["how"] == "study file"
    assert V.active_variant() == V.PLAIN_VARIANT and sc.deploy_variant == V.PLAIN_VARIANT.to_dict()
    V.set_active_variant(None)
    later = _sc(("onnxruntime",))  # a resume whose study file now says something else keeps the study's choice
    assert study_variant(study, later, {"exporter": "dynamo"}) == V.PLAIN_VARIANT
    assert V.active_variant() == V.PLAIN_VARIANT


def test_a_pytorch_only_study_records_no_graph():
    study = optuna.create_study(directions=["maximize", "minimize"])
    sc = _sc(("torch",))
    assert study_variant(study, sc, "measure") is None
    assert ATTR not in study.user_attrs and sc.deploy_variant is None and V.active_variant() == V.DEFAULT_VARIANT


@pytest.mark.slow
def test_a_measured_variant_is_recorded_and_deployed_by_every_trial_and_apply(tiny_model_dir, glue_dir, tmp_path,
                                                                              isolated_cache, monkeypatch):
    """``deploy: measure``: the candidates are timed and checked once, the fastest matching one is
    recorded with every candidate's result, each trial's recipe carries it and ``apply`` deploys it."""
    from autosqueeze.cli import main
    from autosqueeze.runtimes import deploy_variants
    from tests.test_cli_e2e import write_study

    candidates = [V.DEFAULT_VARIANT, V.PLAIN_VARIANT]
    monkeypatch.setattr(deploy_variants, "candidate_variants", lambda **_: list(candidates))
    study = write_study(tmp_path, tiny_model_dir, trials=2, hardware={"seq_len": 16, "runtime": "onnxruntime"},
                        deploy="measure")
    data = ["--data-dir", str(glue_dir)]
    assert main(["search", str(study), *data]) == 0
    url = f"sqlite:///{tmp_path / 't.db'}"
    attrs = optuna.load_study(study_name="t", storage=url).user_attrs
    record = attrs[ATTR]
    assert record["how"] == "measured" and len(record["results"]) == 2
    assert all(r["speedup"]["median"] > 0 for r in record["results"])
    assert record["variant"] in [c.to_dict() for c in candidates]
    trials = optuna.load_study(study_name="t", storage=url).get_trials()
    recipes = [t.user_attrs["recipe"] for t in trials if "recipe" in t.user_attrs]
    assert recipes and all(r["profile"]["deploy_variant"] == record["variant"] for r in recipes)
    best = max((t for t in trials if t.values), key=lambda t: t.values[0]).number
    assert main(["export", str(study), "--trial", str(best), "-o", str(tmp_path / "r.yaml")]) == 0
    V.set_active_variant(None)  # apply runs as a fresh process would: the recipe alone says which graph
    assert main(["apply", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "m"), *data]) == 0
    manifest = json.loads((tmp_path / "m" / "autosqueeze.json").read_text())
    assert manifest["recipe"]["profile"]["deploy_variant"] == record["variant"]
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m" / "model.onnx")).metadata_props}
    assert json.loads(meta["autosqueeze.variant"]) == record["variant"]
    # a hand-edited recipe whose graph cannot be built is refused in one line, before any work
    bad = yaml.safe_load((tmp_path / "r.yaml").read_text())
    bad["profile"]["deploy_variant"] = {"exporter": "onnxmlir"}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert main(["apply", str(tmp_path / "bad.yaml"), "-o", str(tmp_path / "m2"), *data]) == 2
    assert not (tmp_path / "m2").exists()
