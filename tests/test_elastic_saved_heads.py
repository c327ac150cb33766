"""A cached elastic student, loaded back by the elastic method, is the student that was trained —
also where one position bias serves every layer (MPNet): each layer's head order is structure, not
weights (the head index is not in a state dict), so it is replayed from the student's record before
its weights load, recorded in the decisions, and replayed when a saved model is rebuilt."""
from __future__ import annotations

import copy

import pytest
import torch

import autosqueeze.elastic.store as store
import autosqueeze.elastic.train as elastic_train
from autosqueeze.arch import get_adapter
from autosqueeze.elastic import ElasticSettings, Subnet, activate, elastic_mode, get_elastic_student
from autosqueeze.methods import MethodContext, MethodError
from autosqueeze.recipe import Recipe, Step, apply_recipe
from tests import tiny
from tests.test_elastic import fake_data
from tests.tiny import batch, logits

LAYERS, HEADS = 3, 4


def _trained(arch: str, monkeypatch):
    """(teacher, the in-memory student as trained, its cache key): the heads importance-ordered in a
    different order in every layer, so a lost order shows."""
    teacher = tiny.tiny_model(arch, layers=LAYERS, heads=HEADS, hidden=32, ffn=64)
    with torch.no_grad():  # a position bias whose columns differ a lot (MPNet), so reading the wrong one shows
        for name, param in teacher.named_parameters():
            if "relative_attention_bias" in name:
                param.copy_(3 * torch.randn(param.shape, generator=torch.Generator().manual_seed(1)))
    head_scores = [torch.tensor(s, dtype=torch.float) for s in ([1, 4, 2, 3], [4, 3, 2, 1], [2, 1, 4, 3])]
    monkeypatch.setattr(elastic_train, "importance_scores",
                        lambda model, ctx, n: (head_scores, [torch.rand(64) for _ in range(LAYERS)]))
    kept: dict[str, torch.nn.Module] = {}

    def train(*args, **kwargs):
        student, info = real_train(*args, **kwargs)
        kept["student"] = copy.deepcopy(student)
        return student, info

    real_train = store.train_elastic
    monkeypatch.setattr(store, "train_elastic", train)
    settings = ElasticSettings(steps=2, min_layers=1, min_heads=1, min_ffn=8, ffn_step=8, importance_batches=1,
                               min_hidden=1.0)
    key = get_elastic_student(teacher, "abc", fake_data(), settings).key
    return teacher, kept["student"].eval(), key


@pytest.mark.parametrize("arch", ["mpnet", "bert"])
def test_the_loaded_student_is_the_trained_one_and_a_replay_rebuilds_it(arch, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOSQUEEZE_CACHE", str(tmp_path))
    teacher, student, key = _trained(arch, monkeypatch)
    adapter = get_adapter(teacher)
    b = batch()
    for params, subnet in (({"layers": 1.0, "heads_keep": 1.0, "ffn_keep": 1.0}, None),
                           ({"layers": 2, "heads_keep": 2, "ffn_keep": 32}, Subnet((0, 2), (2, 2), (32, 32)))):
        recipe = Recipe(steps=[Step("elastic", {"student": key, **params})])
        model, decisions = apply_recipe(recipe, teacher, MethodContext(adapter=adapter))
        if subnet is None:
            want = logits(student, b)
        else:
            with elastic_mode(student, adapter), activate(student, adapter, subnet):
                want = logits(student, b)
        assert torch.allclose(logits(model, b), want, atol=1e-5), (arch, params)
        assert ("head_order" in decisions[0]) == (arch == "mpnet")
        # a saved model is rebuilt by replaying the decisions, then its weights are loaded
        base = tiny.tiny_model(arch, layers=LAYERS, heads=HEADS, hidden=32, ffn=64, seed=5)
        replayed, _ = apply_recipe(recipe, base, MethodContext(adapter=adapter, replay=True), decisions)
        replayed.load_state_dict(model.state_dict())
        assert torch.allclose(logits(replayed, b), want, atol=1e-5), (arch, params)


def test_a_replay_without_the_head_order_is_refused_where_the_bias_is_shared(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOSQUEEZE_CACHE", str(tmp_path))
    teacher, _, key = _trained("mpnet", monkeypatch)
    recipe = Recipe(steps=[Step("elastic", {"student": key, "layers": 2})])
    _, decisions = apply_recipe(recipe, teacher, MethodContext(adapter=get_adapter(teacher)))
    old = [{k: v for k, v in decisions[0].items() if k != "head_order"}]
    with pytest.raises(MethodError, match="no head order"):
        apply_recipe(recipe, tiny.tiny_model("mpnet", layers=LAYERS, heads=HEADS, hidden=32, ffn=64),
                     MethodContext(adapter=get_adapter(teacher), replay=True), old)
