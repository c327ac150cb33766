"""What is measured is what is saved (issue 26 item 5): a quantized folder stores its int8 / int4 /
bf16 tensors, its bytes on disk match the size reported, it loads without quantizing again to
the very model that was measured, and folders of the previous format still load."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

import autosqueeze
from autosqueeze import artifact
from autosqueeze.artifact import (
    MANIFEST,
    WEIGHTS,
    CorruptModelError,
    file_sha256,
    load_compressed,
    read_manifest,
    save_compressed,
)
from autosqueeze.builder import build
from autosqueeze.measure import model_size
from autosqueeze.methods.common import is_quantized_module
from autosqueeze.recipe import Recipe, Step
from tests.tiny import batch, context, logits, tiny_bert

RECIPES = {
    "dynamic": [Step("quantize_dynamic", {})],
    "dynamic_classifier_shared": [Step("share_layers", {"group_size": 2}),
                                  Step("quantize_dynamic", {"parts": ["attention", "ffn", "classifier"]})],
    "int4_and_int8_table": [Step("quantize_weights", {"bits": 4, "group_size": 16}),
                            Step("quantize_embeddings", {"bits": 8, "tables": "all"})],
    "int8_weights_bf16": [Step("quantize_weights", {"bits": 8, "group_size": None, "compute": "bf16"})],
    "bf16_embeddings_int8": [Step("cast_precision", {"dtype": "bf16", "parts": ["embeddings"]}),
                             Step("quantize_dynamic", {})],
    "fp16_ffn": [Step("cast_precision", {"dtype": "fp16", "parts": ["ffn"]})],
    "static": [Step("quantize_static", {"sentences": 8})],
}


def _no_requantization(monkeypatch):
    """Loading may replay the float structure, never the quantization steps."""
    real = artifact.replay

    def replay(*args, **kw):
        assert kw.get("part") != "quantize", "the quantization was redone at load"
        return real(*args, **kw)

    monkeypatch.setattr(artifact, "replay", replay)


def _header(path) -> dict:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


def _stored_bytes(path, keep) -> int:
    return sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in _header(path).items()
               if k != "__metadata__" and keep(k))


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_quantized_layers_are_stored_and_loaded_as_they_are(name, tmp_path, monkeypatch):
    teacher = tiny_bert(layers=4, hidden=64, ffn=128, attn="sdpa")
    recipe = Recipe(steps=RECIPES[name])
    built = build(recipe, teacher, context(teacher))
    out = save_compressed(built, recipe, None, teacher.config, tmp_path / "m", {})
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["format"] == artifact.FORMAT and manifest["weights"] == "quantized"
    assert manifest["quantized_modules"] and manifest["storage"]["deploys"] == WEIGHTS
    _no_requantization(monkeypatch)
    loaded = autosqueeze.load(out)
    b = batch()
    assert torch.equal(logits(loaded, b), logits(built.model, b))  # bit for bit
    assert [type(m) for m in loaded.modules()] == [type(m) for m in built.model.modules()]
    assert model_size(loaded) == model_size(built.model)
    for key in ("autosqueeze_requires_runtime",):
        assert getattr(loaded, key, None) == getattr(built.model, key, None)
    # nothing stored in float that the model holds in fewer bytes
    stored = _stored_bytes(out / WEIGHTS, lambda k: True)
    assert stored <= model_size(built.model).total_bytes * 1.01 + 1024


def test_int8_folder_bytes_on_disk_match_the_size_reported(tmp_path, monkeypatch):
    """hidden 256, 2 layers: the encoder's Linears are ~1/4 of their fp32 bytes on disk, and the
    whole weights file is within a few percent of model_size."""
    teacher = tiny_bert(layers=2, heads=4, hidden=256, ffn=1024, attn="sdpa")
    recipe = Recipe(steps=[Step("quantize_dynamic", {})])
    built = build(recipe, teacher, context(teacher))
    out = save_compressed(built, recipe, None, teacher.config, tmp_path / "m", {})
    reported = model_size(built.model).total_bytes
    on_disk = (out / WEIGHTS).stat().st_size
    assert abs(on_disk - reported) / reported < 0.02, (on_disk, reported)
    storage = json.loads((out / MANIFEST).read_text())["storage"]
    assert storage["files"][WEIGHTS] == on_disk and storage["measured_bytes"] == reported
    encoder = _stored_bytes(out / WEIGHTS, lambda k: k.startswith("bert.encoder.") and "LayerNorm" not in k)
    fp32 = sum(p.numel() * 4 for n, p in teacher.bert.encoder.named_parameters() if "LayerNorm" not in n)
    assert 0.25 <= encoder / fp32 < 0.26, encoder / fp32  # int8 weights + fp32 biases and scales
    _no_requantization(monkeypatch)
    b = batch()
    assert torch.equal(logits(autosqueeze.load(out), b), logits(built.model, b))


def _as_format_1(out, built) -> None:
    """What autosqueeze wrote before format 2: the float model, quantization redone at load."""
    from safetensors.torch import save_model

    save_model(built.float_model, str(out / WEIGHTS), metadata={"format": "pt"})
    manifest = json.loads((out / MANIFEST).read_text())
    for key in ("format", "weights", "quantized_modules", "model_flags", "storage"):
        manifest.pop(key)
    manifest["weights_sha256"] = file_sha256(out / WEIGHTS)
    (out / MANIFEST).write_text(json.dumps(manifest))


def test_a_folder_of_the_previous_format_still_loads(tmp_path):
    teacher = tiny_bert(layers=2, hidden=64, ffn=128, attn="sdpa")
    recipe = Recipe(steps=[Step("quantize_weights", {"bits": 4, "group_size": 16}), Step("quantize_dynamic",
                                                                                           {"parts": ["classifier"]})])
    built = build(recipe, teacher, context(teacher))
    out = save_compressed(built, recipe, None, teacher.config, tmp_path / "m", {})
    _as_format_1(out, built)
    b = batch()
    assert torch.equal(logits(autosqueeze.load(out), b), logits(built.model, b))
    float_model = load_compressed(out, quantized=False)
    assert not any(is_quantized_module(m) for m in float_model.modules())
    assert torch.equal(logits(float_model, b), logits(built.float_model, b))


def test_float_model_of_a_quantized_folder_holds_the_dequantized_weights(tmp_path):
    teacher = tiny_bert(layers=2, hidden=64, ffn=128, attn="sdpa")
    recipe = Recipe(steps=[Step("quantize_dynamic", {})])
    built = build(recipe, teacher, context(teacher))
    out = save_compressed(built, recipe, None, teacher.config, tmp_path / "m", {})
    float_model = load_compressed(out, quantized=False)
    assert not any(is_quantized_module(m) for m in float_model.modules())
    name = "bert.encoder.layer.0.attention.self.query"
    want = built.model.get_submodule(name).weight().dequantize()
    assert torch.equal(float_model.get_submodule(name).weight, want)
    b = batch()
    assert torch.allclose(logits(float_model, b), logits(built.float_model, b), atol=0.05)


def test_a_folder_of_an_unknown_format_or_with_missing_tensors_is_corrupt(tmp_path):
    teacher = tiny_bert(layers=2, hidden=64, ffn=128, attn="sdpa")
    recipe = Recipe(steps=[Step("quantize_dynamic", {})])
    built = build(recipe, teacher, context(teacher))
    out = save_compressed(built, recipe, None, teacher.config, tmp_path / "m", {})
    manifest = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps({**manifest, "format": 99}))
    with pytest.raises(CorruptModelError, match="format 99"):
        autosqueeze.load(out)
    entry = dict(manifest["quantized_modules"][0], tensors=["weight_int8", "nothing"])
    (out / MANIFEST).write_text(json.dumps({**manifest, "quantized_modules": [entry]}))
    with pytest.raises(CorruptModelError, match="does not match"):
        autosqueeze.load(out)


# --- through `autosqueeze apply` --------------------------------------------------------------
@pytest.fixture()
def applied(tiny_model_dir, glue_dir, tmp_path, isolated_cache, monkeypatch):
    """``apply`` (rebuild) of an int8 recipe on a hidden-256, 2-layer BERT teacher; returns
    (rebuilt, the model apply measured, out) for a runtime."""
    import yaml

    from autosqueeze import apply as apply_mod
    from tests.test_cli_e2e import FAST_LATENCY
    from tests.tiny import save_model_dir

    teacher = save_model_dir("bert", tiny_model_dir / "vocab.txt", tmp_path / "teacher", layers=2, heads=4,
                             hidden=256, ffn=1024)
    (teacher / "metrics.json").write_text("{}")
    (teacher / "teacher.json").write_text("{}")
    monkeypatch.setenv("AUTOSQUEEZE_ONNX_EXPORTER", "torchscript")  # seconds
    seen = {}
    real = apply_mod.save_compressed

    def save(built, *args, **kw):
        seen["model"] = built.model
        return real(built, *args, **kw)

    monkeypatch.setattr(apply_mod, "save_compressed", save)

    def run(runtime: str):
        recipe = Recipe(base_model=str(teacher), task="sst2", steps=[Step("quantize_dynamic", {})],
                        data={"dev_subset": 16, "eval_batch_size": 8, "latency": FAST_LATENCY},
                        profile={"seq_len": 16, "threads": 1, "runtime": runtime})
        (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe.to_dict()))
        out = tmp_path / f"model-{runtime}"
        rebuilt = apply_mod.rebuild(tmp_path / "r.yaml", out, str(glue_dir), teacher_dir=str(teacher),
                                    onnx=runtime == "onnxruntime")
        return rebuilt, seen["model"], out

    return run


def test_applied_int8_folder_weighs_what_apply_reports_and_loads_the_measured_model(applied, monkeypatch):
    rebuilt, measured, out = applied("torch")
    reported = rebuilt.reproduced["size"]["total_bytes"]
    on_disk = (out / WEIGHTS).stat().st_size
    assert abs(on_disk - reported) / reported < 0.03, (on_disk, reported)
    storage = read_manifest(out)["storage"]
    assert storage["deploys"] == WEIGHTS and storage["files"] == {WEIGHTS: on_disk}
    assert storage["measured_bytes"] == reported
    _no_requantization(monkeypatch)
    loaded = autosqueeze.load(out)
    b = batch(seq=16)
    assert torch.equal(logits(loaded, b), logits(measured, b))


def test_applied_onnx_runtime_folder_deploys_the_int8_graph(applied):
    pytest.importorskip("onnxruntime")
    import onnx

    rebuilt, _, out = applied("onnxruntime")
    storage = read_manifest(out)["storage"]
    assert storage["deploys"] == "model.onnx" and rebuilt.onnx["quantized_nodes"] > 0
    graph = onnx.load(str(out / "model.onnx"))
    int8 = sum(int(np.prod(t.dims)) for t in graph.graph.initializer if t.data_type == onnx.TensorProto.INT8)
    encoder_weights = 2 * (4 * 256 * 256 + 2 * 256 * 1024)
    assert int8 >= encoder_weights  # the encoder's Linears are int8 in the graph
    reported = rebuilt.reproduced["size"]["total_bytes"]
    assert storage["files"]["model.onnx"] < 1.15 * reported, (storage["files"], reported)


def test_a_quantized_layer_the_format_cannot_store_falls_back_to_the_float_model(tmp_path, monkeypatch):
    from autosqueeze import quant_state

    teacher = tiny_bert(layers=2, hidden=64, ffn=128, attn="sdpa")
    recipe = Recipe(steps=[Step("quantize_dynamic", {})])
    built = build(recipe, teacher, context(teacher))

    def refuse(model):
        raise quant_state.Unpackable("a kind of its own")

    monkeypatch.setattr(quant_state, "pack", refuse)
    out = save_compressed(built, recipe, None, teacher.config, tmp_path / "m", {})
    manifest = read_manifest(out)
    assert manifest["weights"] == "float" and manifest["storage"]["deployed_over_measured"] > 2  # said, not hidden
    b = batch()
    assert torch.equal(logits(autosqueeze.load(out), b), logits(built.model, b))


def test_the_weights_file_follows_the_umask(tmp_path):
    import os
    import stat

    teacher = tiny_bert(layers=2, hidden=64, ffn=128, attn="sdpa")
    recipe = Recipe(steps=[Step("quantize_dynamic", {})])
    built = build(recipe, teacher, context(teacher))
    before = os.umask(0o022)
    try:
        out = save_compressed(built, recipe, None, teacher.config, tmp_path / "m", {}, check_plain=False)
    finally:
        os.umask(before)
    assert stat.S_IMODE((out / WEIGHTS).stat().st_mode) == 0o644  # safetensors alone writes 0600
