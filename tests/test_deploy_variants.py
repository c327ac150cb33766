"""Deploy variants (issue 25): every candidate builds, runs and matches; the choice round-trips.

No timing is asserted: the variants' speed is the study's business (studies/deploy_graph).
"""
from __future__ import annotations

import json

import pytest
import torch

from autosqueeze.builder import build
from autosqueeze.measure import HardwareProfile
from autosqueeze.recipe import Recipe, Step
from autosqueeze.runtimes import variants as V
from tests.tiny import batch, context, logits, tiny_bert

pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install 'autosqueeze[onnx]'")
PROFILE = HardwareProfile(threads=1, seq_len=16, runtime="onnxruntime")


def _built(steps, layers: int = 2, attn: str = "sdpa"):
    teacher = tiny_bert(layers=layers, attn=attn)
    recipe = Recipe(steps=steps)
    return teacher, recipe, build(recipe, teacher, context(teacher))


def _ort_logits(path, b):
    from autosqueeze.runtimes.ort import OrtClassifier, make_session

    return OrtClassifier(make_session(path, HardwareProfile(threads=1)))(
        **{k: v for k, v in b.items() if k != "labels"}).logits


def test_a_variant_round_trips_and_refuses_unknown_keys():
    v = V.DEFAULT_VARIANT.with_(fusion="bert", int8={"per_channel": True})
    d = json.loads(json.dumps(v.to_dict()))
    assert V.DeployVariant.from_dict(d) == v and v.int8.per_channel and v.int8.weight_type == "QInt8"
    assert V.DeployVariant.from_dict({"exporter": "dynamo"}) == V.DeployVariant(exporter="dynamo")
    with pytest.raises(ValueError, match="unknown deploy variant keys"):
        V.DeployVariant.from_dict({"exportr": "dynamo"})
    with pytest.raises(ValueError, match="weight_type"):
        V.DeployVariant.from_dict({"int8": {"weight_type": "int4"}})
    with pytest.raises(ValueError, match="QOperator"):
        V.Int8Variant(format="QDQ")
    assert V.parse_deploy_setting(None) == V.DEFAULT_VARIANT
    assert V.parse_deploy_setting("measure") == "measure"
    assert V.parse_deploy_setting("legacy") == V.LEGACY_VARIANT
    assert V.parse_deploy_setting({"variant": {"opt_level": "extended"}}).opt_level == "extended"
    with pytest.raises(ValueError):
        V.parse_deploy_setting("fastest")


def test_the_active_variant_comes_from_the_process_then_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(V.ENV, raising=False)
    assert V.active_variant() == V.DEFAULT_VARIANT
    saved = tmp_path / "choice.json"
    saved.write_text(json.dumps({"variant": V.LEGACY_VARIANT.to_dict(), "results": []}))
    monkeypatch.setenv(V.ENV, str(saved))
    assert V.active_variant() == V.LEGACY_VARIANT
    before = V.set_active_variant({"fusion": "bert"})
    try:
        assert V.active_variant().fusion == "bert" and V.resolve_variant(None).fusion == "bert"
        assert V.resolve_variant(V.PLAIN_VARIANT) == V.PLAIN_VARIANT
    finally:
        V.set_active_variant(before)


@pytest.mark.parametrize("variant", [v for v in __import__(
    "autosqueeze.runtimes.deploy_variants", fromlist=["_"]).candidate_variants()], ids=lambda v: v.label)
def test_every_candidate_builds_runs_and_matches_pytorch_int8(variant, tmp_path):
    from autosqueeze.runtimes.onnx_export import export_for_deployment, recorded_variant
    from autosqueeze.runtimes.ort import session_level

    _, recipe, built = _built([Step("quantize_dynamic", {})])
    info = export_for_deployment(built.model, tmp_path / "q.onnx", float_model=built.float_model, recipe=recipe,
                                 variant=variant)
    assert info.quantized and info.quantized_nodes == 12  # 2 layers x (4 attention + 2 FFN) Linears
    assert info.variant is not None and recorded_variant(tmp_path / "q.onnx") == info.variant
    assert V.DeployVariant.from_dict(info.variant).int8 == variant.int8
    assert session_level(tmp_path / "q.onnx") == variant.opt_level
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.onnx"]  # no float / fused graph left behind
    for b in (batch(), batch(batch_size=3, seq=9, seed=2)):
        ref = logits(built.model, b)  # PyTorch int8
        assert (_ort_logits(tmp_path / "q.onnx", b) - ref).abs().max() <= 0.1 * ref.abs().max() + 1e-3


def test_fusion_leaves_the_recipes_float_layers_in_float(tmp_path):
    """parts: [ffn] keeps attention in float: the fused Attention would quantize it, so attention
    fusion is turned off and only the FFN MatMuls become int8."""
    import onnx

    from autosqueeze.runtimes.onnx_export import export_for_deployment

    _, recipe, built = _built([Step("quantize_dynamic", {"parts": ["ffn"]})])
    info = export_for_deployment(built.model, tmp_path / "q.onnx", float_model=built.float_model, recipe=recipe,
                                 variant=V.DEFAULT_VARIANT.with_(fusion="bert"))
    ops = [n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node]
    assert "QAttention" not in ops and "Attention" not in ops
    assert ops.count("MatMulInteger") + ops.count("DynamicQuantizeMatMul") == 4
    assert any("attention fusion off" in n for n in info.notes)
    b = batch()
    ref = logits(built.model, b)
    assert (_ort_logits(tmp_path / "q.onnx", b) - ref).abs().max() <= 0.1 * ref.abs().max() + 1e-3


