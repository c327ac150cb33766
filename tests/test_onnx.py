"""ONNX export, dynamic int8 through onnxruntime.quantization, and ONNX Runtime latency."""
from __future__ import annotations

import builtins

import pytest
import torch

from autosqueeze.builder import build
from autosqueeze.errors import USER_ERRORS
from autosqueeze.measure import HardwareProfile, LatencySettings, LatencyStats
from autosqueeze.recipe import Recipe, Step
from autosqueeze.runtimes import OnnxUnavailable, OnnxUnsupported, deployed_latency, export_for_deployment, export_onnx
from autosqueeze.runtimes.fingerprint import hardware_fingerprint, same_machine
from autosqueeze.runtimes.ort import OrtClassifier, make_session
from tests.tiny import batch, context, logits, tiny_bert

pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install 'autosqueeze[onnx]'")
FAST = LatencySettings(warmup=1, repeats=3, min_time_s=0.0, idle_wait_s=0.0)
PROFILE = HardwareProfile(threads=1, seq_len=16, runtime="onnxruntime")


def _built(steps: list[Step], layers: int = 2):
    teacher = tiny_bert(layers=layers, attn="sdpa")
    recipe = Recipe(steps=steps)
    return recipe, build(recipe, teacher, context(teacher))


def _ort_logits(path, b):
    model = OrtClassifier(make_session(path, HardwareProfile(threads=1)))
    return model(**{k: v for k, v in b.items() if k != "labels"}).logits


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_float_export_matches_pytorch_on_other_shapes(exporter, tmp_path):
    _, built = _built([Step("drop_layers", {"keep": 1})])
    info = export_onnx(built.model, tmp_path / "m.onnx", exporter=exporter)
    assert info.exporter == exporter and info.inputs == ["input_ids", "attention_mask", "token_type_ids"]
    assert info.max_abs_diff < 1e-5 and info.size_bytes > 0
    for b in (batch(batch_size=1, seq=5), batch(batch_size=6, seq=30, seed=3)):  # dynamic batch and length
        assert torch.allclose(_ort_logits(tmp_path / "m.onnx", b), logits(built.model, b), atol=1e-5)


@pytest.mark.parametrize("parts, nodes", [(None, 12), (["ffn"], 4), (["attention", "ffn", "classifier"], 13)])
def test_dynamic_int8_quantizes_the_recipes_layers(parts, nodes, tmp_path):
    params = {} if parts is None else {"parts": parts}
    recipe, built = _built([Step("quantize_dynamic", params)])
    info = export_for_deployment(built.model, tmp_path / "q.onnx", float_model=built.float_model, recipe=recipe,
                                 exporter="torchscript")
    assert info.quantized and info.quantized_nodes == nodes  # 2 layers x (4 attention + 2 FFN) Linears
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.onnx"]  # the float graph is not left behind
    b = batch()
    ref = logits(built.model, b)  # PyTorch int8
    assert (_ort_logits(tmp_path / "q.onnx", b) - ref).abs().max() <= 0.05 * ref.abs().max() + 1e-4


