"""Early exit trained jointly (backbone + every exit): the exits learn, hooks and the early stopper
are honoured, and it composes with a shallower / narrower / sparse student and int8 after it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from autosqueeze.methods import MethodContext, get_method
from autosqueeze.methods.early_exit import EarlyExitConfig, all_layer_outputs, exit_losses, exit_stats
from autosqueeze.recipe import Recipe, Step, apply_recipe
from tests import tiny


def _task_batch(seed: int, size: int = 16, seq: int = 10) -> dict[str, torch.Tensor]:
    """A learnable task: label 1 sentences use the upper half of the vocabulary, label 0 the lower."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (size,), generator=g)
    ids = torch.randint(5, 62, (size, seq), generator=g) + 57 * labels[:, None]
    ids[:, 0] = 2  # a [CLS]-like first token
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _context(teacher, **kw) -> MethodContext:
    return MethodContext(adapter=tiny.get_adapter(teacher), teacher=teacher, seed=0,
                         train_batches=lambda n, seed: (_task_batch(seed * 1000 + i) for i in range(n)), **kw)


def _per_exit(model, teacher, config, seeds=range(900, 904)) -> torch.Tensor:
    """Every exit's loss (the final classifier last) on held-out batches, in eval mode."""
    total = 0
    with torch.no_grad():
        for s in seeds:
            b = _task_batch(s)
            inputs = {k: v for k, v in b.items() if k != "labels"}
            outs, final = all_layer_outputs(model, tiny.get_adapter(model), inputs)
            logits = [h(o) for h, o in zip(model.autosqueeze_exit.heads, outs)] + [final]
            t = teacher(**inputs).logits if teacher is not None else None
            total = total + exit_losses(logits, b["labels"], t, config)
    return total / len(seeds)


def _exit(teacher, ctx, **params):
    model, (dec,) = apply_recipe(Recipe([Step("early_exit", params)]), teacher, ctx)
    return model, dec


def test_config_of_the_joint_mode():
    spec = get_method("early_exit")
    assert spec.make_config({}).training == "frozen" and spec.make_config({}).learning_rate() == 5e-4
    assert spec.make_config({"training": "joint"}).learning_rate() == 1e-4
    for bad in ({"training": "both"}, {"alpha_distill": 1.5}, {"temperature": 0.0}, {"lr": -1.0}):
        with pytest.raises(ValueError):
            spec.make_config(bad)


def test_joint_training_trains_every_exit_and_the_backbone():
    teacher = tiny.tiny_bert(layers=4)
    params = {"training": "joint", "alpha_distill": 0.0, "steps": 80, "lr": 2e-3, "threshold": 0.0}
    config = EarlyExitConfig(**params)
    untrained, _ = _exit(teacher, _context(teacher, probe=True), **params)  # same heads, no training
    before = _per_exit(untrained, None, config)
    model, dec = _exit(teacher, _context(teacher), **params)
    after = _per_exit(model, None, config)
    assert dec["steps_done"] == 80 and len(after) == 4
    assert (after < 0.3 * before).all(), (before, after)  # every exit, the lowest included
    changed = [k for k, v in teacher.state_dict().items() if not torch.equal(model.state_dict()[k], v)]
    assert any(k.startswith("bert.encoder.layer.0.") for k in changed)  # the backbone learnt too


def test_joint_training_distils_from_the_teacher():
    teacher = tiny.tiny_bert(layers=3, seed=1)
    with torch.no_grad():
        teacher.classifier.weight.mul_(300)  # a confident teacher whose answers depend on the input
    student = tiny.tiny_bert(layers=3, seed=2)
    params = {"training": "joint", "alpha_distill": 1.0, "steps": 80, "lr": 2e-3, "threshold": 0.0}
    config = EarlyExitConfig(**params)
    untrained, _ = _exit(student, _context(teacher, probe=True), **params)
    before = _per_exit(untrained, teacher, config)
    model, _ = _exit(student, _context(teacher), **params)
    after = _per_exit(model, teacher, config)
    assert (after < 0.7 * before).all(), (before, after)


@pytest.mark.parametrize("training", ["frozen", "joint"])
def test_post_step_hooks_see_the_whole_model_and_the_stopper_ends_training(training):
    teacher = tiny.tiny_bert(layers=3)
    seen = []
    ctx = _context(teacher)
    ctx.post_step_hooks.append(lambda m: seen.append(m))
    ctx.should_stop = lambda model, done: done >= 3
    model, dec = _exit(teacher, ctx, training=training, steps=50, threshold=0.3)
    assert dec["steps_done"] == 3 and len(seen) == 3 and all(m is model for m in seen)
    assert exit_stats(model)["calls"] == 0


