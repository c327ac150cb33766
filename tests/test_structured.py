"""prune_structured: validation, importance really used, per-layer counts, replay, DistilBERT, composition."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import DistilBertConfig, DistilBertForSequenceClassification

from autosqueeze.methods import MethodError, get_method
from autosqueeze.methods.prune_structured import StructuredPruneConfig
from autosqueeze.recipe import Recipe, RecipeError, Step, apply_recipe
from tests import tiny
from tests.cases.case_prune_structured import layer_params


def tiny_distilbert(seed: int = 0) -> DistilBertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = DistilBertConfig(vocab_size=tiny.VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64,  # type: ignore[call-arg]
                           max_position_embeddings=64, dropout=0.0, attention_dropout=0.0, num_labels=2)
    return DistilBertForSequenceClassification(cfg).eval()


def run(teacher, params, **ctx_kw):
    recipe = Recipe(steps=[Step("prune_structured", params)])
    return apply_recipe(recipe, teacher, tiny.context(teacher, **ctx_kw))


@pytest.mark.parametrize("params,match", [
    ({}, "heads_keep and/or ffn_keep"),
    ({"heads_keep": 0}, "at least 1"),
    ({"heads_keep": 1.5}, r"fraction and must be in \(0, 1\]"),
    ({"heads_keep": "half"}, "int count"),
    ({"heads_keep": True}, "int count"),
    ({"ffn_keep": []}, "empty"),
    ({"ffn_keep": [[1, 2]]}, "not lists"),
    ({"heads_keep": 2, "importance": "random"}, "importance must be"),
    ({"heads_keep": 2, "loss": "kl"}, "loss must be"),
    ({"heads_keep": 2, "batches": 0}, "batches"),
])
def test_config_validation(params, match):
    with pytest.raises(MethodError, match=match):
        get_method("prune_structured").make_config(params)


def test_lists_become_tuples():
    assert StructuredPruneConfig(heads_keep=[1, 2]) == StructuredPruneConfig(heads_keep=(1, 2))


def test_model_validation():
    t = tiny.tiny_bert()
    with pytest.raises(MethodError, match="only 4"):
        run(t, {"heads_keep": 5})
    with pytest.raises(MethodError, match="3 values but the model has 4 layers"):
        run(t, {"ffn_keep": [1, 2, 3]})
    with pytest.raises(MethodError, match="needs a teacher"):
        apply_recipe(Recipe(steps=[Step("prune_structured", {"heads_keep": 2, "loss": "teacher"})]), t,
                     _no_teacher_ctx(t))


def _no_teacher_ctx(t):
    ctx = tiny.context(t)
    ctx.teacher = None
    return ctx


def test_keep_all_is_lossless_and_exact():
    t = tiny.tiny_bert()
    model, dec = run(t, {"heads_keep": 4, "ffn_keep": 64})
    b = tiny.batch()
    assert torch.equal(tiny.logits(model, b), tiny.logits(t, b))
    assert dec[0]["kept_heads"] == [[0, 1, 2, 3]] * 4


@pytest.mark.parametrize("importance", ["gradient", "magnitude"])
def test_importance_picks_the_dead_head_and_neuron(importance):
    """A head whose output-projection columns are zero (and a neuron whose down column is zero)
    contributes nothing: its importance is 0 and it is the one removed."""
    t = tiny.tiny_bert()
    d = t.config.hidden_size // t.config.num_attention_heads
    dead = {0: 2, 1: 0, 2: 3, 3: 1}
    with torch.no_grad():
        for i, layer in enumerate(t.bert.encoder.layer):
            layer.attention.output.dense.weight[:, dead[i] * d:(dead[i] + 1) * d] = 0
            layer.output.dense.weight[:, 5 + i] = 0
    model, dec = run(t, {"heads_keep": 3, "ffn_keep": 63, "importance": importance, "batches": 2})
    for i in range(4):
        assert dec[0]["kept_heads"][i] == [h for h in range(4) if h != dead[i]]
        assert 5 + i not in dec[0]["kept_neurons"][i] and len(dec[0]["kept_neurons"][i]) == 63
        assert dec[0]["head_importance"][i][dead[i]] == 0.0
        assert min(s for h, s in enumerate(dec[0]["head_importance"][i]) if h != dead[i]) > 0
    b = tiny.batch()  # removing units that contribute nothing is lossless
    assert torch.allclose(tiny.logits(model, b), tiny.logits(t, b), atol=1e-5)


def test_labels_loss_and_probe_use_the_data():
    t = tiny.tiny_bert()
    seen = []

    def counting(n, seed):
        seen.append(n)
        return tiny.batches(n, seed)

    ctx = tiny.context(t)
    ctx.train_batches = counting
    apply_recipe(Recipe(steps=[Step("prune_structured", {"heads_keep": 2, "batches": 3, "loss": "labels"})]), t, ctx)
    ctx.probe = True
    apply_recipe(Recipe(steps=[Step("prune_structured", {"heads_keep": 2, "batches": 3})]), t, ctx)
    ctx.probe = False
    apply_recipe(Recipe(steps=[Step("prune_structured", {"heads_keep": 2, "importance": "magnitude"})]), t, ctx)
    assert seen == [3, 1]  # magnitude is data free


def test_per_layer_counts_config_and_replay():
    t = tiny.tiny_bert()
    params = {"heads_keep": [1, 3, 2, 4], "ffn_keep": [0.25, 1.0, 0.5, 10]}
    model, dec = run(t, params)
    heads, ffn = [1, 3, 2, 4], [16, 64, 32, 10]
    assert [layer.attention.self.num_attention_heads for layer in model.bert.encoder.layer] == heads
    assert [layer.intermediate.dense.out_features for layer in model.bert.encoder.layer] == ffn
    assert sum(p.numel() for p in model.bert.encoder.layer.parameters()) == sum(
        layer_params(32, 8, h, f) for h, f in zip(heads, ffn))
    assert model.config.num_attention_heads == 4 and model.config.intermediate_size == 64  # not uniform
    # replay on a fresh teacher copy: same structure without data, same logits after loading weights
    fresh = copy.deepcopy(t)
    ctx = tiny.context(fresh, replay=True)
    ctx.train_batches = None  # replay must not touch data
    rebuilt, _ = apply_recipe(Recipe(steps=[Step("prune_structured", params)]), fresh, ctx, dec)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    b = tiny.batch()
    assert torch.equal(tiny.logits(rebuilt, b), tiny.logits(model, b))


def test_replay_needs_decisions():
    t = tiny.tiny_bert()
    with pytest.raises(MethodError, match="replay"):
        apply_recipe(Recipe(steps=[Step("prune_structured", {"heads_keep": 2})]), t,
                     tiny.context(t, replay=True), [{}])


def test_uniform_counts_update_config():
    model, _ = run(tiny.tiny_bert(), {"heads_keep": 0.5, "ffn_keep": 0.25})
    assert model.config.num_attention_heads == 2 and model.config.intermediate_size == 16
    assert model.bert.encoder.layer[0].attention.self.all_head_size == 16


def test_distilbert():
    t = tiny_distilbert()
    model, dec = run(t, {"heads_keep": 2, "ffn_keep": 0.5})
    layer = model.distilbert.transformer.layer[0]
    assert layer.attention.n_heads == 2 and layer.attention.q_lin.weight.shape == (16, 32)
    assert layer.attention.out_lin.weight.shape == (32, 16)
    assert layer.ffn.lin1.weight.shape == (32, 32) and layer.ffn.lin2.weight.shape == (32, 32)
    assert model.config.n_heads == 2 and model.config.hidden_dim == 32
    b = tiny.batch()
    assert torch.isfinite(tiny.logits(model, b)).all()
    same, _ = run(t, {"heads_keep": 1.0, "ffn_keep": 1.0})
    assert torch.equal(tiny.logits(same, b), tiny.logits(t, b))


def test_refuses_decomposed_and_quantized_layers():
    t = tiny.tiny_bert()
    spec = get_method("prune_structured")
    config = spec.make_config({"heads_keep": 2})
    decomposed, _ = apply_recipe(Recipe(steps=[Step("decompose_svd", {"rank": 4})]), t, tiny.context(t))
    with pytest.raises(MethodError, match="decompos"):
        spec.apply(decomposed, config, tiny.context(t))
    quantized, _ = apply_recipe(Recipe(steps=[Step("quantize_dynamic", {})]), t, tiny.context(t))
    with pytest.raises(MethodError, match="quantized"):
        spec.apply(quantized, config, tiny.context(t))
    with pytest.raises(RecipeError, match="stage"):  # recipes put width before decomposition
        Recipe(steps=[Step("decompose_svd", {"rank": 4}), Step("prune_structured", {"heads_keep": 2})]).validate()


def test_composition_with_depth_distill_and_int8():
    t = tiny.tiny_bert()
    recipe = Recipe(steps=[
        Step("drop_layers", {"keep": 2}),
        Step("prune_structured", {"heads_keep": 2, "ffn_keep": 0.5, "batches": 2}),
        Step("distill", {"steps": 2}),
        Step("quantize_dynamic", {}),
    ])
    model, dec = apply_recipe(recipe, t, tiny.context(t))
    layers = model.bert.encoder.layer
    assert len(layers) == 2 and len(dec[1]["kept_heads"]) == 2
    assert all(layer.attention.self.num_attention_heads == 2 for layer in layers)
    q = [m for m in model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(q) == 12
    assert q[0].weight().shape == (16, 32)
    b = tiny.batch()
    assert torch.isfinite(tiny.logits(model, b)).all()
