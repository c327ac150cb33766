"""quantize_static: calibrated static int8, deployed as an ONNX Runtime QDQ graph."""
from __future__ import annotations

import pytest
import torch

from autosqueeze.artifact import load_compressed, save_compressed
from autosqueeze.builder import build
from autosqueeze.measure import HardwareProfile, LatencySettings
from autosqueeze.methods.quantize_static import StaticInt8Linear
from autosqueeze.recipe import Recipe, Step
from autosqueeze.runtimes import OnnxUnsupported, RuntimeRefused, deployed_latency, export_for_deployment
from tests.tiny import batch, context, logits, tiny_bert

ort = pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install 'autosqueeze[onnx]'")
onnx = pytest.importorskip("onnx")
FAST = LatencySettings(warmup=1, repeats=3, min_time_s=0.0, idle_wait_s=0.0)
STEPS = [Step("drop_layers", {"keep": 2}), Step("prune_structured", {"heads_keep": [2, 3], "ffn_keep": [16, 48]}),
         Step("quantize_static", {"sentences": 12})]


@pytest.fixture(scope="module")
def built():
    teacher = tiny_bert()
    recipe = Recipe(steps=STEPS)
    return recipe, build(recipe, teacher, context(teacher))


def _run(path, b, optimize: bool) -> torch.Tensor:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:  # the QDQ graph's own arithmetic, before ONNX Runtime fuses it into integer kernels
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {"input_ids": b["input_ids"].numpy(), "attention_mask": b["attention_mask"].numpy(),
            "token_type_ids": torch.zeros_like(b["input_ids"]).numpy()}
    return torch.from_numpy(sess.run(["logits"], {i.name: feed[i.name] for i in sess.get_inputs()})[0])


def test_the_qdq_graph_computes_what_the_pytorch_model_simulates(built, tmp_path):
    recipe, b = built
    assert b.decisions[-1]["sentences"] == 12  # 3 tiny batches of 4 sentences
    info = export_for_deployment(b.model, tmp_path / "m.onnx", float_model=b.float_model, recipe=recipe,
                                 exporter="torchscript")
    assert info.quantized and info.quantized_nodes == 2 * 6  # 2 layers x (Q, K, V, out, up, down)
    graph = onnx.load(info.path).graph
    kinds = [n.op_type for n in graph.node]
    assert kinds.count("QuantizeLinear") == 2 * 4  # activations: layer input, context, FFN input, FFN hidden
    dq_out = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    readers = {n.op_type for n in graph.node for i in n.input if i in dq_out}
    assert readers == {"MatMul"}  # residual Adds and LayerNorms read the float tensors
    x = batch(batch_size=3, seq=10, seed=2)
    ref = logits(b.model, x)
    exact = _run(info.path, x, optimize=False)
    assert (exact - ref).abs().max() <= 1e-4 * ref.abs().max() + 1e-7  # same grids, same rounding
    fused = _run(info.path, x, optimize=True)  # integer kernels: may round differently
    assert (fused - ref).abs().max() <= 5e-2 * ref.abs().max()


def test_static_int8_is_timed_only_in_onnx_runtime(built):
    from autosqueeze.runtimes.timing import timing_against_teacher

    recipe, b = built
    torch_profile = HardwareProfile(threads=1, seq_len=16)
    with pytest.raises(RuntimeRefused, match=r"^quantize_static needs runtime onnxruntime: "):
        deployed_latency(b.model, torch_profile, FAST)
    with pytest.raises(RuntimeRefused, match="quantize_static needs runtime onnxruntime"):
        timing_against_teacher(b.model, b.float_model, torch_profile, FAST, 1.0)
    ort_profile = HardwareProfile(threads=1, seq_len=16, runtime="onnxruntime")
    stats = deployed_latency(b.model, ort_profile, FAST, float_model=b.float_model, recipe=recipe)
    assert stats.median_ms > 0


def test_a_saved_model_replays_the_recorded_calibration(built, tmp_path):
    recipe, b = built
    teacher = tiny_bert()
    out = save_compressed(b, recipe, None, teacher.config, tmp_path / "saved", check_plain=False)
    loaded = load_compressed(out)  # no data: the ranges come from the decisions
    mods = [(n, m) for n, m in b.model.named_modules() if isinstance(m, StaticInt8Linear)]
    assert len(mods) == 2 * 6
    for name, mod in mods:
        again = loaded.get_submodule(name)
        assert isinstance(again, StaticInt8Linear) and torch.equal(again.qweight, mod.qweight)
        assert (again.rmin, again.rmax, again.a_scale, again.a_zero) == (mod.rmin, mod.rmax, mod.a_scale, mod.a_zero)
    x = batch(seed=5)
    assert torch.allclose(logits(loaded, x), logits(b.model, x), atol=1e-4)  # attention kernels may differ
    assert loaded.autosqueeze_requires_runtime == "onnxruntime"


def test_replay_without_recorded_ranges_is_refused():
    from autosqueeze.methods import MethodError
    from autosqueeze.recipe import apply_recipe

    teacher = tiny_bert(layers=1)
    ctx = context(teacher, replay=True)
    with pytest.raises(MethodError, match="recorded calibration ranges"):
        apply_recipe(Recipe(steps=[Step("quantize_static", {})]), teacher, ctx, [{}])


def test_dynamic_and_static_int8_in_one_recipe_do_not_export(tmp_path):
    teacher = tiny_bert(layers=1)
    recipe = Recipe(steps=[Step("quantize_static", {"parts": ["attention"], "sentences": 4}),
                           Step("quantize_dynamic", {"parts": ["ffn"]})])
    b = build(recipe, teacher, context(teacher))
    with pytest.raises(OnnxUnsupported, match="both quantize_dynamic and quantize_static") as err:
        export_for_deployment(b.model, tmp_path / "x.onnx", float_model=b.float_model, recipe=recipe)
    assert "\n" not in str(err.value)
