"""decompose_svd: validation, the no-gain skip rule, full-rank losslessness, replay, int8, DistilBERT."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import DistilBertConfig, DistilBertForSequenceClassification

from autosqueeze.measure import model_size
from autosqueeze.methods import MethodError, get_method
from autosqueeze.methods.decompose_svd import DecomposeSVDConfig, FactorizedEmbedding, LowRankLinear, energy_rank
from autosqueeze.recipe import Recipe, Step, apply_recipe
from tests import tiny


def tiny_distilbert(seed: int = 0) -> DistilBertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = DistilBertConfig(vocab_size=tiny.VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64,  # type: ignore[call-arg]
                           max_position_embeddings=64, dropout=0.0, attention_dropout=0.0, num_labels=2)
    return DistilBertForSequenceClassification(cfg).eval()


def run(teacher, *steps, **ctx_kw):
    return apply_recipe(Recipe(steps=[Step(m, p) for m, p in steps]), teacher, tiny.context(teacher, **ctx_kw))


def lowrank(model):
    return [m for m in model.modules() if isinstance(m, LowRankLinear)]


@pytest.mark.parametrize("params,match", [
    ({}, "give rank"),
    ({"rank": 4, "energy": 0.5}, "not both"),
    ({"rank": 0}, "rank must be an int >= 1"),
    ({"rank": 2.5}, "rank.? must be (an int|a whole number)"),
    ({"energy": 0.0}, r"energy must be a fraction in \(0, 1\]"),
    ({"energy": 1.5}, "energy must be"),
    ({"rank": 4, "parts": []}, "parts must be"),
    ({"rank": 4, "parts": ["mlp"]}, "parts must be"),
    ({"embedding_rank": 0}, "embedding_rank"),
])
def test_config_validation(params, match):
    with pytest.raises(MethodError, match=match):
        get_method("decompose_svd").make_config(params)


def test_parts_groups_and_lists():
    c = DecomposeSVDConfig(rank=4, parts=["ffn", "query"])
    assert c == DecomposeSVDConfig(rank=4, parts=("ffn", "query"))
    assert c.projections() == ["query", "ffn_up", "ffn_down"]


def test_rank_not_below_dims_is_refused():
    t = tiny.tiny_bert()
    with pytest.raises(MethodError, match="not below the matrix dimensions"):
        run(t, ("decompose_svd", {"rank": 32}))
    with pytest.raises(MethodError, match="embedding_rank 40 is not below"):
        run(t, ("decompose_svd", {"embedding_rank": 40}))


def test_skips_matrices_without_gain():
    """At rank 16 a 32x32 matrix would store 16*64 = 1024 = 32*32 weights: no gain, skipped.
    The 32x64 FFN matrices store 16*96 = 1536 < 2048: factorized."""
    t = tiny.tiny_bert()
    model, dec = run(t, ("decompose_svd", {"rank": 16}))
    assert dec[0]["ranks"] == [{"ffn_up": 16, "ffn_down": 16}] * 4
    assert sorted(dec[0]["skipped"]) == sorted(
        f"layer{i}.{p}" for i in range(4) for p in ("query", "key", "value", "attn_out"))
    layer = model.bert.encoder.layer[0]
    assert type(layer.attention.self.query) is nn.Linear and isinstance(layer.intermediate.dense, LowRankLinear)
    assert model_size(t).params - model_size(model).params == 8 * (2048 - 1536)


def test_full_rank_is_lossless_with_embeddings():
    t = tiny.tiny_bert()
    model, dec = run(t, ("decompose_svd", {"rank": 64, "embedding_rank": 64, "allow_no_gain": True}))
    assert len(lowrank(model)) == 24 and dec[0]["embedding_rank"] == 32  # clamped to min(in, out)
    assert isinstance(model.bert.embeddings.word_embeddings, FactorizedEmbedding)
    b = tiny.batch()
    assert torch.allclose(tiny.logits(model, b), tiny.logits(t, b), atol=1e-5)


def test_truncation_changes_outputs_and_energy_orders_ranks():
    t = tiny.tiny_bert()
    b = tiny.batch()
    model, _ = run(t, ("decompose_svd", {"rank": 2}))
    assert not torch.allclose(tiny.logits(model, b), tiny.logits(t, b), atol=1e-4)
    w = t.bert.encoder.layer[0].intermediate.dense.weight
    assert energy_rank(w, 0.5) < energy_rank(w, 0.9) < energy_rank(w, 1.0) == 32
    _, low = run(t, ("decompose_svd", {"energy": 0.5, "allow_no_gain": True}))
    _, high = run(t, ("decompose_svd", {"energy": 0.95, "allow_no_gain": True}))
    for lo, hi in zip(low[0]["ranks"], high[0]["ranks"]):
        assert all(lo[p] <= hi[p] for p in lo)


def test_replay_rebuilds_the_same_shapes():
    t = tiny.tiny_bert()
    params = {"energy": 0.8, "parts": ["attention", "ffn_up"], "embedding_rank": 8}
    model, dec = run(t, ("decompose_svd", params))
    fresh = copy.deepcopy(t)
    with torch.no_grad():  # replay must not depend on the weights it starts from
        for p in fresh.parameters():
            p.mul_(0.5)
    ctx = tiny.context(fresh, replay=True)
    ctx.train_batches = None
    rebuilt, _ = apply_recipe(Recipe(steps=[Step("decompose_svd", params)]), fresh, ctx, dec)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    b = tiny.batch()
    assert torch.equal(tiny.logits(rebuilt, b), tiny.logits(model, b))


def test_refuses_double_decomposition_and_int8():
    t = tiny.tiny_bert()
    spec = get_method("decompose_svd")
    model, _ = run(t, ("decompose_svd", {"rank": 4, "embedding_rank": 4}))
    with pytest.raises(MethodError, match="already factorized"):
        spec.apply(model, spec.make_config({"rank": 2}), tiny.context(t))
    with pytest.raises(MethodError, match="already factorized"):
        spec.apply(model, spec.make_config({"embedding_rank": 2}), tiny.context(t))
    quantized, _ = run(t, ("quantize_dynamic", {}))
    with pytest.raises(MethodError, match="quantized"):
        spec.apply(quantized, spec.make_config({"rank": 4}), tiny.context(t))


def test_quantize_dynamic_quantizes_both_factors():
    t = tiny.tiny_bert()
    model, _ = run(t, ("decompose_svd", {"rank": 8}), ("quantize_dynamic", {}))
    qtype = torch.ao.nn.quantized.dynamic.Linear
    for layer in model.bert.encoder.layer:
        for mod in (layer.attention.self.query, layer.attention.output.dense, layer.output.dense):
            assert isinstance(mod.first, qtype) and isinstance(mod.second, qtype)
    assert sum(isinstance(m, qtype) for m in model.modules()) == 2 * 6 * 4
    b = tiny.batch()
    assert torch.isfinite(tiny.logits(model, b)).all()


def test_distilbert():
    t = tiny_distilbert()
    model, dec = run(t, ("decompose_svd", {"rank": 8, "embedding_rank": 8}))
    layer = model.distilbert.transformer.layer[0]
    assert isinstance(layer.attention.q_lin, LowRankLinear) and isinstance(layer.ffn.lin2, LowRankLinear)
    assert isinstance(model.distilbert.embeddings.word_embeddings, FactorizedEmbedding)
    b = tiny.batch()
    assert torch.isfinite(tiny.logits(model, b)).all()
    full, _ = run(t, ("decompose_svd", {"rank": 32, "allow_no_gain": True}))
    assert torch.allclose(tiny.logits(full, b), tiny.logits(t, b), atol=1e-5)


def test_composition_prune_decompose_distill_int8():
    t = tiny.tiny_bert()
    model, dec = run(t, ("prune_structured", {"heads_keep": 2, "ffn_keep": 0.5, "batches": 2}),
                     ("decompose_svd", {"rank": 4}), ("distill", {"steps": 2}), ("quantize_dynamic", {}))
    query = model.bert.encoder.layer[0].attention.self.query
    assert query.first.weight().shape == (4, 32) and query.second.weight().shape == (16, 4)
    assert dec[1]["ranks"][0] == {p: 4 for p in ("query", "key", "value", "attn_out", "ffn_up", "ffn_down")}
    b = tiny.batch()
    assert torch.isfinite(tiny.logits(model, b)).all()
