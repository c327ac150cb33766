"""Hidden width (d_model) as an elastic dimension: a consistent permutation of the residual stream
leaves the outputs unchanged, the activated sub-network (shared weights, LayerNorm over the kept
dimensions) equals the sliced standalone model, the elastic method slices ``hidden_keep``, records
and replays it, the sliced model exports to ONNX and loads back through ``autosqueeze.load``, and
the sandwich rule samples the hidden width (the cache key follows)."""
from __future__ import annotations

import copy
import random
from types import SimpleNamespace

import pytest
import torch

import autosqueeze
from autosqueeze.arch import get_adapter
from autosqueeze.elastic import ElasticSettings, Subnet, activate, elastic_mode, get_elastic_student, slice_subnet
from autosqueeze.elastic.reorder import hidden_importance, reorder, reorder_hidden
from autosqueeze.elastic.store import elastic_key
from autosqueeze.elastic.subnet import HIDDEN_ORDER_ATTR, SubnetSpace, in_student_order
from autosqueeze.elastic.train import subnet_space, train_elastic
from autosqueeze.methods import MethodContext, MethodError, get_method
from autosqueeze.recipe import Recipe, Step, apply_recipe
from tests import tiny
from tests.tiny import batch, logits

HIDDEN_ARCHS = ("bert", "roberta", "mpnet", "distilbert", "electra", "deberta-v2")