def test_joint_composes_with_a_shallower_narrower_student_and_int8():
    teacher = tiny.tiny_bert(layers=4)
    recipe = Recipe([Step("drop_layers", {"keep": 3}), Step("prune_structured", {"heads_keep": 0.5, "ffn_keep": 0.5}),
                     Step("distill", {"steps": 2}),
                     Step("early_exit", {"training": "joint", "steps": 3, "rule": "patience", "patience": 1}),
                     Step("quantize_dynamic", {})])
    model, dec = apply_recipe(recipe, teacher, tiny.context(teacher))
    assert dec[3]["steps_done"] == 3 and len(model.autosqueeze_exit.heads) == 2
    assert isinstance(model.bert.encoder.layer[0].attention.self.query, torch.ao.nn.quantized.dynamic.Linear)
    assert model.bert.encoder.layer[0].attention.self.query.weight().shape[0] == 16  # 2 of 4 heads of 8
    model.autosqueeze_reset_exit_stats()
    assert tiny.logits(model, tiny.batch()).shape == (4, 2)
    assert exit_stats(model)["mean_exit_layer"] == 2  # patience 1: two agreeing heads, after layer 2


def test_joint_training_keeps_unstructured_sparsity():
    from autosqueeze.methods.prune_unstructured import SparseLinear

    teacher = tiny.tiny_bert(layers=3)
    recipe = Recipe([Step("prune_unstructured", {"sparsity": 0.5}),
                     Step("early_exit", {"training": "joint", "steps": 5, "lr": 1e-2})])
    model, _ = apply_recipe(recipe, teacher, tiny.context(teacher))
    sparse = [m for m in model.modules() if isinstance(m, SparseLinear)]
    assert sparse and all(float((m.to_plain_linear().weight == 0).float().mean()) >= 0.5 for m in sparse)


def test_regression_of_loss_helper():
    logits = [torch.tensor([[2.0, -2.0]]), torch.tensor([[0.0, 0.0]])]
    labels = torch.tensor([0])
    ce = exit_losses(logits, labels, None, EarlyExitConfig(alpha_distill=0.7))  # no teacher: labels only
    assert torch.allclose(ce, torch.stack([F.cross_entropy(z, labels) for z in logits]))
    kd = exit_losses(logits, labels, logits[0], EarlyExitConfig(alpha_distill=1.0, temperature=1.0))
    assert kd[0].abs() < 1e-6 and kd[1] > 0


# --- in the search: a data-dependent cost takes no shortcut -----------------------------

def test_total_training_steps_count_the_exits_training():
    from autosqueeze.search.early_stop import total_training_steps

    steps = [("drop_layers", {"keep": 2}), ("distill", {"steps": 2}),
             ("early_exit", {"training": "joint", "steps": 3}), ("quantize_dynamic", {})]
    assert total_training_steps(steps) == 5
    assert total_training_steps([("early_exit", {"steps": 7})]) == 7  # frozen training counts too


def test_an_early_exit_trial_is_judged_on_its_real_latency_not_its_full_depth_probe(
        tiny_model_dir, glue_dir, tmp_path, isolated_cache, monkeypatch):
    """The probe runs the full depth (over the budget here): the trial still trains, with no
    early stopper (whose front would be taken at the wrong latency), and its real latency decides."""
    import dataclasses

    from autosqueeze.search import objective
    from autosqueeze.search.study import prepare
    from autosqueeze.study_config import load_study_config
    from tests.bad_inputs_helpers import write_study

    sc = prepare(load_study_config(write_study(tmp_path, tiny_model_dir)), str(glue_dir), budget_ms=5.0)
    measured, probed = sc.timing, []

    def timing(deployment, key):
        probe = not deployment.model.autosqueeze_exit.enabled
        probed.append(probe)
        return dataclasses.replace(measured(deployment, key), latency_ms=50.0 if probe else 1.0)

    monkeypatch.setattr(sc, "timing", timing)
    recipe = Recipe([Step("early_exit", {"training": "joint", "steps": 4, "threshold": 0.5})])
    result = objective.evaluate_recipe(recipe, sc, reference=lambda latency_ms: 10.0)  # a stopper would stop it
    assert probed == [True, False]
    assert result.status == "complete" and result.latency_ms == 1.0 and result.early_stop is None
    assert "early_stop" not in result.to_dict()
    assert result.measurement.exit_stats is not None and result.measurement.exit_stats["calls"] > 0
