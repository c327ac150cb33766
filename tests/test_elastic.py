"""The elastic student: reordering keeps outputs, shared-weight sub-networks equal sliced ones,
sandwich training trains the small sub-networks, the cache never retrains, and the elastic
method slices, records and replays."""
from __future__ import annotations

import copy
import random
from types import SimpleNamespace

import pytest
import torch

from autosqueeze.arch import get_adapter
from autosqueeze.elastic import (
    ElasticSettings,
    Subnet,
    activate,
    elastic_mode,
    get_elastic_student,
    slice_subnet,
    train_elastic,
)
from autosqueeze.elastic.reorder import reorder
from autosqueeze.elastic.subnet import full_subnet, per_layer, resolve_count
from autosqueeze.elastic.train import subnet_loss, subnet_space
from autosqueeze.methods import MethodContext, MethodError
from autosqueeze.recipe import Recipe, Step, apply_recipe
from tests.tiny import batch, batches, logits, tiny_bert


def fake_data(num_labels: int = 2):
    task = SimpleNamespace(name="sst2", num_labels=num_labels, is_regression=False)
    return SimpleNamespace(task=task, train=list(range(40)), batch_size=4, max_seq_len=12,
                           train_batches=lambda n, seed: batches(n, seed))


def test_reordering_does_not_change_the_outputs():
    model = tiny_bert(layers=3, heads=4, hidden=32, ffn=64)
    ref = logits(model, batch())
    g = torch.Generator().manual_seed(1)
    adapter = get_adapter(model)
    orders = reorder(model, adapter, [torch.rand(4, generator=g) for _ in range(3)],
                     [torch.rand(64, generator=g) for _ in range(3)])
    assert any(o != sorted(o) for o in orders["heads"]) and any(o != sorted(o) for o in orders["neurons"])
    assert torch.allclose(logits(model, batch()), ref, atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_shared_weight_subnet_equals_the_sliced_model(seed):
    model = tiny_bert(layers=4, heads=4, hidden=32, ffn=64, seed=seed)
    adapter = get_adapter(model)
    space = subnet_space(model, ElasticSettings(min_layers=1, min_heads=1, min_ffn=4, ffn_step=4))
    subnet = space.sample(random.Random(seed))
    b = batch(seed=seed)
    with elastic_mode(model, adapter), activate(model, adapter, subnet):
        shared = logits(model, b)
    full_after = logits(model, b)
    sliced = slice_subnet(copy.deepcopy(model), adapter, subnet)
    assert torch.allclose(logits(sliced, b), shared, atol=1e-5)
    assert len(adapter.layers(sliced)) == len(subnet.layers)
    assert [adapter.num_heads(layer) for layer in adapter.layers(sliced)] == list(subnet.heads)
    assert sum(p.numel() for p in sliced.parameters()) < sum(p.numel() for p in model.parameters()) or \
        subnet == full_subnet(model, adapter)
    # leaving the context restores the full model
    assert torch.allclose(full_after, logits(tiny_bert(layers=4, heads=4, hidden=32, ffn=64, seed=seed), b), atol=1e-6)


def test_counts_and_fractions_resolve_and_bad_values_are_refused():
    assert resolve_count("x", 0.5, 12) == 6 and resolve_count("x", 3, 12) == 3
    assert per_layer("x", [1, 0.5], [4, 4]) == (1, 2)
    for bad in (0, 13, "three", True):
        with pytest.raises(ValueError):
            resolve_count("x", bad, 12)
    with pytest.raises(ValueError):
        per_layer("x", [1, 2, 3], [4, 4])
    with pytest.raises(ValueError):
        Subnet((0, 1), (2,), (8, 8))


def _loss(model, teacher, subnet, settings, b):
    adapter = get_adapter(model)
    inputs = {k: v for k, v in b.items() if k != "labels"}
    with torch.no_grad(), elastic_mode(model, adapter), activate(model, adapter, subnet):
        t = teacher(**inputs, output_hidden_states=True)
        return float(subnet_loss(model, subnet, inputs, t.logits, tuple(t.hidden_states), settings))


def test_sandwich_training_brings_the_smallest_subnet_towards_the_teacher():
    teacher = tiny_bert(layers=4, heads=4, hidden=32, ffn=64)
    with torch.no_grad():  # a confident teacher: a random tiny BERT's outputs are almost uniform
        teacher.classifier.weight.mul_(40.0)
    settings = ElasticSettings(steps=40, lr=1e-4, min_layers=2, min_heads=1, min_ffn=8, ffn_step=8,
                               importance_batches=0, random_subnets=1)
    before = copy.deepcopy(teacher)
    reorder(before, get_adapter(before), *[[torch.arange(n, 0, -1).float() for _ in range(4)] for n in (4, 64)])
    student, info = train_elastic(teacher, fake_data(), settings)
    smallest = subnet_space(student, settings).smallest()
    assert info["steps"] == 40 and set(info["loss"]) == {"largest", "smallest"}
    held_out = [batch(seed=90 + i) for i in range(3)]
    after_loss = sum(_loss(student, teacher, smallest, settings, b) for b in held_out)
    before_loss = sum(_loss(before, teacher, smallest, settings, b) for b in held_out)
    assert after_loss < 0.8 * before_loss
    untouched = tiny_bert(layers=4, heads=4, hidden=32, ffn=64).bert.encoder.layer[0].intermediate.dense.weight
    assert torch.equal(teacher.bert.encoder.layer[0].intermediate.dense.weight, untouched)  # the teacher is not trained


def test_elastic_student_is_cached_and_the_method_slices_records_and_replays(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOSQUEEZE_CACHE", str(tmp_path))
    teacher = tiny_bert(layers=4, heads=4, hidden=32, ffn=64)
    settings = ElasticSettings(steps=3, min_layers=1, min_heads=1, min_ffn=8, ffn_step=8, importance_batches=1)
    first = get_elastic_student(teacher, "abc", fake_data(), settings)
    mtime = (first.path / "model.safetensors").stat().st_mtime_ns
    again = get_elastic_student(teacher, "abc", fake_data(), settings)
    assert again.key == first.key and (again.path / "model.safetensors").stat().st_mtime_ns == mtime
    assert get_elastic_student(teacher, "other-teacher", fake_data(), settings).key != first.key

    recipe = Recipe(steps=[Step("elastic", {"student": first.key, "layers": 0.5, "heads_keep": 2,
                                            "ffn_keep": [16, 0.5]})])
    ctx = MethodContext(adapter=get_adapter(teacher))
    model, decisions = apply_recipe(recipe, teacher, ctx)
    adapter = get_adapter(model)
    assert decisions[0]["kept_layers"] == [0, 2] and decisions[0]["neurons"] == [16, 32]
    assert [adapter.num_heads(layer) for layer in adapter.layers(model)] == [2, 2]
    b = batch()
    # the same sub-network of the cached student, run with shared weights
    from autosqueeze.elastic import student_state

    full = copy.deepcopy(teacher)
    full.load_state_dict(student_state(first.key))
    with elastic_mode(full, adapter), activate(full, adapter, Subnet((0, 2), (2, 2), (16, 32))):
        assert torch.allclose(logits(model, b), logits(full, b), atol=1e-5)
    # replay rebuilds the structure without the student (loading a saved model)
    base = tiny_bert(layers=4, heads=4, hidden=32, ffn=64, seed=5)
    replayed, _ = apply_recipe(recipe, base, MethodContext(adapter=adapter, replay=True), decisions)
    replayed.load_state_dict(model.state_dict())
    assert torch.allclose(logits(replayed, b), logits(model, b), atol=1e-6)


def test_elastic_method_refuses_a_missing_student_and_bad_params(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOSQUEEZE_CACHE", str(tmp_path))
    teacher = tiny_bert()
    ctx = MethodContext(adapter=get_adapter(teacher))
    with pytest.raises(MethodError, match="not in this machine's cache"):
        apply_recipe(Recipe(steps=[Step("elastic", {"student": "sst2-0123456789ab", "layers": 2})]), teacher, ctx)
    with pytest.raises(MethodError, match="empty"):
        apply_recipe(Recipe(steps=[Step("elastic", {"layers": 2})]), teacher, MethodContext(adapter=ctx.adapter))
    for params in ({"layers": "three"}, {"heads_keep": 0}, {"ffn_keep": 1.5}, {"layers": [1, 2]}):
        with pytest.raises(MethodError):
            Step("elastic", params).config()
