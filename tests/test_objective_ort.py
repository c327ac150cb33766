"""ONNX Runtime trials export their graph once (timed and evaluated from the same file), and the
studies' ONNX Runtime helpers (methods table column, headline deployed points) run on a tiny model
through :class:`autosqueeze.runtimes.deployed.OrtDeployment`. No timing value is asserted."""
from __future__ import annotations

from pathlib import Path

import pytest

from autosqueeze.recipe import Recipe, Step
from autosqueeze.runtimes import onnx_export
from autosqueeze.search import objective as objective_mod
from autosqueeze.search.study import prepare
from autosqueeze.study_config import load_study_config
from tests.study_scripts import load_script
from tests.test_search_trials import write_study

ROOT = Path(__file__).resolve().parents[1]
ORT_INT8 = Recipe(steps=[Step("drop_layers", {"keep": 1}), Step("quantize_dynamic", {})],
                  profile={"runtime": "onnxruntime"})


def count_exports(monkeypatch) -> list[str]:
    """Every export_for_deployment call, wherever the name was imported."""
    import autosqueeze.runtimes as runtimes

    calls: list[str] = []
    real = onnx_export.export_for_deployment

    def counted(model, path, **kwargs):
        calls.append(str(path))
        return real(model, path, **kwargs)

    for module in (onnx_export, runtimes):  # runtimes.deployment calls it through onnx_export
        monkeypatch.setattr(module, "export_for_deployment", counted)
    return calls


def _script(name: str):
    return load_script(ROOT / "studies" / name / "run.py", f"{name}_run")


@pytest.fixture()
def sc(tiny_model_dir, glue_dir, tmp_path, isolated_cache):
    pytest.importorskip("onnxruntime")
    return prepare(load_study_config(write_study(tmp_path, tiny_model_dir)), str(glue_dir), None)


def test_an_onnxruntime_trial_exports_its_graph_once(sc, monkeypatch):
    calls = count_exports(monkeypatch)
    result = objective_mod.evaluate_recipe(ORT_INT8, sc)
    assert len(calls) == 1  # the same graph is timed (paired with the teacher) and evaluated
    m = result.measurement
    assert result.status == "complete" and m.runtime == "onnxruntime"
    assert m.onnx is not None and m.onnx["quantized"] and m.onnx["path"] is None and m.paired
    assert "speedup_spread" in result.to_dict()
    assert not Path(calls[0]).exists()  # the temporary graph is removed after the trial
    calls.clear()
    objective_mod.evaluate_recipe(ORT_INT8, sc)  # the timing is cached: the export serves the metric only
    assert len(calls) == 1
    calls.clear()
    refs = objective_mod.reference_points(sc)  # ORT dynamic int8 of the teacher: one export too
    assert len(calls) == 1 and refs["ort_int8_baseline"]["runtime"] == "onnxruntime"


def test_the_studies_onnxruntime_helpers_run_on_a_tiny_model(sc, tmp_path, tiny_model_dir):
    from autosqueeze.artifact import save_compressed
    from autosqueeze.builder import build

    recipe = Recipe(steps=[Step("drop_layers", {"keep": 1}), Step("quantize_dynamic", {})])
    built = build(recipe, sc.teacher.model, sc.method_context(recipe.seed, probe=True))
    column = _script("methods").ort_column(recipe, built, sc)
    ort = column["ort"]
    assert ort["quantized_nodes"] > 0 and 0.0 <= ort["metric"] <= 1.0
    assert ort["speedup"] > 0 and {"p10", "p90"} <= set(ort["speedup_spread"])
    folder = save_compressed(built, recipe, None, sc.teacher.model.config, tmp_path / "final" / "trial-0",
                             check_plain=False)
    config = load_study_config(tmp_path / "study.yaml")
    (tmp_path / "onnx").mkdir()
    models, metrics = _script("headline").ort_deployments(config, sc.data, sc.extra_dev, [folder], tmp_path / "onnx")
    assert list(models) == ["trial-0@onnxruntime"] and metrics["trial-0"]["quantized_nodes"] > 0
    assert (tmp_path / "onnx" / "trial-0.onnx").is_file()  # kept while the headline times it
    batch = {k: v[:1] for k, v in next(iter(sc.data.eval_batches(batch_size=2))).items() if k != "labels"}
    assert models["trial-0@onnxruntime"](**batch).logits.shape == (1, 2)
