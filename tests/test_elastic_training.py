"""The elastic training options (study file ``elastic:``): in-place distillation from the largest
sub-network's detached outputs, progressive shrinking, which layers a shallow sub-network keeps
(and the elastic step's ``layer_set``), a budget in epochs, the per-phase timer, and a cache key
that changes with every option but keeps the keys of students cached before the options existed."""
from __future__ import annotations

import copy
import random
from collections import Counter
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch

import autosqueeze.elastic.train as etrain
from autosqueeze.arch import get_adapter
from autosqueeze.elastic import ElasticSettings, Subnet, activate, elastic_mode, get_elastic_student, train_elastic
from autosqueeze.elastic.store import elastic_key
from autosqueeze.elastic.subnet import pick_layers
from autosqueeze.elastic.train import (
    distill_loss,
    make_targets,
    resolve_steps,
    step_subnets,
    subnet_space,
)
from autosqueeze.errors import ConfigError
from autosqueeze.methods import MethodContext, MethodError
from autosqueeze.recipe import Recipe, Step, apply_recipe
from autosqueeze.study_config import load_study_config
from tests.tiny import batch, batches, logits, tiny_bert

SMALL = dict(min_layers=1, min_heads=1, min_ffn=8, ffn_step=8, importance_batches=0)


def fake_data(n_train: int = 40, batch_size: int = 4):
    task = SimpleNamespace(name="sst2", num_labels=2, is_regression=False)
    return SimpleNamespace(task=task, train=list(range(n_train)), batch_size=batch_size, max_seq_len=12,
                           train_batches=lambda n, seed: batches(n, seed))


def _inputs(b):
    return {k: v for k, v in b.items() if k != "labels"}


# --- in-place distillation ---------------------------------------------------------------
def test_inplace_targets_are_detached_so_no_gradient_reaches_the_largest_through_them():
    model = tiny_bert(layers=4, heads=4, hidden=32, ffn=64)
    teacher = tiny_bert(layers=4, heads=4, hidden=32, ffn=64, seed=3)
    adapter = get_adapter(model)
    settings = ElasticSettings(inplace_distill=True, inplace_weight=1.0, alpha_hidden=0.0, **SMALL)
    space = subnet_space(model, settings)
    b = _inputs(batch())
    with torch.no_grad():
        t = make_targets(teacher(**b).logits, None, b, settings)
    small = Subnet((0, 2), (1, 1), (8, 8))  # layers 1 and 3 belong to the largest only
    with elastic_mode(model, adapter):
        with activate(model, adapter, space.largest()):
            big_out = model(**b)
        largest = make_targets(big_out.logits, None, b, settings)
        assert not largest.logits.requires_grad and not largest.probs.requires_grad
        with activate(model, adapter, small):
            out = model(**b)
            loss_inplace = distill_loss(out, small, t, settings, largest)
            loss_teacher = distill_loss(out, small, t, settings)
        loss_inplace.backward()
    # the largest's outputs were the target, yet no gradient reached the layers only the largest ran
    for i in (1, 3):
        assert all(p.grad is None or not p.grad.any() for p in model.bert.encoder.layer[i].parameters())
    assert model.bert.encoder.layer[0].attention.self.query.weight.grad.any()
    assert not torch.isclose(loss_inplace, loss_teacher)  # the largest's logits, not the teacher's, were the target
    # weight 0: the teacher alone (the mix is (1 - w) * teacher + w * largest)
    zero = ElasticSettings(inplace_distill=True, inplace_weight=0.0, alpha_hidden=0.0, **SMALL)
    with torch.no_grad(), elastic_mode(model, adapter), activate(model, adapter, small):
        out = model(**b)
        assert torch.isclose(distill_loss(out, small, t, zero, largest), distill_loss(out, small, t, zero))


