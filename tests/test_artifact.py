"""Saved model folders: load back, plain from_pretrained where the architecture allows, corruption."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import autosqueeze
from autosqueeze.artifact import MANIFEST, WEIGHTS, CorruptModelError, read_manifest, save_compressed
from autosqueeze.builder import build
from autosqueeze.recipe import Recipe, Step
from tests.tiny import batch, context, logits, tiny_bert


def _save(recipe: Recipe, tmp_path, name: str = "m"):
    teacher = tiny_bert(layers=3, attn="sdpa")
    built = build(recipe, teacher, context(teacher))
    out = save_compressed(built, recipe, None, teacher.config, tmp_path / name, {"recorded": {}})
    return built, out


def _plain(out):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(out).eval()


def test_layer_dropping_folder_loads_with_plain_from_pretrained(tmp_path):
    built, out = _save(Recipe(steps=[Step("drop_layers", {"keep": 2})]), tmp_path)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["plain_from_pretrained"]["ok"] is True
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    b = batch()
    ref = logits(built.model, b)
    assert torch.equal(logits(_plain(out), b), ref)
    assert torch.equal(logits(autosqueeze.load(out), b), ref)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folder left


def test_quantized_folder_says_plain_loading_is_not_the_deployed_model(tmp_path):
    built, out = _save(Recipe(steps=[Step("drop_layers", {"keep": 2}), Step("quantize_dynamic", {})]), tmp_path)
    plain = read_manifest(out)["plain_from_pretrained"]
    assert plain["ok"] is False and "quantizes" in plain["reason"]
    b = batch()
    assert torch.equal(logits(autosqueeze.load(out), b), logits(built.model, b))


def test_per_layer_structures_are_checked_not_assumed(tmp_path):
    """Head pruning leaves per-layer head counts that config.json cannot describe: the manifest says so."""
    recipe = Recipe(steps=[Step("prune_structured", {"heads_keep": [2, 4, 3], "importance": "magnitude"})])
    built, out = _save(recipe, tmp_path)
    plain = read_manifest(out)["plain_from_pretrained"]
    b = batch()
    assert torch.equal(logits(autosqueeze.load(out), b), logits(built.model, b))
    if plain["ok"]:
        assert torch.allclose(logits(_plain(out), b), logits(built.model, b), atol=1e-4)
    else:
        assert plain["reason"].startswith("from_pretrained")


def test_existing_folder_that_is_not_a_model_is_not_overwritten(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an autosqueeze model folder"):
        _save(Recipe(steps=[]), tmp_path)
    assert (tmp_path / "m" / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def _corrupt(out, how: str) -> None:
    if how == "no weights":
        (out / WEIGHTS).unlink()
    elif how == "no manifest":
        (out / MANIFEST).unlink()
    elif how == "manifest not json":
        (out / MANIFEST).write_text("{not json")
    elif how == "manifest without decisions":
        m = json.loads((out / MANIFEST).read_text())
        del m["decisions"]
        (out / MANIFEST).write_text(json.dumps(m))
    elif how == "recipe with a bad value":
        m = json.loads((out / MANIFEST).read_text())
        m["recipe"]["steps"][0]["params"]["keep"] = 0
        (out / MANIFEST).write_text(json.dumps(m))
    elif how == "truncated weights":
        data = (out / WEIGHTS).read_bytes()
        (out / WEIGHTS).write_bytes(data[: len(data) // 2])
    elif how == "weights of another model":  # consistent hash, wrong structure
        m = json.loads((out / MANIFEST).read_text())
        m["recipe"]["steps"][0]["params"]["keep"] = 3
        m["decisions"][0] = {"kept_layers": [0, 1, 2]}
        m.pop("weights_sha256")
        (out / MANIFEST).write_text(json.dumps(m))
    elif how == "a file, not a folder":
        shutil.rmtree(out)
        out.write_text("x")


CORRUPTIONS = {
    "no weights": "model.safetensors is missing", "no manifest": "autosqueeze.json is missing",
    "manifest not json": "is corrupt", "manifest without decisions": "missing key(s) ['decisions']",
    "recipe with a bad value": "keep must be >= 1", "truncated weights": "SHA-256 differs",
    "weights of another model": "does not match the recipe's structure", "a file, not a folder": "is a file",
}


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
def test_corrupt_folders_fail_with_one_clear_line(how, tmp_path):
    _, out = _save(Recipe(steps=[Step("drop_layers", {"keep": 2})]), tmp_path)
    _corrupt(out, how)
    with pytest.raises(CorruptModelError) as err:
        autosqueeze.load(out)
    message = str(err.value)
    assert CORRUPTIONS[how] in message and "\n" not in message


def test_missing_folder_is_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        autosqueeze.load(tmp_path / "nowhere")
