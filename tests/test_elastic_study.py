"""An elastic study from the command line: search (slices, no training per trial) -> finalize
(the front trained again) -> report -> export (final fidelity, --max-drop) -> apply, which
reproduces the final metric exactly, also after the elastic student left the cache."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest
import yaml

import autosqueeze.search.finalize as finalize_mod
from autosqueeze.cli import main
from autosqueeze.recipe import Recipe, Step
from autosqueeze.report.fidelity import kendall_tau
from autosqueeze.search.finalize import final_recipe
from autosqueeze.study_config import FinalizeSettings

FAST_LATENCY = {"warmup": 1, "repeats": 3, "min_time_s": 0.0, "idle_wait_s": 0.0}


def write_elastic_study(folder: Path, model: Path, trials: int = 6) -> Path:
    (folder / "space.yaml").write_text(yaml.safe_dump({"steps": [
        {"method": "elastic", "params": {"layers": {"type": "int", "low": 1, "high": 3},
                                         "heads_keep": {"type": "int", "low": 1, "high": 4},
                                         "ffn_keep": {"type": "float", "low": 0.25, "high": 1.0, "step": 0.25}}},
        {"method": "quantize_dynamic", "optional": True},
    ]}))
    study = {"name": "el", "task": "sst2", "model": str(model), "search_space": "space.yaml", "trials": trials,
             "sampler": "random", "teacher": {"steps": 3, "batch_size": 4, "max_seq_len": 16},
             "recovery": {"batch_size": 4, "max_seq_len": 16},
             "elastic": {"steps": 4, "min_layers": 1, "min_heads": 1, "min_ffn": 16, "ffn_step": 16,
                         "importance_batches": 1},
             "finalize": {"steps": 3, "top_k": 3},
             "hardware": {"seq_len": 16}, "latency": FAST_LATENCY}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_elastic_study_end_to_end(tiny_model_dir, glue_dir, tmp_path, isolated_cache, capsys, monkeypatch):
    study_file = write_elastic_study(tmp_path, tiny_model_dir)
    data = ["--data-dir", str(glue_dir)]
    assert main(["search", str(study_file), *data]) == 0
    students = list((isolated_cache / "elastic").iterdir())
    assert len(students) == 1 and (students[0] / "elastic.json").is_file()
    study = optuna.load_study(study_name="el", storage=f"sqlite:///{tmp_path / 'el.db'}")
    done = [t for t in study.trials if t.user_attrs.get("status") == "complete"]
    assert len(done) == 6
    for t in done:  # no training in an elastic trial: the elastic step names the cached student
        steps = t.user_attrs["recipe"]["steps"]
        assert steps[0]["method"] == "elastic" and steps[0]["params"]["student"] == students[0].name
        assert all(s["method"] != "distill" for s in steps)
    # a second search run reuses the student (never retrained)
    mtime = (students[0] / "model.safetensors").stat().st_mtime_ns
    assert main(["search", str(study_file), *data, "--trials", "7"]) == 0
    assert (students[0] / "model.safetensors").stat().st_mtime_ns == mtime

    assert main(["finalize", str(study_file), *data]) == 0
    out = capsys.readouterr().out
    assert "Kendall tau" in out
    study = optuna.load_study(study_name="el", storage=f"sqlite:///{tmp_path / 'el.db'}")
    finals = study.user_attrs["final"]
    assert 1 <= len(finals) <= 3
    for entry in finals.values():
        assert entry["status"] == "complete"
        assert [s["method"] for s in entry["recipe"]["steps"]][:2] == ["elastic", "distill"]
    assert study.user_attrs["finalize"]["finalized"] == len(finals)
    # more or fewer candidates later: the ones already finalized are kept, not trained again
    def no_training(*a, **k):
        raise AssertionError("a finalized candidate was trained again")

    with monkeypatch.context() as patch:
        patch.setattr(finalize_mod, "evaluate_recipe", no_training)
        assert main(["finalize", str(study_file), *data, "--top-k", "1"]) == 0
    study = optuna.load_study(study_name="el", storage=f"sqlite:///{tmp_path / 'el.db'}")
    assert study.user_attrs["final"] == finals

    assert main(["report", str(study_file)]) == 0
    recipe_path = tmp_path / "final.yaml"
    assert main(["export", str(study_file), "--max-drop", "100", "-o", str(recipe_path)]) == 0
    recipe = yaml.safe_load(recipe_path.read_text())
    assert recipe["measured"]["fidelity"] == "final"
    chosen = finals[str(recipe["measured"]["trial"])]
    assert recipe["measured"]["metric"] == chosen["metric"]
    # the fastest final point within the drop
    assert chosen["latency_ms"] == min(f["latency_ms"] for f in finals.values()
                                       if f["metric"] >= study.user_attrs["teacher"]["search_metric"] - 1.0)

    shutil.rmtree(isolated_cache / "elastic")  # apply rebuilds the student deterministically
    assert main(["apply", str(recipe_path), "-o", str(tmp_path / "compressed"), "--no-onnx", *data]) == 0
    manifest = json.loads((tmp_path / "compressed" / "autosqueeze.json").read_text())
    assert manifest["measured"]["reproduced"]["metric"] == chosen["metric"]
    assert (isolated_cache / "elastic" / students[0].name / "model.safetensors").is_file()


def test_finalize_trains_exactly_the_trials_named(tiny_model_dir, glue_dir, tmp_path, isolated_cache, capsys):
    study_file = write_elastic_study(tmp_path, tiny_model_dir, trials=4)
    data = ["--data-dir", str(glue_dir)]
    assert main(["search", str(study_file), *data]) == 0
    study = optuna.load_study(study_name="el", storage=f"sqlite:///{tmp_path / 'el.db'}")
    done = [t.number for t in study.trials if t.user_attrs.get("status") == "complete"]
    pick = [done[-1], done[0], done[-1]]  # a repeat is finalized once
    assert main(["finalize", str(study_file), *data, "--trials", f"{pick[0]},{pick[1]},{pick[2]}"]) == 0
    study = optuna.load_study(study_name="el", storage=f"sqlite:///{tmp_path / 'el.db'}")
    assert set(study.user_attrs["final"]) == {str(done[-1]), str(done[0])}
    assert study.user_attrs["finalize"]["candidates"] == [done[-1], done[0]]
    capsys.readouterr()
    assert main(["finalize", str(study_file), *data, "--trials", "999"]) == 2  # not a trial of the study
    err = capsys.readouterr().err.strip()
    assert "trial 999 is not a completed feasible trial of study 'el'" in err and len(err.splitlines()) == 1
    assert main(["finalize", str(study_file), "--trials", "3,,4"]) == 2  # refused before anything runs
    assert "must be trial numbers separated by commas" in capsys.readouterr().err
    assert main(["finalize", str(study_file), "--trials", "3", "--top-k", "2"]) == 2  # one or the other
    assert "not allowed with argument" in capsys.readouterr().err


def test_export_max_drop_refuses_when_nothing_is_close_enough(tiny_model_dir, glue_dir, tmp_path, isolated_cache,
                                                              capsys):
    study_file = write_elastic_study(tmp_path, tiny_model_dir, trials=2)
    assert main(["search", str(study_file), "--data-dir", str(glue_dir)]) == 0
    rc = main(["export", str(study_file), "--max-drop", "-1", "-o", str(tmp_path / "r.yaml")])
    assert rc == 2 and not (tmp_path / "r.yaml").exists()


def test_final_recipe_inserts_distillation_after_the_structure():
    settings = FinalizeSettings(steps=50)
    r = Recipe(steps=[Step("elastic", {"student": "sst2-0123456789ab", "layers": 2}), Step("quantize_dynamic", {})])
    assert [s.method for s in final_recipe(r, settings).steps] == ["elastic", "distill", "quantize_dynamic"]
    assert final_recipe(r, settings).steps[1].params["steps"] == 50
    per_trial = Recipe(steps=[Step("drop_layers", {"keep": 2}), Step("distill", {"steps": 10, "lr": 1e-4})])
    assert final_recipe(per_trial, settings).steps[1].params == {"steps": 50, "lr": 1e-4}
    plain = Recipe(steps=[Step("quantize_dynamic", {})])
    assert final_recipe(plain, settings) is plain


@pytest.mark.parametrize("xs,ys,tau", [([1, 2, 3], [1, 2, 3], 1.0), ([1, 2, 3], [3, 2, 1], -1.0),
                                       ([1, 2, 3, 4], [1, 3, 2, 4], 2 / 3), ([1], [1], None)])
def test_kendall_tau(xs, ys, tau):
    got = kendall_tau(xs, ys)
    assert got == tau if tau is None else abs(got - tau) < 1e-9