def test_inplace_hidden_uses_the_largest_hidden_states():
    model = tiny_bert(layers=4, heads=4, hidden=32, ffn=64)
    adapter = get_adapter(model)
    b = _inputs(batch())
    on = ElasticSettings(inplace_distill=True, inplace_weight=1.0, inplace_hidden=True, **SMALL)
    off = ElasticSettings(inplace_distill=True, inplace_weight=1.0, inplace_hidden=False, **SMALL)
    space = subnet_space(model, on)
    small = space.smallest()
    with torch.no_grad(), elastic_mode(model, adapter):
        with activate(model, adapter, space.largest()):
            big = model(**b, output_hidden_states=True)
        teacher_t = make_targets(big.logits * 3, tuple(h + 1 for h in big.hidden_states), b, on)
        largest_t = make_targets(big.logits, big.hidden_states, b, on)
        with activate(model, adapter, small):
            out = model(**b, output_hidden_states=True)
            assert not torch.isclose(distill_loss(out, small, teacher_t, on, largest_t),
                                     distill_loss(out, small, teacher_t, off, largest_t))


def test_training_with_each_option_runs_and_changes_the_student():
    teacher = tiny_bert(layers=4, heads=4, hidden=32, ffn=64)
    base = dict(steps=3, lr=1e-3, random_subnets=1, **SMALL)
    ref, _ = train_elastic(teacher, fake_data(), ElasticSettings(**base))
    for option in ({"inplace_distill": True}, {"inplace_distill": True, "inplace_hidden": True},
                   {"schedule": "progressive"}, {"layer_choice": "first"}, {"layer_choice": "mixed"}):
        student, info = train_elastic(teacher, fake_data(), ElasticSettings(**base, **option))
        assert info["steps"] == 3
        w = student.bert.encoder.layer[0].intermediate.dense.weight
        assert not torch.equal(w, ref.bert.encoder.layer[0].intermediate.dense.weight), option


# --- progressive shrinking -----------------------------------------------------------------
def test_progressive_schedule_samples_full_depth_only_during_the_width_phase(monkeypatch):
    model = tiny_bert(layers=4, heads=4, hidden=32, ffn=64)
    settings = ElasticSettings(schedule="progressive", width_phase=0.5, random_subnets=3, **SMALL)
    space = subnet_space(model, settings)
    rng = random.Random(0)
    for step in range(5):  # the first half of 10 steps
        subnets = step_subnets(space, settings, rng, step, 10)
        assert all(len(s.layers) == 4 for s in subnets)
        assert subnets[1].heads == (1,) * 4 and subnets[1].neurons == (8,) * 4  # widths still shrink
    depths = Counter(len(s.layers) for step in range(5, 10) for s in step_subnets(space, settings, rng, step, 10))
    assert depths[1] >= 5 and len(depths) > 2  # the smallest (1 layer) and random depths after the width phase
    sandwich = ElasticSettings(**SMALL)
    assert len(step_subnets(space, sandwich, random.Random(0), 0, 10)[1].layers) == 1
    # the training loop asks for the step's sub-networks with the right step and total
    seen = []
    real = etrain.step_subnets

    def spy(space, settings, rng, step, total):
        out = real(space, settings, rng, step, total)
        seen.append((step, [len(s.layers) for s in out]))
        return out

    monkeypatch.setattr(etrain, "step_subnets", spy)
    train_elastic(tiny_bert(layers=4, heads=4, hidden=32, ffn=64), fake_data(),
                  ElasticSettings(steps=4, schedule="progressive", width_phase=0.5, **SMALL))
    assert [s for s, _ in seen] == [0, 1, 2, 3]
    assert all(d == 4 for _, depths in seen[:2] for d in depths) and seen[2][1][1] == 1