def test_models_onnx_cannot_express_are_refused_with_the_reason(tmp_path):
    recipe, built = _built([Step("quantize_dynamic", {})])
    with pytest.raises(OnnxUnsupported, match="float model"):
        export_for_deployment(built.model, tmp_path / "x.onnx", recipe=recipe)
    with pytest.raises(OnnxUnsupported, match="packed int8"):
        export_for_deployment(built.model, tmp_path / "x.onnx")
    model = tiny_bert(layers=1)
    model.autosqueeze_needs_real_inputs = True  # what early exit sets: the cost is decided per batch
    with pytest.raises(OnnxUnsupported, match="early exit"):
        export_onnx(model, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_deployed_latency_dispatches_on_the_runtime(monkeypatch):
    monkeypatch.setenv("AUTOSQUEEZE_ONNX_EXPORTER", "torchscript")  # fast; the dynamo path is tested above
    recipe, built = _built([Step("drop_layers", {"keep": 1}), Step("quantize_dynamic", {})])
    ort = deployed_latency(built.model, PROFILE, FAST, float_model=built.float_model, recipe=recipe)
    eager = deployed_latency(built.model, HardwareProfile(threads=1, seq_len=16), FAST)
    for stats in (ort, eager):
        assert isinstance(stats, LatencyStats) and stats.median_ms > 0 and stats.threads == 1
    real = [{k: v for k, v in batch(seed=i).items() if k != "labels"} for i in range(2)]
    assert deployed_latency(built.float_model, PROFILE, FAST, real).repeats >= 3
    with pytest.raises(ValueError, match="unknown runtime 'tvm'"):
        deployed_latency(built.model, _profile_with_runtime("tvm"), FAST)


def _profile_with_runtime(name: str) -> HardwareProfile:
    profile = HardwareProfile(threads=1, seq_len=16)
    object.__setattr__(profile, "runtime", name)  # bypass validation: what a future runtime name would do
    return profile


def test_missing_onnxruntime_names_the_install_command(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name.split(".")[0] in ("onnxruntime", "onnx"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    with pytest.raises(OnnxUnavailable, match=r"pip install 'autosqueeze\[onnx\]'"):
        deployed_latency(tiny_bert(layers=1), PROFILE, FAST)
    assert issubclass(OnnxUnavailable, USER_ERRORS)  # the CLI prints it as one line


def test_fingerprint_describes_this_machine():
    fp = hardware_fingerprint(threads=2, runtime="onnxruntime")
    assert fp["cpu"]["model"] and fp["cpu"]["logical_cores"] >= 1 and fp["threads"] == 2
    assert {"torch", "transformers", "python"} <= set(fp["versions"])
    assert same_machine(fp, fp) == []
    other = {**fp, "threads": 4, "cpu": {**fp["cpu"], "model": "Other CPU"}}
    assert same_machine(fp, other) == [f"CPU {fp['cpu']['model']} vs Other CPU", "threads 2 vs 4"]


def test_a_study_measures_its_latencies_in_onnx_runtime(tiny_model_dir, glue_dir, tmp_path, isolated_cache,
                                                         monkeypatch, capsys):
    """hardware.runtime: onnxruntime — the int8 reference, every trial and apply are timed as ONNX
    Runtime sessions paired call by call with the fp32 PyTorch teacher (the baseline), so the
    front is the one deployed with it."""
    import json

    from autosqueeze.cli import main
    from autosqueeze.runtimes import ort as ort_module
    from tests.test_cli_e2e import write_study

    monkeypatch.setenv("AUTOSQUEEZE_ONNX_EXPORTER", "torchscript")
    calls = []

    class CountingRunner(ort_module.OrtRunner):  # type: ignore[misc,name-defined]
        def __init__(self, session, *args, **kwargs):
            calls.append([i.name for i in session.get_inputs()])
            super().__init__(session, *args, **kwargs)

    monkeypatch.setattr(ort_module, "OrtRunner", CountingRunner)
    study = write_study(tmp_path, tiny_model_dir, trials=3, hardware={"seq_len": 16, "runtime": "onnxruntime"})
    data = ["--data-dir", str(glue_dir)]
    assert main(["search", str(study), *data]) == 0
    n_search = len(calls)
    assert n_search >= 1  # the ORT int8 reference and the trials' architectures (identical ones share a timing)
    assert main(["export", str(study), "-o", str(tmp_path / "r.yaml")]) == 0
    assert main(["apply", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "m"), *data]) == 0
    assert len(calls) == n_search + 1  # apply: the saved model.onnx, paired with the PyTorch teacher
    manifest = json.loads((tmp_path / "m" / "autosqueeze.json").read_text())
    assert manifest["measured"]["reproduced"]["runtime"] == "onnxruntime"
    assert manifest["recipe"]["profile"]["runtime"] == "onnxruntime"
    assert "onnx:" in capsys.readouterr().out
