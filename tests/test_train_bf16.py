"""bf16 autocast for training: the teacher's fine-tuning, distillation and finalization (a 2.5x cheaper
step on a CPU with bf16 units); off by default and out of the cache keys while off."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from autosqueeze.elastic.train import ElasticSettings
from autosqueeze.measure.latency import HardwareProfile
from autosqueeze.methods import distill as distill_mod
from autosqueeze.methods.distill import DistillConfig
from autosqueeze.recipe import Recipe, Step
from autosqueeze.runtimes import fingerprint
from autosqueeze.search.finalize import final_recipe
from autosqueeze.study_config import FinalizeSettings, StudyConfig, check_machine
from autosqueeze.tasks import get_task
from autosqueeze.teacher import teacher_key
from autosqueeze.train import TrainSettings, train_loop


def _batches(n: int):
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        yield {"x": torch.randn(8, 16, generator=g), "labels": torch.randint(0, 2, (8,), generator=g)}


def _train(bf16: bool):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 2))
    seen = []

    def loss_fn(m, batch):
        seen.append(torch.is_autocast_enabled("cpu"))
        out = m(batch["x"])
        seen.append(out.dtype)
        return nn.functional.cross_entropy(out.float(), batch["labels"])

    before = [p.detach().clone() for p in model.parameters()]
    stats = train_loop(model, _batches(5), loss_fn, steps=5, lr=1e-2, bf16=bf16)
    return model, before, seen, stats


def test_bf16_runs_the_forward_under_autocast_and_keeps_fp32_weights():
    model, before, seen, stats = _train(bf16=True)
    assert seen[0::2] == [True] * 5 and seen[1::2] == [torch.bfloat16] * 5
    assert stats["steps"] == 5 and torch.isfinite(torch.tensor(stats["loss"]))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # it trained
    assert not torch.is_autocast_enabled("cpu")  # and left no autocast behind


def test_fp32_by_default():
    _, _, seen, _ = _train(bf16=False)
    assert seen[0::2] == [False] * 5 and seen[1::2] == [torch.float32] * 5


def test_bf16_is_in_the_teacher_key_only_when_on():
    task = get_task("sst2")
    off, on = TrainSettings(steps=10), TrainSettings(steps=10, bf16=True)
    assert "bf16" not in off.to_dict() and on.to_dict()["bf16"] is True  # keys of cached teachers unchanged
    assert teacher_key("m", task, off, "d") != teacher_key("m", task, on, "d")


@pytest.mark.parametrize("cls, kwargs", [(TrainSettings, {}), (DistillConfig, {}), (FinalizeSettings, {})])
def test_bf16_must_be_a_boolean(cls, kwargs):
    with pytest.raises(ValueError, match="bf16 must be true or false"):
        cls(bf16="yes", **kwargs)


def _recipe(*methods: str) -> Recipe:
    params = {"elastic": {"layers": 2}, "distill": {"steps": 5}, "quantize_dynamic": {}}
    return Recipe(steps=[Step(m, dict(params[m])) for m in methods], base_model="m", task="sst2")


@pytest.mark.parametrize("methods", [("elastic", "quantize_dynamic"), ("elastic", "distill", "quantize_dynamic")])
def test_finalize_bf16_reaches_the_recipes_distill_step(methods):
    on = final_recipe(_recipe(*methods), FinalizeSettings(steps=7, bf16=True))
    off = final_recipe(_recipe(*methods), FinalizeSettings(steps=7))
    (d_on,) = [s for s in on.steps if s.method == "distill"]
    (d_off,) = [s for s in off.steps if s.method == "distill"]
    assert d_on.params["bf16"] is True and d_on.params["steps"] == 7
    assert "bf16" not in d_off.params  # a recipe finalized without it keeps its form


def test_distill_passes_bf16_to_the_training_loop(monkeypatch):
    got = {}

    def fake_loop(model, batches, loss_fn, **kwargs):
        got.update(kwargs)
        return {"loss": 0.0, "steps": 0}

    class Ctx:
        probe = replay = False
        teacher = nn.Linear(2, 2)
        teacher_outputs = None
        seed = 0
        kept_hidden = None
        progress = None

        def batches(self, steps, seed_offset=0):
            return iter(())

        def training_callbacks(self, model):
            return {}

        decisions: dict = {}

    monkeypatch.setattr(distill_mod, "train_loop", fake_loop)
    monkeypatch.setattr(distill_mod, "_layer_map", lambda *a: [0])
    monkeypatch.setattr(distill_mod, "has_quantized_layers", lambda m: False)
    distill_mod.apply(nn.Linear(2, 2), DistillConfig(steps=3, bf16=True), Ctx())
    assert got["bf16"] is True


def test_bf16_training_on_a_cpu_without_bf16_units_is_warned(tmp_path, monkeypatch, caplog):
    cfg = StudyConfig.__new__(StudyConfig)  # only the fields check_machine reads
    cfg.path = tmp_path / "study.yaml"
    cfg.hardware, cfg.teacher = HardwareProfile(), TrainSettings(bf16=True)
    cfg.elastic, cfg.finalize = ElasticSettings(), FinalizeSettings(bf16=True)
    monkeypatch.setattr(fingerprint, "cpu_has_bf16", lambda: False)
    with caplog.at_level("WARNING"):
        check_machine(cfg)
    assert "teacher.bf16, finalize.bf16 on a CPU without bf16 units" in caplog.text
    caplog.clear()
    monkeypatch.setattr(fingerprint, "cpu_has_bf16", lambda: True)
    with caplog.at_level("WARNING"):
        check_machine(cfg)
    assert "bf16" not in caplog.text
