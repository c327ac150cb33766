"""Distillation: attention maps from SDPA models, head-averaged maps, layer map, teacher cache."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import autosqueeze.methods.distill as distill
from autosqueeze.methods import MethodError
from autosqueeze.methods.context import TeacherOutputCache
from autosqueeze.methods.distill import DistillConfig, TeacherOutputs, attention_loss, distill_loss
from autosqueeze.recipe import Recipe, Step, apply_recipe
from tests import tiny


def _inputs(seed: int = 0):
    return {k: v for k, v in tiny.batch(seed=seed).items() if k != "labels"}


def _count_forwards(model) -> list[int]:
    calls = [0]  # the hook is copied into students (deepcopy): count only this model's calls
    model.register_forward_hook(lambda mod, *_: calls.__setitem__(0, calls[0] + (mod is model)))
    return calls


def test_attention_distillation_from_sdpa_models_restores_the_implementation():
    teacher = tiny.tiny_bert(attn="sdpa")
    recipe = Recipe([Step("distill", {"steps": 2, "alpha_logits": 0.0, "alpha_attention": 1.0})])
    losses = []
    ctx = tiny.context(teacher, progress=lambda what, done, total, stats: losses.append(stats["loss"]))
    model, dec = apply_recipe(recipe, teacher, ctx)
    assert dec[0]["steps_done"] == 2 and len(losses) == 2
    assert teacher.config._attn_implementation == model.config._attn_implementation == "sdpa"
    assert teacher.bert.encoder.layer[0].attention.self.config._attn_implementation == "sdpa"


def test_implementation_restored_when_training_fails():
    teacher = tiny.tiny_bert(attn="sdpa")
    ctx = tiny.context(teacher)
    ctx.train_batches = None  # training will fail for want of data
    with pytest.raises(RuntimeError, match="training data"):
        apply_recipe(Recipe([Step("distill", {"steps": 2, "alpha_attention": 1.0})]), teacher, ctx)
    assert teacher.config._attn_implementation == "sdpa"


def _drop_heads(model, layer_idx: int, keep: list[int]) -> None:
    """Slice heads out of one layer (as head pruning does) to get a student with fewer heads."""
    from torch import nn

    from tests.tiny import get_adapter

    adapter = get_adapter(model)
    layer = adapter.layers(model)[layer_idx]
    parts = adapter.attention(layer)
    rows = torch.cat([torch.arange(h * parts.head_size, (h + 1) * parts.head_size) for h in keep])
    for name in ("q", "k", "v"):
        old = getattr(parts, {"q": "query", "k": "key", "v": "value"}[name])
        new = nn.Linear(old.in_features, len(rows))
        new.weight.data, new.bias.data = old.weight.data[rows].clone(), old.bias.data[rows].clone()
        adapter.set_module(layer, getattr(adapter, name), new)
    out = parts.output
    new = nn.Linear(len(rows), out.out_features)
    new.weight.data, new.bias.data = out.weight.data[:, rows].clone(), out.bias.data.clone()
    adapter.set_module(layer, adapter.attn_out, new)
    adapter.set_num_heads(layer, len(keep))


def test_attention_maps_are_head_averaged_when_head_counts_differ():
    s, t = torch.rand(2, 2, 5, 5), torch.rand(2, 4, 5, 5)
    assert torch.allclose(attention_loss(s, t), F.mse_loss(s.mean(1), t.mean(1)))
    assert torch.allclose(attention_loss(t, t + 1), torch.tensor(1.0))  # same counts: head by head
    teacher = tiny.tiny_bert(attn="sdpa")
    recipe = Recipe([Step("distill", {"steps": 2, "alpha_attention": 1.0, "alpha_hidden": 1.0})])
    student = tiny.tiny_bert(attn="sdpa")
    _drop_heads(student, 1, [0, 3])
    model, dec = apply_recipe(recipe, student, tiny.context(teacher))
    assert dec[0]["steps_done"] == 2
    assert model.bert.encoder.layer[1].attention.self.num_attention_heads == 2


def test_hidden_distillation_refuses_a_different_width():
    teacher, student = tiny.tiny_bert(hidden=32), tiny.tiny_bert(hidden=48)
    loss_fn = distill_loss(DistillConfig(alpha_hidden=1.0), teacher, [0, 1, 2, 3])
    with pytest.raises(MethodError, match="equal hidden sizes"):
        loss_fn(student, tiny.batch())


def test_student_layers_map_to_the_teacher_layers_they_came_from():
    teacher = tiny.tiny_bert(layers=6)
    ctx = tiny.context(teacher)
    student, _ = apply_recipe(Recipe([Step("drop_layers", {"strategy": "explicit", "layers": [1, 4]})]), teacher, ctx)
    assert distill._layer_map(student, teacher, ctx) == [1, 4]
    # composition: keep 3 of 6 (0, 2, 4), then the last 2 of those → teacher layers 2, 4
    recipe = Recipe([Step("drop_layers", {"keep": 3}), Step("drop_layers", {"strategy": "explicit", "layers": [1, 2]})])
    student, _ = apply_recipe(recipe, teacher, ctx)
    assert distill._layer_map(student, teacher, ctx) == [2, 4]
    ctx.kept_layers = None  # without drop_layers: spread uniformly over the teacher
    assert distill._layer_map(student, teacher, ctx) == [2, 5]


def test_layer_map_pairs_identical_layers_inside_a_recipe():
    """A student of the teacher's bottom layers reproduces their hidden states and maps exactly:
    with the kept-layer map the hidden and attention losses start at 0 (the uniform map would not)."""
    teacher = tiny.tiny_bert(layers=6)
    losses = []
    ctx = tiny.context(teacher, progress=lambda what, done, total, stats: losses.append(stats["loss"]))
    params = {"steps": 1, "alpha_logits": 0.0, "alpha_hidden": 1.0, "alpha_attention": 1.0}
    recipe = Recipe([Step("drop_layers", {"keep": 3, "strategy": "bottom"}), Step("distill", params)])
    apply_recipe(recipe, teacher, ctx)
    assert losses == [0.0]
    student, _ = apply_recipe(Recipe([Step("drop_layers", {"keep": 3, "strategy": "bottom"})]), teacher, ctx)
    uniform = distill_loss(DistillConfig(**params), teacher, [1, 3, 5])
    assert uniform(student, tiny.batch()).item() > 0


def test_teacher_outputs_are_cached_across_training_steps_of_a_recipe():
    teacher = tiny.tiny_bert()
    calls = _count_forwards(teacher)
    ctx = tiny.context(teacher)
    recipe = Recipe([Step("drop_layers", {"keep": 2}), Step("distill", {"steps": 3}), Step("distill", {"steps": 3})])
    apply_recipe(recipe, teacher, ctx)
    assert calls[0] == 3  # the second step reused the first step's teacher logits
    assert len(ctx.teacher_outputs.entries) == 3
    # hidden states needed but not cached by the first step: computed once more, then kept
    apply_recipe(Recipe([Step("distill", {"steps": 3, "alpha_hidden": 1.0})] * 2), teacher, ctx)
    assert calls[0] == 6


def test_hidden_states_are_not_cached_over_the_budget(monkeypatch):
    monkeypatch.setattr(distill, "CACHE_BUDGET_BYTES", 1000)
    teacher = tiny.tiny_bert()
    calls = _count_forwards(teacher)
    ctx = tiny.context(teacher)
    apply_recipe(Recipe([Step("distill", {"steps": 2, "alpha_hidden": 1.0})] * 2), teacher, ctx)
    assert calls[0] == 4
    assert all(e["hidden"] is None for e in ctx.teacher_outputs.entries.values())


def test_cached_outputs_are_checked_against_the_batch():
    teacher = tiny.tiny_bert()
    calls = _count_forwards(teacher)
    outputs = TeacherOutputs(teacher, TeacherOutputCache(), seed=0, hidden=False, attn=False)
    a = outputs(0, _inputs(0))
    assert torch.equal(outputs(0, _inputs(0))["logits"], a["logits"]) and calls[0] == 1
    b = outputs(0, _inputs(1))  # same key, different batch: recomputed, never a stale answer
    assert calls[0] == 2 and not torch.equal(a["logits"], b["logits"])
    assert torch.equal(b["logits"], teacher(**_inputs(1)).logits)
