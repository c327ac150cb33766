"""Cross-layer sharing: parameter counts, tying through training, copies, saving, families."""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_model, save_model
from transformers import (
    DistilBertConfig,
    DistilBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from autosqueeze.arch import get_adapter
from autosqueeze.measure import model_size
from autosqueeze.methods import MethodError, get_method
from autosqueeze.methods.share_layers import groups_for, shared_groups
from autosqueeze.recipe import Recipe, Step, apply_recipe
from tests import tiny


def _share(teacher, steps=(), ctx=None, **params):
    recipe = Recipe([Step("share_layers", params), *steps])
    return apply_recipe(recipe, teacher, ctx or tiny.context(teacher))


def _layer_params(layer) -> int:
    return sum(p.numel() for p in layer.parameters())


@pytest.mark.parametrize("params, match", [({"group_size": 0}, "group_size"), ({"init": "last"}, "init")])
def test_config_validation(params, match):
    with pytest.raises(MethodError, match=match):
        get_method("share_layers").make_config(params)


def test_group_larger_than_depth_and_quantized_models_are_refused():
    with pytest.raises(MethodError, match="only 4 layers"):
        _share(tiny.tiny_bert(), group_size=5)
    teacher = tiny.tiny_bert()
    q, _ = apply_recipe(Recipe([Step("quantize_dynamic", {})]), teacher, tiny.context(teacher))
    with pytest.raises(MethodError, match="int8"):
        _share(q, group_size=2)


@pytest.mark.parametrize("depth, group_size", [(4, 2), (4, 3), (6, 2), (6, 4), (5, 5)])
def test_unique_parameter_count_follows_the_formula(depth, group_size):
    teacher = tiny.tiny_bert(layers=depth)
    model, dec = _share(teacher, group_size=group_size)
    groups = groups_for(depth, group_size)
    assert dec[0]["groups"] == groups and len(groups) == -(-depth // group_size)
    per_layer = _layer_params(teacher.bert.encoder.layer[0])
    unique = sum(p.numel() for p in model.parameters())  # parameters() yields a shared one once
    total = sum(p.numel() for p in teacher.parameters())
    assert unique == total - (depth - len(groups)) * per_layer
    assert model_size(model).params == unique
    assert model_size(teacher).total_bytes - model_size(model).total_bytes == 4 * (depth - len(groups)) * per_layer


def test_mean_init_averages_the_group():
    teacher = tiny.tiny_bert()
    model, _ = _share(teacher, group_size=2, init="mean")
    t = teacher.bert.encoder.layer
    expect = (t[2].intermediate.dense.weight + t[3].intermediate.dense.weight) / 2
    got = model.bert.encoder.layer[3].intermediate.dense.weight
    assert torch.allclose(got, expect)
    assert got is model.bert.encoder.layer[2].intermediate.dense.weight
    first, _ = _share(teacher, group_size=2, init="first")
    assert torch.equal(first.bert.encoder.layer[3].intermediate.dense.weight, t[2].intermediate.dense.weight)


def test_layers_stay_distinct_modules_and_run_at_full_depth():
    teacher = tiny.tiny_bert()
    model, _ = _share(teacher, group_size=4)
    layers = model.bert.encoder.layer
    assert len({id(m) for m in layers}) == 4  # distinct modules, same Parameters
    assert [m.attention.self.layer_idx for m in layers] == [0, 1, 2, 3]
    calls = []
    for layer in layers:
        layer.register_forward_hook(lambda *_: calls.append(1))
    tiny.logits(model, tiny.batch())
    assert len(calls) == 4  # compute unchanged


def test_tied_after_a_distill_step():
    teacher = tiny.tiny_bert()
    model, _ = _share(teacher, steps=[Step("distill", {"steps": 3, "lr": 1e-2})], group_size=2)
    layers = model.bert.encoder.layer
    assert shared_groups(model, get_adapter(model)) == [[0, 1], [2, 3]]
    assert layers[0].output.dense.weight is layers[1].output.dense.weight
    assert not torch.equal(layers[0].output.dense.weight, teacher.bert.encoder.layer[0].output.dense.weight)


def test_deepcopy_state_dict_and_safetensors_keep_the_tying(tmp_path):
    teacher = tiny.tiny_bert()
    model, dec = _share(teacher, steps=[Step("distill", {"steps": 2})], group_size=2, init="mean")
    adapter = get_adapter(model)
    assert shared_groups(copy.deepcopy(model), adapter) == [[0, 1], [2, 3]]
    b = tiny.batch()
    fresh = copy.deepcopy(teacher)
    rebuilt, _ = _share(fresh, ctx=tiny.context(fresh, replay=True), group_size=2, init="mean")
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert shared_groups(rebuilt, adapter) == [[0, 1], [2, 3]]
    assert torch.equal(tiny.logits(rebuilt, b), tiny.logits(model, b))
    save_model(model, str(tmp_path / "m.safetensors"))
    again, _ = _share(copy.deepcopy(teacher), ctx=tiny.context(teacher, replay=True), group_size=2, init="mean")
    assert load_model(again, str(tmp_path / "m.safetensors"), strict=True) == (set(), [])
    assert shared_groups(again, adapter) == [[0, 1], [2, 3]]
    assert torch.equal(tiny.logits(again, b), tiny.logits(model, b))


def test_composes_with_drop_layers_and_quantization():
    teacher = tiny.tiny_bert(layers=6)
    recipe = Recipe([Step("drop_layers", {"keep": 4, "strategy": "bottom"}), Step("share_layers", {"group_size": 2}),
                     Step("distill", {"steps": 2}), Step("quantize_dynamic", {})])
    model, dec = apply_recipe(recipe, teacher, tiny.context(teacher))
    assert dec[1]["groups"] == [[0, 1], [2, 3]]
    assert tiny.logits(model, tiny.batch()).shape == (4, 2)


@pytest.mark.parametrize("family", ["distilbert", "roberta"])
def test_other_families_through_the_adapter(family):
    torch.manual_seed(0)
    if family == "distilbert":
        teacher = DistilBertForSequenceClassification(DistilBertConfig(
            vocab_size=tiny.VOCAB, dim=32, n_layers=4, n_heads=4, hidden_dim=64, max_position_embeddings=64)).eval()
    else:
        teacher = RobertaForSequenceClassification(RobertaConfig(
            vocab_size=tiny.VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=70)).eval()
    model, dec = _share(teacher, steps=[Step("distill", {"steps": 2})], group_size=2)
    adapter = get_adapter(model)
    assert shared_groups(model, adapter) == [[0, 1], [2, 3]]
    per_layer = _layer_params(adapter.layers(teacher)[0])
    assert model_size(teacher).params - model_size(model).params == 2 * per_layer
    assert tiny.logits(model, tiny.batch()).shape == (4, 2)