def _student_like(arch: str, seed: int = 0):
    """A tiny model whose LayerNorms are not the identity (a fresh one's gamma = 1, beta = 0 would
    hide a LayerNorm sliced or permuted wrongly)."""
    model = tiny.tiny_model(arch, layers=3, seed=seed)
    g = torch.Generator().manual_seed(seed + 11)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.add_(0.3 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.add_(0.3 * torch.randn(mod.bias.shape, generator=g))
    return model


@pytest.mark.parametrize("arch", HIDDEN_ARCHS)
def test_reordering_the_hidden_dimensions_does_not_change_the_outputs(arch):
    model = _student_like(arch)
    adapter = get_adapter(model)
    b = batch()
    ref = logits(model, b)
    g = torch.Generator().manual_seed(3)
    order = reorder_hidden(model, adapter, torch.rand(32, generator=g))
    reorder(model, adapter, [torch.rand(4, generator=g) for _ in range(3)],
            [torch.rand(64, generator=g) for _ in range(3)])
    assert order != sorted(order) and sorted(order) == list(range(32))
    assert torch.allclose(logits(model, b), ref, atol=1e-5)
    assert model.config.hidden_size == 32 and adapter.hidden_size(model) == 32
    # a second reordering composes: the recorded order still maps student dims to the original ones
    again = reorder_hidden(model, adapter, torch.rand(32, generator=g))
    assert torch.allclose(logits(model, b), ref, atol=1e-5)
    assert torch.equal(getattr(model, HIDDEN_ORDER_ATTR), torch.tensor(again))


@pytest.mark.parametrize("arch,seed", [(a, s) for a in HIDDEN_ARCHS for s in range(2)])
def test_activated_subnet_with_a_narrower_hidden_width_equals_the_sliced_model(arch, seed):
    model = _student_like(arch, seed)
    adapter = get_adapter(model)
    g = torch.Generator().manual_seed(seed)
    reorder_hidden(model, adapter, torch.rand(32, generator=g))  # as a student is: hidden, heads, neurons ordered
    reorder(model, adapter, [torch.rand(4, generator=g) for _ in range(3)],
            [torch.rand(64, generator=g) for _ in range(3)])
    b = batch(seed=seed)
    full = logits(model, b)
    space = SubnetSpace(depth=3, heads=4, neurons=64, min_depth=1, min_heads=1, min_neurons=4, neuron_step=4,
                        hidden=32, min_hidden=8, hidden_step=4)
    rng = random.Random(seed)
    subnets = [space.smallest(), Subnet((0, 2), (2, 3), (16, 40), hidden=20)] + [space.sample(rng) for _ in range(2)]
    for subnet in subnets:
        with elastic_mode(model, adapter), activate(model, adapter, subnet):
            shared = logits(model, b)
        sliced = slice_subnet(copy.deepcopy(model), adapter, subnet)
        width = subnet.hidden or 32
        assert torch.allclose(logits(sliced, b), shared, atol=1e-5), subnet
        assert sliced.config.hidden_size == width == adapter.hidden_size(sliced)
        assert all(t.embedding_dim == width for t in adapter.hidden_tables(sliced))
        assert all(tuple(n.normalized_shape) == (width,) for n in adapter.hidden_norms(sliced))
        for layer, heads in zip(adapter.layers(sliced), subnet.heads):  # attention width: heads x head size
            parts = adapter.attention(layer)
            assert parts.query.in_features == width and parts.query.out_features == heads * parts.head_size
            assert parts.output.out_features == width and adapter.ffn(layer)[1].out_features == width
    assert space.smallest().hidden == 8
    # leaving the contexts restores the full model
    assert torch.allclose(logits(model, b), full, atol=1e-6)


def test_the_sandwich_space_samples_hidden_widths_and_a_space_without_them_draws_as_before():
    plain = SubnetSpace(depth=4, heads=4, neurons=64, min_depth=1, min_heads=1, min_neurons=8, neuron_step=8)
    wide = SubnetSpace(**{**plain.__dict__, "hidden": 32, "min_hidden": 16, "hidden_step": 4})
    old = [plain.sample(random.Random(s)) for s in range(20)]
    assert all(s.hidden is None for s in old)
    assert plain.smallest().hidden is None and plain.largest().hidden is None
    assert wide.largest().hidden is None and wide.smallest().hidden == 16
    assert wide.hidden_widths() == [16, 20, 24, 28, 32]
    new = [wide.sample(random.Random(s)) for s in range(20)]
    assert {s.hidden for s in new} <= {16, 20, 24, 28, None} and any(s.hidden for s in new)
    # the other draws are unchanged: the hidden width is drawn last
    assert [(s.layers, s.heads, s.neurons) for s in new] == [(s.layers, s.heads, s.neurons) for s in old]
    model = tiny.tiny_bert()
    assert subnet_space(model, ElasticSettings()).min_hidden == 16  # default: half the width
    assert not subnet_space(model, ElasticSettings(min_hidden=1.0)).elastic_hidden
    assert subnet_space(tiny.tiny_model("modernbert"), ElasticSettings()).hidden is None  # not elastic there
    with pytest.raises(ValueError):
        Subnet((0,), (1,), (1,), hidden=0)


def test_hidden_importance_and_teacher_targets_in_the_student_order():
    model = tiny.tiny_bert(layers=2)
    ctx = tiny.context(model)
    scores = hidden_importance(model, ctx, 2)
    assert scores.shape == (32,) and bool((scores >= 0).all()) and float(scores.sum()) > 0
    assert hidden_importance(model, MethodContext(adapter=ctx.adapter), 0).shape == (32,)  # magnitudes
    student = copy.deepcopy(model)
    reorder_hidden(student, get_adapter(student), scores)
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    with torch.no_grad():
        t = model(**inputs, output_hidden_states=True).hidden_states
        s = student(**inputs, output_hidden_states=True).hidden_states
    aligned = in_student_order(student, t)
    assert aligned is not None and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(aligned, s))
    assert in_student_order(model, t) is t


def test_the_cache_key_changes_with_an_elastic_hidden_width():
    data = {"batch_size": 4}
    old = elastic_key("t", "sst2", data, ElasticSettings(min_hidden=1.0))
    assert "min_hidden" not in ElasticSettings(min_hidden=1.0).key_dict()  # the student of before keeps its key
    assert elastic_key("t", "sst2", data, ElasticSettings()) != old
    assert elastic_key("t", "sst2", data, ElasticSettings(min_hidden=0.75)) != elastic_key(
        "t", "sst2", data, ElasticSettings())


