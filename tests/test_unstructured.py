"""Unstructured magnitude pruning: exact sparsity, masks through training, sparse size, CSR kernel, replay."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import RobertaConfig, RobertaForSequenceClassification

from autosqueeze.measure import model_size
from autosqueeze.methods import MethodError, get_method
from autosqueeze.methods import prune_unstructured as pu
from autosqueeze.methods.common import part_weights
from autosqueeze.methods.prune_unstructured import SparseLinear
from autosqueeze.recipe import Recipe, Step, apply_recipe
from tests import tiny

DynLinear = torch.ao.nn.quantized.dynamic.Linear


def run(teacher, *steps, **ctx_kw):
    return apply_recipe(Recipe(steps=[Step(m, p) for m, p in steps]), teacher, tiny.context(teacher, **ctx_kw))


def sparse(model):
    return [m for m in model.modules() if isinstance(m, SparseLinear)]


def zero_patterns(model):
    return [(m.weight == 0).clone() for m in sparse(model)]


@pytest.mark.parametrize("params,match", [
    ({"sparsity": 1.0}, "sparsity"), ({"sparsity": -0.1}, "sparsity"), ({"sparsity": True}, "sparsity"),
    ({"scope": "layer"}, "scope"), ({"kernel": "bsr"}, "kernel"), ({"parts": ["embeddings"]}, "parts"),
    ({"parts": []}, "parts"),
])
def test_validation_errors(params, match):
    with pytest.raises(MethodError, match=match):
        get_method("prune_unstructured").make_config(params)


@pytest.mark.parametrize("sparsity", [0.3, 0.75, 0.9])
def test_sparsity_is_exact_per_scope(sparsity):
    t = tiny.tiny_bert()
    model, dec = run(t, ("prune_unstructured", {"sparsity": sparsity}))
    for m in sparse(model):
        assert int((m.weight == 0).sum()) == round(sparsity * m.weight.numel())
    model, dec = run(t, ("prune_unstructured", {"sparsity": sparsity, "scope": "global"}))
    mods = sparse(model)
    total = sum(m.weight.numel() for m in mods)
    assert sum(int((m.weight == 0).sum()) for m in mods) == round(sparsity * total)
    per = {round(float((m.weight == 0).float().mean()), 3) for m in mods}
    assert len(per) > 1  # one global threshold: matrices end up with different sparsities
    # the smallest magnitudes went: every kept weight is at least as large as every pruned one
    kept = torch.cat([m.teacher_abs[m.mask] for m in _with_teacher_abs(t, model)])
    gone = torch.cat([m.teacher_abs[~m.mask] for m in _with_teacher_abs(t, model)])
    assert kept.min() >= gone.max()


def _with_teacher_abs(teacher, model):
    adapter = tiny.context(teacher).adapter
    pairs = zip(part_weights(teacher, adapter, ("attention", "ffn")), part_weights(model, adapter, ("attention",
                                                                                                    "ffn")))
    out = []
    for (_, _, old), (_, _, new) in pairs:
        new.teacher_abs = old.weight.detach().abs()
        out.append(new)
    return out


def test_ties_are_broken_exactly():
    mask = pu._keep_mask(torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 2.0]), 4)
    assert mask.tolist() == [False, False, False, False, True, True]
    assert pu._keep_mask(torch.ones(2, 3), 0).all()


def test_masks_survive_a_distill_step_in_the_same_recipe():
    t = tiny.tiny_bert()
    pruned, _ = run(t, ("prune_unstructured", {"sparsity": 0.6}))
    ctx = tiny.context(t)
    trained, dec = apply_recipe(Recipe(steps=[Step("prune_unstructured", {"sparsity": 0.6}),
                                              Step("distill", {"steps": 4, "lr": 1e-2})]), t, ctx)
    assert dec[1]["steps_done"] == 4 and pu.reapply_masks in ctx.post_step_hooks
    for before, after, m, m0 in zip(zero_patterns(pruned), zero_patterns(trained), sparse(trained), sparse(pruned)):
        assert torch.equal(before, after)
        assert not torch.equal(m.weight, m0.weight)  # the kept weights did train


def test_pruned_weights_get_no_gradient_and_hook_rezeroes():
    t = tiny.tiny_bert()
    model, _ = run(t, ("prune_unstructured", {"sparsity": 0.5, "parts": ["ffn"]}))
    model.train()
    b = tiny.batch()
    out = model(**{k: v for k, v in b.items() if k != "labels"}).logits
    out.sum().backward()
    for m in sparse(model):
        assert (m.weight.grad[~m.mask] == 0).all() and (m.weight.grad[m.mask] != 0).any()
        with torch.no_grad():
            m.weight.add_(1.0)  # an optimiser that ignored the zero gradients
    pu.reapply_masks(model)
    assert all(int((m.weight == 0).sum()) == m.weight.numel() // 2 for m in sparse(model))


def test_size_counts_a_real_sparse_format():
    t = tiny.tiny_bert()
    for sparsity, kernel, fmt in [(0.0, "dense", "dense"), (0.5, "dense", "bitmap"), (0.99, "dense", None),
                                  (0.5, "csr", "csr")]:
        model, _ = run(t, ("prune_unstructured", {"sparsity": sparsity, "kernel": kernel}))
        for m in sparse(model):
            rows, cols = m.weight.shape
            nnz = int(m.weight.count_nonzero())
            expect = {"dense": 4 * rows * cols, "bitmap": 4 * nnz + -(-rows * cols // 8),
                      "csr": 8 * nnz + 4 * (rows + 1)}
            chosen = fmt or min(expect, key=expect.__getitem__)  # the smallest real format
            assert m.storage_format() == chosen
            assert m.autosqueeze_nbytes() == expect[chosen] + 4 * m.bias.numel()
    # never smaller than a dense matrix would be at low sparsity with CSR: 50% CSR costs as much as dense
    model, _ = run(t, ("prune_unstructured", {"sparsity": 0.5, "kernel": "csr"}))
    assert model_size(model).non_embedding_bytes >= model_size(t).non_embedding_bytes


@pytest.mark.parametrize("batch_size", [1, 4])
def test_csr_kernel_matches_dense(batch_size):
    t = tiny.tiny_bert()
    csr, _ = run(t, ("prune_unstructured", {"sparsity": 0.8, "scope": "global", "kernel": "csr"}))
    dense, _ = run(t, ("prune_unstructured", {"sparsity": 0.8, "scope": "global"}))
    b = tiny.batch(batch_size=batch_size)
    inputs = {k: v for k, v in b.items() if k != "labels"}
    with torch.no_grad():
        out = csr(**inputs).logits
    assert all(m._csr is not None and m._csr[1].layout == torch.sparse_csr for m in sparse(csr))
    assert torch.allclose(out, tiny.logits(dense, b), atol=1e-5)
    assert torch.allclose(tiny.logits(csr, b), out, atol=1e-6)  # inference_mode too
    # a changed weight invalidates the CSR copy
    m = sparse(csr)[0]
    with torch.no_grad():
        m.weight.mul_(2.0)
    sparse(dense)[0].weight.data.mul_(2.0)
    assert torch.allclose(tiny.logits(csr, b), tiny.logits(dense, b), atol=1e-5)
    # deep copies (as apply_recipe makes) drop the cached copy and still compute the same
    assert torch.allclose(tiny.logits(copy.deepcopy(csr), b), tiny.logits(dense, b), atol=1e-5)


def test_csr_model_trains_dense_and_masked():
    t = tiny.tiny_bert()
    model, dec = run(t, ("prune_unstructured", {"sparsity": 0.9, "kernel": "csr"}), ("distill", {"steps": 3,
                                                                                                 "lr": 1e-2}))
    assert dec[1]["steps_done"] == 3
    assert all(int((m.weight == 0).sum()) == round(0.9 * m.weight.numel()) for m in sparse(model))
    b = tiny.batch()
    out = tiny.logits(model, b)
    for m in sparse(model):
        m.kernel = "dense"
    assert torch.allclose(out, tiny.logits(model, b), atol=1e-5)


def test_second_pruning_step_only_raises_sparsity():
    t = tiny.tiny_bert()
    model, dec = run(t, ("prune_unstructured", {"sparsity": 0.5}), ("prune_unstructured", {"sparsity": 0.8,
                                                                                           "kernel": "csr"}))
    assert all(int((m.weight == 0).sum()) == round(0.8 * m.weight.numel()) and m.kernel == "csr" for m in sparse(model))
    model, dec = run(t, ("prune_unstructured", {"sparsity": 0.7}), ("prune_unstructured", {"sparsity": 0.2}))
    assert all(int((m.weight == 0).sum()) == round(0.7 * m.weight.numel()) for m in sparse(model))


def test_replay_rebuilds_masks_and_loads_trained_weights():
    t = tiny.tiny_bert()
    recipe = Recipe(steps=[Step("prune_unstructured", {"sparsity": 0.7, "scope": "global", "kernel": "csr"}),
                           Step("distill", {"steps": 3, "lr": 1e-2})])
    model, dec = apply_recipe(recipe, t, tiny.context(t))
    fresh = copy.deepcopy(t)
    rebuilt, _ = apply_recipe(recipe, fresh, tiny.context(fresh, replay=True), dec)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert [type(m) for m in rebuilt.modules()] == [type(m) for m in model.modules()]
    assert all(torch.equal(a.mask, b.mask) for a, b in zip(sparse(rebuilt), sparse(model)))
    b = tiny.batch()
    assert torch.equal(tiny.logits(rebuilt, b), tiny.logits(model, b))


def test_replay_with_other_weights_takes_masks_from_the_loaded_weights():
    t = tiny.tiny_bert()
    recipe = Recipe(steps=[Step("prune_unstructured", {"sparsity": 0.5})])
    model, dec = apply_recipe(recipe, t, tiny.context(t))
    other = tiny.tiny_bert(seed=3)
    rebuilt, _ = apply_recipe(recipe, other, tiny.context(other, replay=True), dec)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert all(torch.equal(a.mask, b.mask) for a, b in zip(sparse(rebuilt), sparse(model)))


def test_quantization_after_pruning_is_dense_and_honest():
    t = tiny.tiny_bert()
    model, _ = run(t, ("prune_unstructured", {"sparsity": 0.5, "kernel": "csr"}), ("distill", {"steps": 2}),
                   ("quantize_dynamic", {}))
    assert not sparse(model) and isinstance(model.bert.encoder.layer[0].intermediate.dense, DynLinear)
    w = model.bert.encoder.layer[0].intermediate.dense.weight().dequantize()
    assert float((w == 0).float().mean()) >= 0.5  # the zeros are still there, stored densely
    model, _ = run(t, ("prune_unstructured", {"sparsity": 0.5, "parts": ["ffn"]}), ("cast_precision",
                                                                                    {"parts": ["ffn"]}))
    assert not sparse(model)
    assert torch.isfinite(tiny.logits(model, tiny.batch())).all()


def test_roberta_uses_the_adapter():
    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=tiny.VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=80)
    r = RobertaForSequenceClassification(cfg).eval()
    model, dec = run(r, ("prune_unstructured", {"sparsity": 0.6, "parts": ["attention"], "kernel": "csr"}))
    assert len(sparse(model)) == 8 and isinstance(model.roberta.encoder.layer[0].attention.self.key, SparseLinear)
    assert isinstance(model.roberta.encoder.layer[0].intermediate.dense, nn.Linear)
    assert len(dec[0]["nnz"]) == 8
    assert torch.isfinite(tiny.logits(model, tiny.batch())).all()


def test_refuses_quantized_layers():
    t = tiny.tiny_bert()
    quantized, _ = run(t, ("quantize_dynamic", {}))
    with pytest.raises(MethodError, match="quantized"):
        pu.apply(quantized, get_method("prune_unstructured").make_config({}), tiny.context(t))


def test_saved_and_loaded_through_the_artifact(tmp_path):
    from autosqueeze.artifact import load_compressed, save_compressed
    from autosqueeze.builder import build

    t = tiny.tiny_bert()
    recipe = Recipe(steps=[Step("prune_unstructured", {"sparsity": 0.8, "kernel": "csr"}), Step("distill",
                                                                                                {"steps": 2}),
                           Step("cast_precision", {"parts": ["embeddings"]}),
                           Step("quantize_weights", {"bits": 4, "group_size": 16, "parts": ["classifier"]})])
    built = build(recipe, t, tiny.context(t))
    save_compressed(built, recipe, None, t.config, tmp_path / "m")
    loaded = load_compressed(tmp_path / "m")
    b = tiny.batch()
    assert [type(m).__name__ for m in loaded.modules()] == [type(m).__name__ for m in built.model.modules()]
    assert torch.allclose(tiny.logits(loaded, b), tiny.logits(built.model, b), atol=1e-6)
    assert model_size(loaded) == model_size(built.model)


def test_masks_survive_quantization_aware_training():
    t = tiny.tiny_bert()
    pruned, _ = run(t, ("prune_unstructured", {"sparsity": 0.6}))
    model, dec = run(t, ("prune_unstructured", {"sparsity": 0.6}), ("qat", {"steps": 3, "lr": 1e-2}))
    assert dec[1]["fake_quantized"] == 24 and all(type(m) is SparseLinear for m in sparse(model))
    assert all(torch.equal(a, b) for a, b in zip(zero_patterns(pruned), zero_patterns(model)))
