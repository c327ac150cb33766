"""Quantization family: cast_precision (bf16/fp16 by part), quantize_weights (weight-only int8/int4),
quantize_dynamic (int8) composed on different parts, and qat (fake-quant distillation)."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from transformers import (
    DistilBertConfig,
    DistilBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from autosqueeze.measure import model_size
from autosqueeze.methods import MethodError, get_method
from autosqueeze.methods.cast_precision import CastEmbedding, CastLinear
from autosqueeze.methods.qat import fake_quantize_activation, fake_quantize_tensor_int8
from autosqueeze.methods.quantize_weights import WeightOnlyEmbedding, WeightOnlyLinear, fake_quantize
from autosqueeze.recipe import Recipe, Step, apply_recipe
from tests import tiny

DynLinear = torch.ao.nn.quantized.dynamic.Linear


def run(teacher, *steps, **ctx_kw):
    return apply_recipe(Recipe(steps=[Step(m, p) for m, p in steps]), teacher, tiny.context(teacher, **ctx_kw))


def hidden(model, b):
    base = getattr(model, "bert", None) or getattr(model, "roberta", None) or model.distilbert
    with torch.inference_mode():
        return base(**{k: v for k, v in b.items() if k != "labels"}).last_hidden_state


def rel_err(model, teacher, b=None):
    b = b or tiny.batch()
    h, ref = hidden(model, b), hidden(teacher, b)
    return float((h - ref).norm() / ref.norm())


def tiny_distilbert() -> DistilBertForSequenceClassification:
    torch.manual_seed(0)
    cfg = DistilBertConfig(vocab_size=tiny.VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                           max_position_embeddings=64, dropout=0.0, attention_dropout=0.0)
    return DistilBertForSequenceClassification(cfg).eval()


def tiny_roberta() -> RobertaForSequenceClassification:
    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=tiny.VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=80, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return RobertaForSequenceClassification(cfg).eval()


@pytest.mark.parametrize("name,params,match", [
    ("cast_precision", {"dtype": "int3"}, "dtype"),
    ("cast_precision", {"parts": ["heads"]}, "parts"),
    ("cast_precision", {"parts": []}, "parts"),
    ("quantize_weights", {"bits": 3}, "bits"),
    ("quantize_weights", {"bits": True}, "bits"),
    ("quantize_weights", {"group_size": 7}, "group_size"),
    ("quantize_weights", {"compute": "fp16"}, "compute"),
    ("quantize_weights", {"parts": ["attention", "attention"]}, "parts"),
    ("quantize_dynamic", {"parts": ["embeddings"]}, "parts"),
    ("qat", {"target": "int8"}, "target"),
    ("qat", {"target": "quantize_dynamic", "bits": 4}, "bits"),
    ("qat", {"target": "quantize_weights", "activations": True}, "activations"),
    ("qat", {"steps": -1}, "steps"),
    ("qat", {"parts": ["embeddings"]}, "parts"),
])
def test_validation_errors(name, params, match):
    with pytest.raises(MethodError, match=match):
        get_method(name).make_config(params)


def test_yaml_lists_become_tuples():
    cfg = get_method("cast_precision").make_config({"parts": ["ffn", "attention"]})
    assert cfg.parts == ("ffn", "attention")
    assert cfg == get_method("cast_precision").make_config({"parts": ("ffn", "attention")})


def test_bf16_int8_int4_fp16_outputs_close_to_fp32():
    t = tiny.tiny_bert()
    everything = {"parts": ["embeddings", "attention", "ffn", "classifier"]}
    assert rel_err(run(t, ("cast_precision", everything))[0], t) < 0.01
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert rel_err(run(t, ("cast_precision", {"dtype": "fp16"}))[0], t) < 0.005
    assert rel_err(run(t, ("quantize_weights", {"bits": 8, "group_size": 16}))[0], t) < 0.005
    assert rel_err(run(t, ("quantize_weights", {"bits": 8, "compute": "bf16"}))[0], t) < 0.01
    assert rel_err(run(t, ("quantize_weights", {"bits": 4, "group_size": 16}))[0], t) < 0.02


def test_cast_keeps_fp32_between_layers_and_ffn_up_stays_low():
    t = tiny.tiny_bert(attn="sdpa")
    model, _ = run(t, ("cast_precision", {}))
    layer = model.bert.encoder.layer[0]
    assert layer.intermediate.dense.keep_output and not layer.output.dense.keep_output
    assert not layer.attention.self.query.keep_output
    seen: dict[str, torch.dtype] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (CastLinear, CastEmbedding, nn.LayerNorm)):
            mod.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.dtype))
    tiny.logits(model, tiny.batch())
    assert seen["bert.encoder.layer.0.intermediate.dense"] == torch.bfloat16
    assert seen["bert.encoder.layer.0.output.dense"] == torch.float32
    assert seen["bert.embeddings.word_embeddings"] == torch.float32
    assert all(d == torch.float32 for n, d in seen.items() if n.endswith("LayerNorm"))


def test_weight_only_storage_and_grids():
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    for bits in (8, 4):
        wo = WeightOnlyLinear(lin, bits, 16, torch.float32)
        assert wo.qweight.dtype == (torch.int8 if bits == 8 else torch.uint8)
        assert wo.qweight.numel() == 48 * 64 * bits // 8
        assert torch.equal(wo.dequantized_weight(), fake_quantize(lin.weight.detach(), bits, 16))
        x = torch.randn(3, 64)
        assert torch.allclose(wo(x), nn.functional.linear(x, wo.dequantized_weight(), lin.bias), atol=1e-6)
        lo = -(2 ** (bits - 1))
        q = wo.qweight if bits == 8 else (torch.stack((wo.qweight & 15, wo.qweight >> 4),
                                                      -1).flatten(-2).to(torch.int8) - 8)
        assert int(q.min()) >= lo and int(q.max()) <= -lo - 1
    emb = nn.Embedding(10, 32)
    woe = WeightOnlyEmbedding(emb, 4, 8)
    ids = torch.tensor([[1, 2, 9], [0, 0, 3]])
    assert torch.equal(woe(ids), fake_quantize(emb.weight.detach(), 4, 8)[ids])
    # qat's int8 grid is exactly what torch's dynamic quantization stores
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(nn.Sequential(lin), {nn.Linear}, dtype=torch.qint8)
    assert torch.equal(q[0].weight().dequantize(), fake_quantize_tensor_int8(lin.weight.detach()))
    # ... and with fake-quantized activations the float forward is the int8 kernel's forward
    x = torch.randn(10, 64) * 3
    with torch.no_grad():
        fq = nn.functional.linear(fake_quantize_activation(x), fake_quantize_tensor_int8(lin.weight), lin.bias)
    assert torch.allclose(q(x), fq, atol=1e-4)


def test_mixed_precision_two_quantize_steps_on_different_parts():
    t = tiny.tiny_bert()
    model, _ = run(t, ("cast_precision", {"parts": ["embeddings"]}), ("quantize_dynamic", {}))
    assert isinstance(model.bert.embeddings.word_embeddings, CastEmbedding)
    assert isinstance(model.bert.encoder.layer[0].attention.self.query, DynLinear)
    assert isinstance(model.bert.encoder.layer[1].intermediate.dense, DynLinear)
    assert rel_err(model, t) < 0.02
    s_t, s_m = model_size(t), model_size(model)
    assert s_m.embedding_bytes < 0.6 * s_t.embedding_bytes and s_m.non_embedding_bytes < 0.5 * s_t.non_embedding_bytes
    # three steps, three precisions: int8 FFN, int4 attention, bf16 classifier
    model, _ = run(t, ("quantize_dynamic", {"parts": ["ffn"]}), ("quantize_weights", {"bits": 4,
                                                                                      "parts": ["attention"]}),
                   ("cast_precision", {"parts": ["classifier"]}))
    layer = model.bert.encoder.layer[0]
    assert isinstance(layer.output.dense, DynLinear) and isinstance(layer.attention.output.dense, WeightOnlyLinear)
    assert isinstance(model.classifier, CastLinear)
    assert torch.isfinite(tiny.logits(model, tiny.batch())).all()


@pytest.mark.parametrize("first,second", [
    (("cast_precision", {"parts": ["attention"]}), ("quantize_dynamic", {"parts": ["attention", "ffn"]})),
    (("quantize_dynamic", {"parts": ["ffn"]}), ("quantize_weights", {"parts": ["ffn"]})),
    (("quantize_weights", {"parts": ["embeddings"]}), ("cast_precision", {"parts": ["embeddings"]})),
])
def test_overlapping_quantization_is_refused(first, second):
    with pytest.raises(MethodError, match="already quantized or cast"):
        run(tiny.tiny_bert(), first, second)


def test_replay_is_deterministic_on_loaded_float_weights():
    """Save = float weights before the quantization steps; load = replay + load + re-quantize."""
    t = tiny.tiny_bert()
    steps = [("drop_layers", {"keep": 3}), ("qat", {"steps": 3}), ("cast_precision", {"parts": ["embeddings"]}),
             ("quantize_weights", {"bits": 4, "group_size": 16, "parts": ["attention"]}), ("quantize_dynamic",
                                                                                           {"parts": ["ffn"]})]
    recipe = Recipe(steps=[Step(m, p) for m, p in steps])
    ctx = tiny.context(t)
    float_model, dec = apply_recipe(recipe, t, ctx, upto=2)
    model, dec_q = apply_recipe(Recipe(steps=recipe.steps[2:]), float_model, ctx)
    fresh = tiny.tiny_bert(seed=1)  # other random weights: everything must come from the state dict
    rctx = tiny.context(fresh, replay=True)
    rebuilt, _ = apply_recipe(recipe, fresh, rctx, dec, upto=2)
    rebuilt.load_state_dict(float_model.state_dict(), strict=True)
    rebuilt, _ = apply_recipe(Recipe(steps=recipe.steps[2:]), rebuilt, rctx, dec_q)
    b = tiny.batch()
    assert torch.equal(tiny.logits(rebuilt, b), tiny.logits(model, b))
    assert [type(m) for m in rebuilt.modules()] == [type(m) for m in model.modules()]


def test_qat_then_quantize_reproduces_the_trained_grid():
    t = tiny.tiny_bert()
    model, dec = run(t, ("qat", {"steps": 4, "lr": 1e-3, "target": "quantize_weights", "bits": 4, "group_size": 16}),
                     ("quantize_weights", {"bits": 4, "group_size": 16}))
    assert dec[0]["steps_done"] == 4
    lin = model.bert.encoder.layer[0].intermediate.dense
    assert isinstance(lin, WeightOnlyLinear)
    # qat keeps float weights whose rounding is the quantized model's weights
    float_model, _ = run(t, ("qat", {"steps": 4, "lr": 1e-3, "target": "quantize_weights", "bits": 4,
                                     "group_size": 16}))
    w = float_model.bert.encoder.layer[0].intermediate.dense.weight.detach()
    assert not torch.equal(w, t.bert.encoder.layer[0].intermediate.dense.weight)
    assert torch.equal(lin.dequantized_weight(), fake_quantize(w, 4, 16))


def test_qat_trains_through_fake_quant_with_straight_through_gradients():
    t = tiny.tiny_bert()
    model = copy.deepcopy(t)
    ctx = tiny.context(t)
    from autosqueeze.methods import qat

    seen = []
    ctx.post_step_hooks.append(lambda m: seen.append(
        torch.nn.utils.parametrize.is_parametrized(m.bert.encoder.layer[0].attention.self.query, "weight")))
    qat.apply(model, get_method("qat").make_config({"steps": 2, "activations": True}), ctx)
    assert seen == [True, True]  # trained with the fake-quant in place, removed afterwards
    assert type(model.bert.encoder.layer[0].attention.self.query) is nn.Linear


def test_qat_refuses_a_quantized_model():
    t = tiny.tiny_bert()
    quantized, _ = run(t, ("quantize_dynamic", {"parts": ["ffn"]}))
    from autosqueeze.methods import qat

    with pytest.raises(MethodError, match="already has quantized"):
        qat.apply(quantized, get_method("qat").make_config({"steps": 1}), tiny.context(t))


def test_training_steps_are_skipped_when_probing():
    t = tiny.tiny_bert()
    model, dec = run(t, ("qat", {"steps": 5}), ("quantize_dynamic", {}), probe=True)
    assert dec[0] == {} and isinstance(model.bert.encoder.layer[0].output.dense, DynLinear)


def test_adapter_is_used_for_distilbert_and_roberta():
    d = tiny_distilbert()
    model, _ = run(d, ("cast_precision", {"parts": ["embeddings", "attention"]}),
                   ("quantize_weights", {"bits": 4, "group_size": 16, "parts": ["ffn", "classifier"]}))
    layer = model.distilbert.transformer.layer[0]
    assert isinstance(layer.attention.q_lin, CastLinear) and isinstance(layer.ffn.lin1, WeightOnlyLinear)
    assert isinstance(model.pre_classifier, WeightOnlyLinear) and isinstance(model.classifier, WeightOnlyLinear)
    assert isinstance(model.distilbert.embeddings.word_embeddings, CastEmbedding)
    assert rel_err(model, d) < 0.05
    r = tiny_roberta()
    model, _ = run(r, ("qat", {"steps": 2}), ("quantize_dynamic", {}), ("cast_precision", {"parts": ["classifier"]}))
    assert isinstance(model.roberta.encoder.layer[1].attention.self.value, DynLinear)
    assert isinstance(model.classifier.out_proj, CastLinear)
    assert torch.isfinite(tiny.logits(model, tiny.batch())).all()


def test_composes_with_low_rank_factorization():
    t = tiny.tiny_bert()
    model, _ = run(t, ("decompose_svd", {"rank": 8, "parts": ["ffn"], "embedding_rank": 8}),
                   ("cast_precision", {"parts": ["embeddings"]}), ("quantize_weights", {"parts": ["ffn"],
                                                                                        "group_size": 8}))
    up = model.bert.encoder.layer[0].intermediate.dense
    assert all(isinstance(m, WeightOnlyLinear) for m in (up.first, up.second))
    emb = model.bert.embeddings.word_embeddings
    assert isinstance(emb.embed, CastEmbedding) and isinstance(emb.proj, CastLinear)
    assert torch.isfinite(tiny.logits(model, tiny.batch())).all()
