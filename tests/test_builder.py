"""The builder: build (data and training) and replay (recorded decisions only) give the same model."""
from __future__ import annotations

import copy

import pytest
import torch

import autosqueeze
from autosqueeze.builder import build, quantize_start, replay, replay_context
from autosqueeze.recipe import Recipe, Step
from tests import tiny

RECIPE = Recipe(steps=[Step("prune_structured", {"heads_keep": 2, "ffn_keep": 32, "batches": 2}),
                       Step("distill", {"steps": 2}),
                       Step("cast_precision", {"parts": ["embeddings"]}),
                       Step("quantize_dynamic", {})], seed=3)


def _built():
    teacher = tiny.tiny_bert(layers=3)
    return teacher, build(RECIPE, teacher, tiny.context(teacher, seed=RECIPE.seed))


def test_quantize_start():
    assert quantize_start(RECIPE) == 2
    assert quantize_start(Recipe(steps=RECIPE.steps[:2])) == 2
    assert quantize_start(Recipe(steps=[])) == 0


def test_replay_rebuilds_the_structure_from_decisions_alone():
    teacher, built = _built()
    fresh = tiny.tiny_bert(layers=3)  # other weights: only the decisions say which heads were kept
    float_model = replay(RECIPE, fresh, built.decisions, part="float")
    shapes = [tuple(p.shape) for p in built.float_model.parameters()]
    assert [tuple(p.shape) for p in float_model.parameters()] == shapes
    float_model.load_state_dict(built.float_model.state_dict())
    b = tiny.batch()
    assert torch.equal(tiny.logits(float_model, b), tiny.logits(built.float_model, b))
    model = replay(RECIPE, float_model, built.decisions, part="quantize")
    assert torch.allclose(tiny.logits(model, b), tiny.logits(built.model, b), atol=1e-6)
    assert [type(m).__name__ for m in model.modules()] == [type(m).__name__ for m in built.model.modules()]


def test_replay_copies_unless_told_and_can_skip_methods():
    teacher, built = _built()
    before = copy.deepcopy(teacher.state_dict())
    whole = replay(RECIPE, teacher, built.decisions)  # every step, on a copy
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert [type(m).__name__ for m in whole.modules()] == [type(m).__name__ for m in built.model.modules()]
    cast_only = replay(RECIPE, built.float_model, built.decisions, part="quantize", skip=("quantize_dynamic",))
    assert cast_only is not built.float_model
    assert cast_only.get_input_embeddings().weight.dtype == torch.bfloat16
    assert not any("quantized" in type(m).__module__ for m in cast_only.modules())
    same = tiny.tiny_bert(layers=3)
    assert replay(RECIPE, same, built.decisions, part="float", copy_model=False) is same


def test_replay_needs_a_replaying_context():
    teacher, built = _built()
    ctx = replay_context(RECIPE, teacher)
    assert ctx.replay and ctx.seed == RECIPE.seed and ctx.train_batches is None
    with pytest.raises(ValueError, match="replay"):
        replay(RECIPE, teacher, built.decisions, tiny.context(teacher))
    with pytest.raises(ValueError, match="part"):
        replay(RECIPE, teacher, built.decisions, part="half")  # type: ignore[arg-type]


def test_public_names():
    assert autosqueeze.replay is replay and autosqueeze.build is build