def _fake_data():
    task = SimpleNamespace(name="sst2", num_labels=2, is_regression=False)
    return SimpleNamespace(task=task, train=list(range(16)), batch_size=4, max_seq_len=12,
                           train_batches=lambda n, seed: tiny.batches(n, seed))


def test_elastic_training_reorders_and_trains_the_hidden_width():
    teacher = tiny.tiny_bert(layers=2)
    settings = ElasticSettings(steps=2, min_layers=1, min_heads=1, min_ffn=8, ffn_step=8, min_hidden=0.5,
                               hidden_step=0.25, importance_batches=1, random_subnets=1)
    student, info = train_elastic(teacher, _fake_data(), settings)
    assert sorted(info["orders"]["hidden"][0]) == list(range(32))
    assert info["space"]["min_hidden"] == 16 and info["space"]["hidden"] == 32
    emb = student.bert.embeddings.word_embeddings.weight
    assert not torch.equal(emb, teacher.bert.embeddings.word_embeddings.weight)
    _, info_off = train_elastic(teacher, _fake_data(), ElasticSettings(steps=1, min_hidden=1.0, importance_batches=0))
    assert "hidden" not in info_off["orders"]


@pytest.fixture(scope="module")
def student_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("hidden-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOSQUEEZE_CACHE", str(root))
        teacher = tiny.tiny_bert(layers=4)
        made = get_elastic_student(teacher, "hidden-test", _fake_data(),
                                   ElasticSettings(steps=2, min_layers=1, min_heads=1, min_ffn=8, ffn_step=8,
                                                   min_hidden=0.5, importance_batches=1))
    return root, teacher, made


def test_elastic_method_slices_hidden_keep_records_replays_and_reloads(student_cache, tmp_path, monkeypatch):
    from autosqueeze.artifact import save_compressed
    from autosqueeze.builder import build
    from autosqueeze.elastic import student_state

    root, teacher, made = student_cache
    monkeypatch.setenv("AUTOSQUEEZE_CACHE", str(root))
    recipe = Recipe(steps=[Step("elastic", {"student": made.key, "layers": 0.5, "heads_keep": 2, "ffn_keep": 0.5,
                                            "hidden_keep": 0.75})])
    built = build(recipe, teacher, tiny.context(teacher))
    model, decisions = built.model, built.decisions
    adapter = get_adapter(model)
    assert decisions[0]["hidden"] == 24 and model.config.hidden_size == 24
    b = batch(seed=2)
    # the same sub-network of the cached student, run with shared weights
    full = copy.deepcopy(teacher)
    full.load_state_dict(student_state(made.key))
    with elastic_mode(full, adapter), activate(full, adapter, Subnet((0, 2), (2, 2), (32, 32), hidden=24)):
        assert torch.allclose(logits(model, b), logits(full, b), atol=1e-5)
    # replay (no student) rebuilds the structure from the decisions
    replayed, _ = apply_recipe(recipe, tiny.tiny_bert(layers=4, seed=5), MethodContext(adapter=adapter, replay=True),
                               decisions)
    replayed.load_state_dict(model.state_dict())
    assert torch.allclose(logits(replayed, b), logits(model, b), atol=1e-6)
    # saved like the others, loaded back through autosqueeze.load: identical logits
    out = save_compressed(built, recipe, None, teacher.config, tmp_path / "m", {"recorded": {}})
    loaded = autosqueeze.load(out)
    assert loaded.config.hidden_size == 24
    assert torch.allclose(logits(loaded, b), logits(model, b), atol=1e-6)  # (it loads with SDPA attention)


