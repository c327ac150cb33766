"""export → apply on a searched tiny study: provenance, exact reproduction, loading back, refusals."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
import yaml

import autosqueeze
from autosqueeze.cli import main
from autosqueeze.recipe import load_recipe
from autosqueeze.report.pareto import Baselines, pareto_front, trial_records
from tests.fixtures_glue import write_glue
from tests.test_cli_e2e import write_study


@pytest.fixture(scope="module")
def searched(tiny_model_dir, tmp_path_factory):
    """A 5-trial study on the tiny BERT (searched once for the module; its space holds 5 recipes besides
    the teacher itself), with its own cache. Its 3-step teacher scores the majority class, so the front
    is the trials' own (no reference nor floor applies: tests/test_front_trust.py)."""
    root = tmp_path_factory.mktemp("export_apply")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOSQUEEZE_CACHE", str(root / "cache"))
        mp.delenv("AUTOSQUEEZE_GLUE_DIR", raising=False)
        mp.setenv("AUTOSQUEEZE_ONNX_EXPORTER", "torchscript")  # seconds; test_onnx covers the dynamo exporter
        glue = write_glue(root / "glue_data")
        study = write_study(root, tiny_model_dir, trials=5)
        assert main(["search", str(study), "--data-dir", str(glue)]) == 0
        s = optuna.load_study(study_name="t", storage=f"sqlite:///{root / 't.db'}")
        front = pareto_front(trial_records(s), Baselines.from_attrs(s.user_attrs))
        yield SimpleNamespace(root=root, study=study, glue=glue, front=front,
                              model=tiny_model_dir)


def _export(searched, name: str, *args: str) -> Path:
    out = searched.root / name
    assert main(["export", str(searched.study), "-o", str(out), "--overwrite", *args]) == 0
    return out


def _apply(searched, recipe: Path | str, out: Path, *args: str) -> int:
    return main(["apply", str(recipe), "-o", str(out), "--data-dir", str(searched.glue), *args])


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1 and err[-1] == errors[0], err
    return errors[0]


def test_export_at_two_budgets_writes_recipes_with_provenance(searched, capsys):
    fastest = searched.front[0]
    paths = [_export(searched, "fast.yaml", "--latency-budget", f"{fastest.latency_ms * 1.0001}"),
             _export(searched, "best.yaml")]
    assert f"trial {fastest.number}:" in capsys.readouterr().out
    for path in paths:
        recipe = load_recipe(path)  # valid, loadable
        raw = yaml.safe_load(path.read_text())
        assert raw["base_model"] == str(searched.model) and raw["task"] == "sst2" and raw["seed"] == 0
        assert len(raw["teacher"]["weights_hash"]) == 16 and len(raw["teacher"]["base_weights_hash"]) == 16
        fp = raw["profile"]["fingerprint"]
        assert fp["cpu"]["model"] and fp["threads"] == 2 and "torch" in fp["versions"] and fp["source"]
        m = raw["measured"]
        assert {"metric", "latency_ms", "speedup", "size", "baseline_ms", "trial", "study"} <= set(m)
        assert m["size"]["total_bytes"] > 0 and m["latency"]["p10_ms"] <= m["latency_ms"]
        assert any("exported" in n and f"trial {m['trial']}" in n for n in recipe.notes)
    assert yaml.safe_load(paths[0].read_text())["measured"]["trial"] == fastest.number


def test_export_a_named_trial_and_refusals(searched, capsys):
    number = searched.front[-1].number
    assert "trial" in yaml.safe_load(_export(searched, "named.yaml", "--trial", str(number)).read_text())["measured"]
    assert main(["export", str(searched.study), "-o", str(searched.root / "x.yaml"), "--trial", "0",
                 "--latency-budget", "5"]) == 2
    assert "not both" in _one_error_line(capsys)
    assert main(["export", str(searched.study), "-o", str(searched.root / "x.yaml"), "--min-speedup", "1e9"]) == 2
    assert "no Pareto trial meets the budget" in _one_error_line(capsys)
    assert not (searched.root / "x.yaml").exists()


@pytest.mark.parametrize("which", ["fast", "best"])
def test_apply_reproduces_exactly_and_loads_back(searched, which, capsys):
    recipe = searched.root / f"{which}.yaml"
    if not recipe.exists():
        _export(searched, recipe.name, *(["--latency-budget", f"{searched.front[0].latency_ms * 1.0001}"]
                                         if which == "fast" else []))
    out = searched.root / f"model_{which}"
    assert _apply(searched, recipe, out) == 0
    printed = capsys.readouterr().out
    assert "identical" in printed and "recorded" in printed and "onnx:" in printed
    manifest = json.loads((out / "autosqueeze.json").read_text())
    rec, rep, cmp = (manifest["measured"][k] for k in ("recorded", "reproduced", "comparison"))
    assert rep["metric"] == rec["metric"] and rep["metrics"] == rec["metrics"] and cmp["metric_equal"]
    assert cmp["size_equal"] and rep["size"] == rec["size"] and cmp["latency_ratio"] > 0
    # the saved model loads back and predicts like its ONNX export (and plain transformers, where it can)
    model = autosqueeze.load(out)
    ids = torch.randint(5, model.config.vocab_size, (3, 9))
    b = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    with torch.inference_mode():
        ref = model(**b).logits
    assert manifest["onnx"]["file"] == "model.onnx" and (out / "model.onnx").is_file()
    from autosqueeze.measure import HardwareProfile
    from autosqueeze.runtimes.ort import OrtClassifier, make_session

    onnx_logits = OrtClassifier(make_session(out / "model.onnx", HardwareProfile(threads=1)))(**b).logits
    assert (onnx_logits - ref).abs().max() <= 0.05 * ref.abs().max() + 1e-4
    if manifest["plain_from_pretrained"]["ok"]:
        from transformers import AutoModelForSequenceClassification

        with torch.inference_mode():
            assert torch.equal(AutoModelForSequenceClassification.from_pretrained(out).eval()(**b).logits, ref)
    # deterministic: a second rebuild, from the saved folder's own recipe, gives the same weights bit for bit
    again = searched.root / f"again_{which}"
    assert _apply(searched, out, again, "--no-onnx") == 0
    again_manifest = json.loads((again / "autosqueeze.json").read_text())
    assert again_manifest["weights_sha256"] == manifest["weights_sha256"]
    assert again_manifest["onnx"]["file"] is None and not (again / "model.onnx").exists()