def test_fusion_turns_attention_into_qattention_when_all_of_it_is_int8(tmp_path):
    import onnx

    from autosqueeze.runtimes.onnx_export import export_for_deployment

    _, recipe, built = _built([Step("quantize_dynamic", {})])
    info = export_for_deployment(built.model, tmp_path / "q.onnx", float_model=built.float_model, recipe=recipe,
                                 variant=V.DEFAULT_VARIANT.with_(fusion="bert"))
    ops = [n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node]
    assert ops.count("QAttention") == 2 and info.variant["fusion"] == "bert"


def test_eager_attention_for_export_is_restored(tmp_path):
    from autosqueeze.runtimes.onnx_export import export_onnx

    teacher = tiny_bert(layers=1, attn="sdpa")
    info = export_onnx(teacher, tmp_path / "m.onnx")
    assert teacher.config._attn_implementation == "sdpa"
    assert info.exporter == "torchscript" and info.variant["attention"] == "eager"
    b = batch(batch_size=2, seq=7, seed=4)
    assert torch.allclose(_ort_logits(tmp_path / "m.onnx", b), logits(teacher, b), atol=1e-5)


def test_ort_deployment_and_runner_take_a_variant(tmp_path):
    from autosqueeze.runtimes import ort_runner
    from autosqueeze.runtimes.deployed import OrtDeployment

    _, recipe, built = _built([Step("quantize_dynamic", {})])
    legacy = V.LEGACY_VARIANT
    with OrtDeployment(built.model, float_model=built.float_model, recipe=recipe, variant=legacy) as dep:
        assert dep.info.exporter == "dynamo" and dep.info_dict()["variant"]["attention"] == "model"
    b = {k: v for k, v in batch().items() if k != "labels"}
    with ort_runner(built.model, PROFILE, float_model=built.float_model, recipe=recipe,
                    variant=V.DEFAULT_VARIANT.with_(int8={"per_channel": True})) as run:
        assert run(**b)[0].shape == (4, 2)


def test_choose_variant_returns_a_serializable_choice_that_loads_back(tmp_path):
    from autosqueeze.runtimes.deploy_variants import choose_variant, load_choice

    teacher, recipe, built = _built([Step("quantize_dynamic", {})])
    cands = [V.DEFAULT_VARIANT, V.LEGACY_VARIANT, V.DEFAULT_VARIANT.with_(int8={"weight_type": "QUInt8"})]
    evals = [{k: v for k, v in batch(seed=s).items() if k != "labels"} for s in range(3)]
    choice = choose_variant(built.model, teacher, PROFILE, tmp_path, float_model=built.float_model, recipe=recipe,
                            candidates=cands, rounds=3, eval_batches=evals, labels=[0, 1] * 6)
    d = json.loads(json.dumps(choice.to_dict()))
    assert d["variant"] in [c.to_dict() for c in cands] and len(d["results"]) == 3
    assert all(r["speedup"]["median"] > 0 and r["agreement"] is not None for r in d["results"])
    assert d["results"][0]["agreement"] == 1.0 and d["results"][0]["vs_reference"] == pytest.approx(1.0)
    choice.save(tmp_path / "choice.json")
    assert load_choice(tmp_path / "choice.json") == choice.variant == load_choice(d)


def test_count_macs_counts_linears_and_attention():
    from autosqueeze.runtimes.macs import count_macs

    model = tiny_bert(layers=2, heads=4, hidden=32, ffn=64)
    m = count_macs(model, seq_len=16)
    per_layer = 16 * (4 * 32 * 32 + 2 * 32 * 64)
    head = 32 * 32 + 32 * 2  # pooler and classifier read one token
    assert m["linear"] == 2 * per_layer + head
    assert m["attention"] == 2 * 2 * 16 * 16 * 32 and m["total"] == m["linear"] + m["attention"]


def test_a_variant_recorded_in_the_recipe_is_the_one_deployed(tmp_path):
    from autosqueeze.runtimes.deployed import OrtDeployment
    from autosqueeze.runtimes.onnx_export import export_for_deployment

    _, recipe, built = _built([Step("quantize_dynamic", {})])
    recipe.profile = {**recipe.profile, "deploy_variant": V.LEGACY_VARIANT.to_dict()}
    info = export_for_deployment(built.model, tmp_path / "q.onnx", float_model=built.float_model, recipe=recipe)
    assert info.exporter == "dynamo" and info.variant == V.LEGACY_VARIANT.to_dict()
    dep = OrtDeployment(built.model, float_model=built.float_model, recipe=recipe, variant=V.DEFAULT_VARIANT)
    assert dep.variant == V.DEFAULT_VARIANT  # an explicit variant wins