def test_a_hidden_sliced_model_runs_in_onnx_runtime(student_cache, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from autosqueeze.builder import build
    from autosqueeze.measure import HardwareProfile
    from autosqueeze.runtimes import export_for_deployment
    from autosqueeze.runtimes.ort import OrtClassifier, make_session

    root, teacher, made = student_cache
    monkeypatch.setenv("AUTOSQUEEZE_CACHE", str(root))
    recipe = Recipe(steps=[Step("elastic", {"student": made.key, "layers": 3, "heads_keep": [1, 2, 3],
                                            "ffn_keep": 16, "hidden_keep": 20})])
    built = build(recipe, teacher, tiny.context(teacher))
    path = tmp_path / "model.onnx"
    export_for_deployment(built.model, path, float_model=built.float_model, recipe=recipe, exporter="torchscript")
    b = batch(batch_size=5, seq=9, seed=4)  # not the traced shape; one padded row
    ref = logits(built.model, b)
    out = OrtClassifier(make_session(str(path), HardwareProfile(threads=1)))(
        **{k: v for k, v in b.items() if k != "labels"}).logits
    assert float((out - ref).abs().max()) <= 1e-4 * float(ref.abs().max()) + 1e-6


def test_hidden_keep_is_validated_and_refused_in_one_line_where_the_family_cannot_slice_it(tmp_path, monkeypatch):
    spec = get_method("elastic")
    bert = tiny.tiny_bert()
    assert spec.check_shapes(bert, spec.make_config({"hidden_keep": 16})) is None
    assert spec.check_shapes(bert, spec.make_config({"hidden_keep": 0.5})) is None
    why = spec.check_shapes(bert, spec.make_config({"hidden_keep": 33}))
    assert why is not None and "hidden_keep" in why and "32" in why
    # DeBERTa with separate relative-position projections (share_att_key: false) cannot slice it
    deberta = tiny.tiny_model("deberta-v2")
    deberta.config.share_att_key = False
    separate = type(deberta)(deberta.config).eval()
    assert spec.check_shapes(separate, spec.make_config({"hidden_keep": 1.0})) is None  # full width: nothing to cut
    why = spec.check_shapes(separate, spec.make_config({"hidden_keep": 0.5}))
    assert why is not None and "deberta-v2" in why and "\n" not in why
    # ELECTRA-small style (embeddings projected to the hidden size): refused when applied, in one line
    cfg = tiny.tiny_model("electra").config
    cfg.embedding_size = 16
    projected = type(tiny.tiny_model("electra"))(cfg).eval()
    ctx = MethodContext(adapter=get_adapter(projected), probe=True)
    with pytest.raises(MethodError, match="not supported for electra models whose embeddings are projected") as err:
        apply_recipe(Recipe(steps=[Step("elastic", {"hidden_keep": 0.5})]), projected, ctx)
    assert "\n" not in str(err.value)
    apply_recipe(Recipe(steps=[Step("elastic", {"hidden_keep": 1.0, "heads_keep": 2})]), projected, ctx)  # full: fine
    modernbert = tiny.tiny_model("modernbert")
    why = spec.check_shapes(modernbert, spec.make_config({"hidden_keep": 0.5}))
    assert why is not None and "modernbert" in why and "\n" not in why
    for bad in ({"hidden_keep": 0}, {"hidden_keep": 1.5}, {"hidden_keep": [16, 16]}, {"hidden_keep": "wide"}):
        with pytest.raises(MethodError):
            Step("elastic", bad).config()


def test_a_space_searches_hidden_keep_as_a_count_of_the_models_width(tmp_path):
    import optuna
    import yaml

    from autosqueeze.search.space import SpaceError, load_space
    from autosqueeze.search.validate import validate_for_model

    def space(hidden_keep):
        path = tmp_path / "space.yaml"
        path.write_text(yaml.safe_dump({"steps": [{"method": "elastic", "params": {
            "layers": {"type": "int", "low": 1, "high": 2}, "hidden_keep": hidden_keep}}]}))
        return load_space(path)

    teacher = tiny.tiny_bert(layers=2, hidden=32)
    resolved = space({"type": "int", "low": 0.5, "high": 1.0, "of": "hidden"}).for_model(teacher)
    assert validate_for_model(resolved, teacher, lambda: tiny.context(teacher, probe=True)) >= 1
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    widths = {resolved.suggest(study.ask()).steps[0].params["hidden_keep"] for _ in range(20)}
    assert widths <= set(range(16, 33)) and len(widths) > 3 and all(isinstance(w, int) for w in widths)
    with pytest.raises(SpaceError, match="hidden_keep"):  # more than the model has: refused before any trial
        validate_for_model(space({"type": "int", "low": 16, "high": 40}).for_model(teacher), teacher,
                           lambda: tiny.context(teacher, probe=True))


def test_hidden_state_distillation_compares_the_teachers_own_dimensions():
    """A student whose hidden dimensions were reordered (and then cut) is distilled against the
    teacher's dimensions it holds (``ctx.kept_hidden``): at full width the reordered copy of the
    teacher matches it exactly, which the teacher's own order would not."""
    from autosqueeze.methods.distill import DistillConfig, distill_loss

    teacher = _student_like("bert")
    student = copy.deepcopy(teacher)
    adapter = get_adapter(student)
    order = reorder_hidden(student, adapter, torch.rand(32, generator=torch.Generator().manual_seed(4)))
    config = DistillConfig(alpha_logits=0.0, alpha_hidden=1.0)
    b = {**batch(), "labels": torch.zeros(batch()["input_ids"].shape[0], dtype=torch.long)}
    layers = list(range(len(adapter.layers(teacher))))
    assert float(distill_loss(config, teacher, layers, order)(student, b).detach()) < 1e-8
    assert float(distill_loss(config, teacher, layers)(student, b).detach()) > 1e-3
    adapter.keep_hidden(student, list(range(24)))  # the first 24 (most important) dimensions
    assert float(distill_loss(config, teacher, layers, order[:24])(student, b).detach()) >= 0.0  # shapes agree


def test_finalizing_a_hidden_sliced_point_distills_its_hidden_states(student_cache, monkeypatch):
    """The final fidelity's recipe (elastic slice, then distillation with hidden states) runs on a
    narrower hidden width: the elastic step tells distillation which teacher dimensions it kept."""
    from autosqueeze.builder import build

    root, teacher, made = student_cache
    monkeypatch.setenv("AUTOSQUEEZE_CACHE", str(root))
    recipe = Recipe(steps=[Step("elastic", {"student": made.key, "layers": 2, "heads_keep": 2, "ffn_keep": 0.5,
                                            "hidden_keep": 0.5}),
                           Step("distill", {"steps": 2, "alpha_logits": 1.0, "alpha_hidden": 1.0})])
    ctx = tiny.context(teacher)
    built = build(recipe, teacher, ctx)
    assert built.model.config.hidden_size == 16
    assert ctx.kept_hidden is not None and len(ctx.kept_hidden) == 16
    assert ctx.kept_hidden == made.info["orders"]["hidden"][0][:16]


def test_a_narrower_hidden_width_is_refused_on_a_student_trained_at_full_width(tmp_path, monkeypatch):
    """A student trained without an elastic hidden width has its hidden dimensions in no
    importance order: slicing the first k of them would be arbitrary, so it is refused."""
    from autosqueeze.builder import build

    monkeypatch.setenv("AUTOSQUEEZE_CACHE", str(tmp_path))
    teacher = tiny.tiny_bert(layers=2)
    made = get_elastic_student(teacher, "full-width", _fake_data(),
                               ElasticSettings(steps=1, min_hidden=1.0, importance_batches=0))
    recipe = Recipe(steps=[Step("elastic", {"student": made.key, "layers": 2, "hidden_keep": 0.5})])
    with pytest.raises(MethodError, match="full hidden width only"):
        build(recipe, teacher, tiny.context(teacher))
    full = Recipe(steps=[Step("elastic", {"student": made.key, "layers": 2, "hidden_keep": 1.0})])
    assert build(full, teacher, tiny.context(teacher)).model.config.hidden_size == 32