def _edited(searched, tmp_path: Path, edit) -> Path:
    src = searched.root / "best.yaml"
    if not src.exists():
        _export(searched, "best.yaml")
    raw = yaml.safe_load(src.read_text())
    edit(raw)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _set_step(raw, method: str, params: dict) -> None:
    raw["steps"] = [{"method": method, "version": 1, "params": params}]


@pytest.mark.parametrize("edit, message", [
    (lambda r: _set_step(r, "drop_layers", {"keep": 0}), "drop_layers): method 'drop_layers': keep must be >= 1"),
    (lambda r: _set_step(r, "drop_layers", {"keep": 99}), "keep=99 but the model has only 3 layers"),
    (lambda r: _set_step(r, "drop_layers", {"kep": 2}), "has no parameter(s) ['kep']"),
    (lambda r: r["profile"].update(threads=0), "recipe profile: hardware.threads must be >= 1"),
    (lambda r: r.update(task="sst3"), "recipe task"),
    (lambda r: r["data"]["recovery"].update(batch_size="four"), "recipe data.recovery"),
    (lambda r: r.update(steps="drop everything"), "'steps' must be a list"),
], ids=["bad-value", "out-of-range", "unknown-param", "bad-profile", "bad-task", "bad-settings", "bad-steps"])
def test_hand_edited_recipes_fail_in_one_line(searched, tmp_path, capsys, edit, message):
    recipe = _edited(searched, tmp_path, edit)
    assert _apply(searched, recipe, tmp_path / "out") == 2
    line = _one_error_line(capsys)
    assert message in line, line
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["edited.yaml"]


def test_a_recipe_for_another_base_model_is_refused_unless_forced(searched, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    other = tmp_path / "other_model"
    shutil.copytree(searched.model, other)
    model = AutoModelForSequenceClassification.from_pretrained(other)
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight[7] += 1.0  # same architecture, other weights
    model.save_pretrained(other)
    recipe = _edited(searched, tmp_path, lambda r: r.update(base_model=str(other)))
    assert _apply(searched, recipe, tmp_path / "out") == 2
    line = _one_error_line(capsys)
    assert f"the base model '{other}'" in line and "is not the one this recipe was made from" in line
    assert "--force" in line and not (tmp_path / "out").exists()
    assert _apply(searched, recipe, tmp_path / "out", "--force", "--no-onnx") == 0  # trains its own teacher
    assert (tmp_path / "out" / "autosqueeze.json").is_file()


def test_another_teacher_or_a_corrupt_one_is_refused(searched, tmp_path, capsys):
    recipe = _export(searched,
                     "best.yaml") if not (searched.root / "best.yaml").exists() else searched.root / "best.yaml"
    teacher = tmp_path / "teacher"
    assert main(["finetune", "--task", "sst2", "--model", str(searched.model), "--data-dir", str(searched.glue),
                 "--out", str(teacher), "--max-steps", "2", "--batch-size", "4", "--max-seq-len", "16",
                 "--seed", "7"]) == 0
    capsys.readouterr()
    assert _apply(searched, recipe, tmp_path / "out", "--teacher", str(teacher)) == 2
    assert "the teacher at" in _one_error_line(capsys)
    weights = teacher / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert _apply(searched, recipe, tmp_path / "out", "--teacher", str(teacher)) == 2
    assert f"teacher folder {teacher} is corrupt" in _one_error_line(capsys)


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "model.safetensors").unlink(), "model.safetensors is missing"),
    (lambda d: (d / "autosqueeze.json").write_text("{oops"), "autosqueeze.json is corrupt"),
    (lambda d: (d / "model.safetensors").write_bytes(b"\0" * 64), "SHA-256 differs"),
], ids=["no-weights", "bad-manifest", "changed-weights"])
def test_a_corrupt_model_folder_fails_in_one_line(searched, tmp_path, capsys, damage, message):
    src = searched.root / "model_best"
    if not src.exists():
        pytest.skip("needs test_apply_reproduces_exactly_and_loads_back[best] to have run first")
    folder = tmp_path / "copy"
    shutil.copytree(src, folder)
    damage(folder)
    assert _apply(searched, folder, tmp_path / "out") == 2
    assert message in _one_error_line(capsys)