# --- which layers a shallow sub-network keeps ---------------------------------------------
def test_layer_choice_first_and_mixed():
    model = tiny_bert(layers=4, heads=4, hidden=32, ffn=64)
    assert pick_layers(6, 3) == [0, 2, 4] and pick_layers(6, 3, "first") == [0, 1, 2]
    with pytest.raises(ValueError):
        pick_layers(6, 3, "last")
    first = ElasticSettings(layer_choice="first", random_subnets=4, min_layers=2, min_heads=1, min_ffn=8, ffn_step=8)
    space = subnet_space(model, first)
    rng = random.Random(1)
    subs = [s for step in range(10) for s in step_subnets(space, first, rng, step, 10)]
    assert all(s.layers == tuple(range(len(s.layers))) for s in subs)
    mixed = ElasticSettings(layer_choice="mixed", random_subnets=4, min_layers=2, min_heads=1, min_ffn=8, ffn_step=8)
    kinds = {s.layers for step in range(20) for s in step_subnets(space, mixed, rng, step, 20) if len(s.layers) == 2}
    assert kinds == {(0, 1), (0, 2)}
    with pytest.raises(ValueError, match="layer_choice"):
        ElasticSettings(layer_choice="last")


def test_elastic_step_layer_set_first_slices_the_bottom_layers(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOSQUEEZE_CACHE", str(tmp_path))
    teacher = tiny_bert(layers=4, heads=4, hidden=32, ffn=64)
    student = get_elastic_student(teacher, "abc", fake_data(), ElasticSettings(steps=2, layer_choice="mixed", **SMALL))
    recipe = Recipe(steps=[Step("elastic", {"student": student.key, "layers": 2, "heads_keep": 2,
                                            "ffn_keep": 16, "layer_set": "first"})])
    model, decisions = apply_recipe(recipe, copy.deepcopy(teacher), MethodContext(adapter=get_adapter(teacher)))
    assert decisions[0]["kept_layers"] == [0, 1]
    from autosqueeze.elastic import student_state

    full = copy.deepcopy(teacher)
    full.load_state_dict(student_state(student.key))
    adapter = get_adapter(full)
    with elastic_mode(full, adapter), activate(full, adapter, Subnet((0, 1), (2, 2), (16, 16))):
        assert torch.allclose(logits(model, batch()), logits(full, batch()), atol=1e-5)
    even = Recipe(steps=[Step("elastic", {"student": student.key, "layers": 2})])  # the default: even
    assert apply_recipe(even, copy.deepcopy(teacher), MethodContext(adapter=adapter))[1][0]["kept_layers"] == [0, 2]
    bad = Recipe(steps=[Step("elastic", {"student": student.key, "layers": 2, "layer_set": "top"})])
    with pytest.raises((MethodError, ValueError), match="layer_set"):
        apply_recipe(bad, copy.deepcopy(teacher), MethodContext(adapter=adapter))


# --- budget in epochs ---------------------------------------------------------------------
def test_epochs_convert_to_steps():
    assert resolve_steps(ElasticSettings(epochs=1.0), 67349, 32) == 2104
    assert resolve_steps(ElasticSettings(epochs=0.5), 40, 4) == 5
    assert resolve_steps(ElasticSettings(epochs=0.01), 40, 4) == 1
    assert resolve_steps(ElasticSettings(steps=7), 40, 4) == 7
    assert resolve_steps(ElasticSettings(), 40, 4) == 600  # neither: today's default
    _, info = train_elastic(tiny_bert(layers=2, heads=4, hidden=32, ffn=64), fake_data(n_train=12, batch_size=4),
                            ElasticSettings(epochs=1.0, **SMALL))
    assert info["steps"] == 3 and info["epochs"] == 1.0
    for bad in (0, -1.0, True, float("inf")):
        with pytest.raises(ValueError, match="epochs"):
            ElasticSettings(epochs=bad)


def test_epochs_and_steps_together_are_refused_in_one_line(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text("task: sst2\nsearch_space: elastic\nelastic: {steps: 400, epochs: 1.0}\n")
    with pytest.raises(ConfigError) as err:
        load_study_config(study)
    assert "\n" not in str(err.value) and "not both" in str(err.value) and "elastic" in str(err.value)
    study.write_text("task: sst2\nsearch_space: elastic\nelastic: {epochs: 2, inplace_distill: true, "
                     "schedule: progressive, layer_choice: mixed}\n")
    cfg = load_study_config(study).elastic
    assert (cfg.epochs, cfg.steps, cfg.inplace_distill, cfg.schedule, cfg.layer_choice) == \
        (2, None, True, "progressive", "mixed")
    study.write_text("task: sst2\nsearch_space: elastic\nelastic: {schedule: shrink}\n")
    with pytest.raises(ConfigError, match="schedule"):
        load_study_config(study)


# --- the teacher runs once per step; the timer sees every phase -------------------------------
def test_teacher_forward_once_per_step_and_timer_phases():
    teacher = tiny_bert(layers=4, heads=4, hidden=32, ffn=64)
    calls = []
    handle = teacher.register_forward_hook(  # (the student is a deep copy: its copied hook sees itself as m)
        lambda m, i, o: calls.append(torch.is_grad_enabled()) if m is teacher else None)
    phases: Counter[str] = Counter()

    @contextmanager
    def timer(name):
        phases[name] += 1
        yield

    try:
        train_elastic(teacher, fake_data(), ElasticSettings(steps=3, random_subnets=2, inplace_distill=True, **SMALL),
                      timer=timer)
    finally:
        handle.remove()
    assert calls == [False, False, False]  # once per step, without autograd
    for name in ("data", "teacher", "optimizer", "forward.largest", "backward.smallest", "forward.random2"):
        assert phases[name] == 3, name


# --- the cache key ------------------------------------------------------------------------
def test_cache_key_changes_with_every_option_and_keeps_old_keys():
    old_fields = {"steps", "lr", "random_subnets", "min_layers", "min_heads", "min_ffn", "ffn_step", "temperature",
                  "alpha_hidden", "importance_batches", "bf16", "seed"}
    before = {"min_hidden": 1.0}  # a student of before the hidden width was elastic (tests/test_elastic_hidden.py)
    assert set(ElasticSettings(**before).key_dict()) == old_fields and ElasticSettings().key_dict()["steps"] == 600
    assert set(ElasticSettings(steps=400, lr=1e-4, **before).key_dict()) == old_fields  # cached before: same key
    assert ElasticSettings(steps=600).key_dict() == ElasticSettings().key_dict()

    def key(**kw):
        return elastic_key("abc", "sst2", {"batch_size": 4}, ElasticSettings(**kw))

    variants = [{}, {"epochs": 1.0}, {"epochs": 2.0}, {"inplace_distill": True},
                {"inplace_distill": True, "inplace_weight": 1.0}, {"inplace_distill": True, "inplace_hidden": True},
                {"schedule": "progressive"}, {"schedule": "progressive", "width_phase": 0.3},
                {"layer_choice": "first"}, {"layer_choice": "mixed"}]
    keys = [key(**v) for v in variants]
    assert len(set(keys)) == len(keys)
    # settings without effect do not split the cache
    assert key(inplace_weight=0.9) == key() and key(width_phase=0.3) == key()


def test_a_search_space_can_choose_the_layer_set_per_trial(tmp_path):
    import yaml
    from optuna.trial import FixedTrial

    from autosqueeze.search.space import load_space
    from autosqueeze.search.validate import validate_for_model

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"steps": [{"method": "elastic", "params": {
        "layers": {"type": "int", "low": 1, "high": 4},
        "layer_set": {"type": "categorical", "choices": ["even", "first"]}}}]}))
    space = load_space(path)
    teacher = tiny_bert(layers=4, heads=4, hidden=32, ffn=64)
    validate_for_model(space, teacher, lambda: MethodContext(adapter=get_adapter(teacher), probe=True))
    recipe = space.suggest(FixedTrial({"elastic.layers": 2, "elastic.layer_set": "first"}))
    assert recipe.steps[0].params["layer_set"] == "first" and recipe.steps[0].params["layers"] == 2
    _, decisions = apply_recipe(recipe, copy.deepcopy(teacher), MethodContext(adapter=get_adapter(teacher), probe=True))
    assert decisions[0]["kept_layers"] == [0, 1]
