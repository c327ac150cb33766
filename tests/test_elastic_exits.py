"""Exit heads inside the elastic student (``elastic.exits``): trained with the sandwich rule, stored
beside the student, sliced with each sub-network (hidden width included) and installed by
``early_exit`` with ``training: elastic`` (no training per trial); the saved model loads back with
its exits, ONNX export refuses in one line, and an elastic study whose trials pick the exit rule and
threshold exports a recipe that ``apply`` and ``autosqueeze.load`` reproduce exactly."""
from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import optuna
import pytest
import torch
import yaml

import autosqueeze
from autosqueeze.arch import get_adapter
from autosqueeze.builder import build, replay
from autosqueeze.cli import main
from autosqueeze.elastic import ElasticSettings, Subnet, activate, elastic_mode, get_elastic_student, train_elastic
from autosqueeze.elastic.store import EXITS, WEIGHTS, elastic_key, student_exit_state, student_state
from autosqueeze.elastic.train import EXITS_ATTR, exits_loss, make_targets
from autosqueeze.measure.latency import needs_real_inputs
from autosqueeze.methods import MethodError, get_method
from autosqueeze.methods.early_exit import ATTR
from autosqueeze.recipe import Recipe, Step
from tests import tiny
from tests.test_elastic_study import FAST_LATENCY
from tests.tiny import batch, logits

SETTINGS = dict(steps=3, min_layers=1, min_heads=1, min_ffn=8, ffn_step=8, importance_batches=1, random_subnets=1)


def _fake_data():
    task = SimpleNamespace(name="sst2", num_labels=2, is_regression=False)
    return SimpleNamespace(task=task, train=list(range(16)), batch_size=4, max_seq_len=12,
                           train_batches=lambda n, seed: tiny.batches(n, seed))


def _inputs(b):
    return {k: v for k, v in b.items() if k != "labels"}


def test_training_with_exits_trains_a_head_per_layer_but_the_last():
    teacher = tiny.tiny_bert(layers=3)
    student, info = train_elastic(teacher, _fake_data(), ElasticSettings(**SETTINGS, exits=True))
    heads = getattr(student, EXITS_ATTR)
    assert len(heads) == 2 and info["exits"] == {"heads": 2, "activation": "tanh"}
    pooler = student.bert.pooler.dense.weight  # every head started as a copy of it; each learnt its own layer
    assert all(not torch.equal(h.dense.weight, pooler) for h in heads)
    assert not torch.equal(heads[0].out.weight, heads[1].out.weight)
    plain, _ = train_elastic(teacher, _fake_data(), ElasticSettings(**SETTINGS))
    assert not hasattr(plain, EXITS_ATTR)
    # the exits' distillation reaches the backbone (joint training), so the student differs
    assert not torch.equal(plain.bert.encoder.layer[0].attention.self.query.weight,
                           student.bert.encoder.layer[0].attention.self.query.weight)


def test_a_subnetworks_exits_are_its_kept_layers_heads_weighted_by_depth():
    teacher = tiny.tiny_bert(layers=4)
    student = copy.deepcopy(teacher)
    adapter = get_adapter(student)
    from autosqueeze.elastic.train import add_exit_heads

    heads = add_exit_heads(student, adapter, _fake_data())
    assert len(heads) == 3
    settings = ElasticSettings(exits=True, exit_weight=2.0)
    b = batch()
    with torch.no_grad():
        targets = make_targets(teacher(**_inputs(b)).logits, None, b, settings)
    subnet = Subnet((0, 2, 3), (2, 2, 2), (32, 32, 32), hidden=24)
    with elastic_mode(student, adapter), activate(student, adapter, subnet):
        out = student(**_inputs(b), output_hidden_states=True)
        assert out.hidden_states[1].shape[-1] == 24
        loss = exits_loss(heads, out.hidden_states, subnet, targets, settings)
        from autosqueeze.elastic.train import logits_loss
        want = 2.0 * sum((j + 1) / 3 * logits_loss(heads[layer].prefix_forward(out.hidden_states[j + 1]).float(),
                                                     targets, settings) for j, layer in enumerate((0, 2)))
    assert torch.allclose(loss, want)
    loss.backward()
    assert heads[0].dense.weight.grad is not None and heads[2].dense.weight.grad is not None
    assert heads[1].dense.weight.grad is None  # layer 1 is not kept; layer 3 is the last: the classifier's
    assert heads[0].dense.weight.grad[:, 24:].abs().sum() == 0  # the narrower width reads the first 24 columns
    assert student.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0  # into the backbone


@pytest.mark.parametrize("arch", ["bert", "roberta", "electra", "distilbert", "mpnet", "deberta-v2"])
def test_a_sliced_exit_equals_the_trained_one_on_the_activated_subnetwork_in_every_family(arch):
    """What training computes (head on the activated sub-network's layer output, first k hidden columns)
    is what the sliced model's early-exit forward computes (layer by layer, sliced head)."""
    from autosqueeze.elastic import slice_subnet
    from autosqueeze.elastic.reorder import reorder, reorder_hidden
    from autosqueeze.elastic.subnet import slice_exit_heads
    from autosqueeze.elastic.train import add_exit_heads
    from autosqueeze.methods import MethodContext
    from autosqueeze.methods.early_exit import EarlyExitConfig

    student = tiny.tiny_model(arch, layers=3)
    adapter = get_adapter(student)
    g = torch.Generator().manual_seed(1)
    reorder_hidden(student, adapter, torch.rand(32, generator=g))  # as a student is: hidden, heads, neurons ordered
    reorder(student, adapter, [torch.rand(4, generator=g) for _ in range(3)], [torch.rand(64, generator=g)
                                                                              for _ in range(3)])
    heads = add_exit_heads(student, adapter, _fake_data())  # copies of the reordered classifier
    delattr(student, EXITS_ATTR)
    with torch.no_grad():
        for p in heads.parameters():  # heads unlike the classifier they were copied from, and unlike each other
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    state = {f"heads.{k}": v for k, v in heads.state_dict().items()}
    subnet = Subnet((0, 2), (2, 2), (32, 32), hidden=24)
    b = batch(batch_size=1, seed=4)
    full = copy.deepcopy(student)
    with torch.inference_mode(), elastic_mode(full, adapter), activate(full, adapter, subnet):
        want = heads[0].prefix_forward(full(**_inputs(b), output_hidden_states=True).hidden_states[1])
    sliced = slice_subnet(copy.deepcopy(student), get_adapter(student), subnet)
    ctx = MethodContext(adapter=get_adapter(sliced), exit_heads=slice_exit_heads(state, subnet))
    model = get_method("early_exit").apply(sliced, EarlyExitConfig(training="elastic", threshold=1.0), ctx)
    assert torch.allclose(logits(model, b), want, atol=1e-5)
    assert model.autosqueeze_exit_stats()["histogram"] == [1, 0]


def test_settings_and_cache_keys():
    data = {"batch_size": 4}
    assert "exits" not in ElasticSettings().key_dict()  # students cached before exits existed keep their keys
    assert "exit_weight" not in ElasticSettings(exit_weight=3.0).key_dict()  # no effect without exits
    keys = {elastic_key("t", "sst2", data, s) for s in
            (ElasticSettings(), ElasticSettings(exits=True), ElasticSettings(exits=True, exit_weight=0.5))}
    assert len(keys) == 3
    for bad in ({"exits": 1}, {"exit_weight": 0}, {"exit_weight": True}):
        with pytest.raises(ValueError, match="elastic.exit"):
            ElasticSettings(**bad)
    regression = SimpleNamespace(**{**vars(_fake_data()), "task": SimpleNamespace(name="stsb", num_labels=1,
                                                                                  is_regression=True)})
    with pytest.raises(Exception, match="classification"):
        train_elastic(tiny.tiny_bert(layers=2), regression, ElasticSettings(**SETTINGS, exits=True))


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    root = tmp_path_factory.mktemp("exits-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOSQUEEZE_CACHE", str(root))
        teacher = tiny.tiny_bert(layers=4)
        with_exits = get_elastic_student(teacher, "exits-test", _fake_data(),
                                         ElasticSettings(**SETTINGS, min_hidden=0.5, exits=True))
        without = get_elastic_student(teacher, "exits-test", _fake_data(), ElasticSettings(**SETTINGS, min_hidden=0.5))
    return SimpleNamespace(root=root, teacher=teacher, key=with_exits.key, plain=without.key,
                           path=with_exits.path)


def _recipe(key: str, exit_params: dict | None, **elastic) -> Recipe:
    steps = [Step("elastic", {"student": key, "layers": 3, "heads_keep": 2, "ffn_keep": 0.5, "hidden_keep": 0.75,
                              **elastic})]
    if exit_params is not None:
        steps.append(Step("early_exit", {"training": "elastic", **exit_params}))
    return Recipe(steps=steps)


def test_the_store_keeps_the_heads_apart_and_the_elastic_step_slices_them(students, monkeypatch):
    monkeypatch.setenv("AUTOSQUEEZE_CACHE", str(students.root))
    assert (students.path / EXITS).is_file() and (students.path / WEIGHTS).is_file()
    copy.deepcopy(students.teacher).load_state_dict(student_state(students.key), strict=True)  # the teacher's shape
    state = student_exit_state(students.key)
    assert state is not None and sorted({k.split(".")[1] for k in state}) == ["0", "1", "2"]
    assert student_exit_state(students.plain) is None
    teacher = students.teacher
    # threshold 1: every batch leaves at the first exit; its logits are the student's head of layer 0 on the
    # activated sub-network (shared weights, 24 of 32 hidden dimensions): slicing is exact
    built = build(_recipe(students.key, {"threshold": 1.0}), teacher, tiny.context(teacher))
    model = built.model
    ee = getattr(model, ATTR)
    assert len(ee.heads) == 2 and ee.heads[0].dense.in_features == 24 and needs_real_inputs(model)
    full = copy.deepcopy(teacher)
    full.load_state_dict(student_state(students.key))
    from autosqueeze.methods.early_exit import new_exit_heads

    heads = torch.nn.ModuleList(new_exit_heads(full, get_adapter(full), 3))
    heads.load_state_dict({k[len("heads."):]: v for k, v in state.items()})
    adapter = get_adapter(full)
    subnet = Subnet((0, 1, 3), (2, 2, 2), (32, 32, 32), hidden=24)  # layers 3 of 4, spread evenly
    b = batch(batch_size=1, seed=3)
    with torch.inference_mode(), elastic_mode(full, adapter), activate(full, adapter, subnet):
        hidden = full(**_inputs(b), output_hidden_states=True).hidden_states
        want = heads[0].prefix_forward(hidden[1])
    assert torch.allclose(logits(model, b), want, atol=1e-5)
    assert model.autosqueeze_exit_stats()["histogram"] == [1, 0, 0]
    # no early_exit step: exactly the elastic slice of before (no heads, no data-dependent cost)
    plain = build(_recipe(students.key, None), teacher, tiny.context(teacher)).model
    assert not hasattr(plain, ATTR) and not needs_real_inputs(plain)
    with torch.inference_mode(), elastic_mode(full, adapter), activate(full, adapter, subnet):
        assert torch.allclose(logits(plain, b), logits(full, b), atol=1e-5)
    # threshold 0: the exits never fire, the final classifier answers (same as the plain slice)
    never = build(_recipe(students.key, {"threshold": 0.0}), teacher, tiny.context(teacher)).model
    assert torch.allclose(logits(never, b), logits(plain, b), atol=1e-6)
    # a one-layer sub-network has no layer to exit after: the step leaves it as it is
    one = build(_recipe(students.key, {"rule": "patience", "patience": 1}, layers=1), teacher,
                tiny.context(teacher)).model
    assert not hasattr(one, ATTR)


def test_a_student_without_exits_or_a_step_between_is_refused_in_one_line(students, monkeypatch):
    monkeypatch.setenv("AUTOSQUEEZE_CACHE", str(students.root))
    teacher = students.teacher
    with pytest.raises(MethodError, match="elastic.exits: true") as err:
        build(_recipe(students.plain, {"threshold": 0.5}), teacher, tiny.context(teacher))
    assert "\n" not in str(err.value)
    between = Recipe(steps=[*_recipe(students.key, None).steps, Step("drop_layers", {"keep": 2}),
                            Step("early_exit", {"training": "elastic"})])
    with pytest.raises(MethodError, match="exit head"):
        build(between, teacher, tiny.context(teacher))
    assert get_method("early_exit").make_config({"training": "elastic", "steps": 50}).steps == 0  # trains nothing
    from autosqueeze.search.objective import is_data_free

    assert get_method("early_exit").is_data_free({"training": "elastic"})  # the probe build is the final model
    assert not get_method("early_exit").is_data_free({"training": "joint"})
    assert is_data_free(_recipe(students.key, {"threshold": 0.5}))
    assert not is_data_free(_recipe(students.key, {"training": "frozen"}))


@pytest.mark.parametrize("exit_params", [{"threshold": 0.9}, {"rule": "patience", "patience": 1}])
def test_saved_and_loaded_back_with_its_exits_and_onnx_refuses_in_one_line(students, monkeypatch, tmp_path,
                                                                          exit_params):
    from autosqueeze.artifact import save_compressed
    from autosqueeze.runtimes import OnnxUnsupported, export_for_deployment, step_refusal

    monkeypatch.setenv("AUTOSQUEEZE_CACHE", str(students.root))
    teacher = students.teacher
    recipe = _recipe(students.key, exit_params)
    recipe.steps.append(Step("quantize_dynamic", {}))
    built = build(recipe, teacher, tiny.context(teacher))
    out = save_compressed(built, recipe, None, teacher.config, tmp_path / "m", {"recorded": {}})
    loaded = autosqueeze.load(out)
    replayed = replay(recipe, copy.deepcopy(teacher), built.decisions, part="float")
    assert hasattr(replayed, ATTR) and needs_real_inputs(loaded)
    for seed in range(6):  # batch 1, as deployed: each input exits where the built model's does
        b = batch(batch_size=1, seed=seed)
        assert torch.allclose(logits(loaded, b), logits(built.model, b), atol=1e-6)  # (it loads with SDPA)
    assert loaded.autosqueeze_exit_stats()["histogram"] == built.model.autosqueeze_exit_stats()["histogram"]
    with pytest.raises(OnnxUnsupported, match="early exit") as err:
        export_for_deployment(built.model, tmp_path / "m.onnx", float_model=built.float_model, recipe=recipe)
    assert "\n" not in str(err.value)
    assert step_refusal("early_exit", recipe.steps[1].params, "onnxruntime")  # never offered ONNX in a search


@pytest.mark.parametrize("step", [Step("quantize_weights", {"bits": 4, "group_size": 8}),
                                  Step("cast_precision", {"dtype": "bf16", "parts": ["attention", "ffn"]}),
                                  Step("quantize_embeddings", {"bits": 4})])
def test_exits_compose_with_the_joint_spaces_no_training_steps(students, monkeypatch, tmp_path, step):
    from autosqueeze.artifact import save_compressed

    monkeypatch.setenv("AUTOSQUEEZE_CACHE", str(students.root))
    teacher = students.teacher
    recipe = _recipe(students.key, {"threshold": 0.9})
    recipe.steps.append(step)
    built = build(recipe, teacher, tiny.context(teacher))
    loaded = autosqueeze.load(save_compressed(built, recipe, None, teacher.config, tmp_path / "m", {"recorded": {}}))
    assert needs_real_inputs(built.model) and needs_real_inputs(loaded)
    for seed in range(4):
        b = batch(batch_size=1, seed=seed)
        assert torch.allclose(logits(loaded, b), logits(built.model, b), atol=1e-5)
    assert loaded.autosqueeze_exit_stats()["histogram"] == built.model.autosqueeze_exit_stats()["histogram"]


def write_exit_study(folder, model, trials: int = 3):
    """An elastic study whose trials pick the sub-network's widths and the exit rule and threshold."""
    (folder / "space.yaml").write_text(yaml.safe_dump({"steps": [
        {"method": "elastic", "params": {"layers": 2, "heads_keep": {"type": "int", "low": 2, "high": 4},
                                         "ffn_keep": {"type": "float", "low": 0.5, "high": 1.0, "step": 0.5}}},
        {"method": "early_exit", "params": {"training": "elastic",
                                            "rule": {"type": "categorical", "choices": ["entropy", "patience"]},
                                            "threshold": {"type": "categorical", "choices": [0.5, 1.0]},
                                            "patience": 1}},
    ]}))
    study = {"name": "ex", "task": "sst2", "model": str(model), "search_space": "space.yaml", "trials": trials,
             "sampler": "random", "teacher": {"steps": 3, "batch_size": 4, "max_seq_len": 16},
             "recovery": {"batch_size": 4, "max_seq_len": 16},
             "elastic": {"steps": 3, "min_layers": 1, "min_heads": 1, "min_ffn": 16, "ffn_step": 16,
                         "importance_batches": 1, "exits": True},
             "hardware": {"seq_len": 16}, "latency": FAST_LATENCY}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_an_elastic_study_picks_exit_thresholds_and_apply_and_load_reproduce_them(
        tiny_model_dir, glue_dir, tmp_path, isolated_cache, monkeypatch):
    import autosqueeze.methods.early_exit as early_exit
    from autosqueeze.data import load_task_data
    from autosqueeze.measure.metrics import evaluate_deployed
    from autosqueeze.tasks import get_task

    seen = []  # every input an exit model ran on in the search (timing and evaluation): one dev sentence each
    forward = early_exit._early_exit_forward

    def spy(self, input_ids=None, attention_mask=None, **kwargs):
        seen.append(tuple(input_ids[0][attention_mask[0].bool()].tolist()) if input_ids.shape[0] == 1 else None)
        return forward(self, input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    monkeypatch.setattr(early_exit, "_early_exit_forward", spy)
    loads = []  # (probe?) of each installation of the student's heads: a trial's probe is its final model
    load_heads = early_exit._load_elastic_heads

    def count(heads, ctx):
        loads.append(ctx.probe)
        return load_heads(heads, ctx)

    monkeypatch.setattr(early_exit, "_load_elastic_heads", count)
    study_file = write_exit_study(tmp_path, tiny_model_dir)
    data = ["--data-dir", str(glue_dir)]
    assert main(["search", str(study_file), *data]) == 0
    assert loads and all(loads)  # one build per trial (the probe, exits on), never a second one
    settings = SimpleNamespace(train_subset=None, seed=0, max_seq_len=16, batch_size=4)
    from transformers import AutoTokenizer

    task_data, extra = load_task_data(get_task("sst2"), AutoTokenizer.from_pretrained(tiny_model_dir), str(glue_dir),
                                      settings, with_train=False)
    sentences = {tuple(b["input_ids"][0][b["attention_mask"][0].bool()].tolist())
                 for b in task_data.eval_batches(batch_size=1)}
    assert len(seen) > len(sentences) and set(seen) <= sentences  # timed and evaluated at batch 1 on real sentences
    students = list((isolated_cache / "elastic").iterdir())
    assert len(students) == 1 and (students[0] / EXITS).is_file()
    study = optuna.load_study(study_name="ex", storage=f"sqlite:///{tmp_path / 'ex.db'}")
    done = [t for t in study.trials if t.user_attrs.get("status") == "complete"]
    assert len(done) >= 3  # (a repeated recipe is recorded again, not counted)
    for t in done:  # every trial slices the student and installs its exits, timed and evaluated at batch 1
        steps = t.user_attrs["recipe"]["steps"]
        assert [s["method"] for s in steps] == ["elastic", "early_exit"]
        assert steps[1]["params"]["threshold"] in (0.5, 1.0) and steps[1]["params"]["training"] == "elastic"
        assert t.user_attrs["exit_stats"]["calls"] > 0
    chosen = min(done, key=lambda t: t.user_attrs["exit_stats"]["mean_exit_layer"])
    recipe_path = tmp_path / "r.yaml"
    assert main(["export", str(study_file), "--trial", str(chosen.number), "-o", str(recipe_path)]) == 0
    recorded = yaml.safe_load(recipe_path.read_text())["measured"]["metric"]
    assert recorded == chosen.user_attrs["metric"]

    out = tmp_path / "compressed"
    assert main(["apply", str(recipe_path), "-o", str(out), *data]) == 0  # ONNX asked: refused in one line
    manifest = json.loads((out / "autosqueeze.json").read_text())
    assert manifest["measured"]["reproduced"]["metric"] == recorded
    assert manifest["onnx"]["file"] is None and "early exit" in manifest["onnx"]["reason"]
    model = autosqueeze.load(out)
    assert needs_real_inputs(model)
    metrics, stats = evaluate_deployed(model, task_data, extra, 64, 1)
    assert metrics[get_task("sst2").main_metric] == recorded
    assert stats == chosen.user_attrs["exit_stats"]


def test_a_space_with_student_exits_needs_a_student_trained_with_them(tiny_model_dir, tmp_path, isolated_cache,
                                                                      capsys):
    study_file = write_exit_study(tmp_path, tiny_model_dir)
    study = yaml.safe_load(study_file.read_text())
    study["elastic"]["exits"] = False
    study_file.write_text(yaml.safe_dump(study))
    assert main(["search", str(study_file), "--data-dir", str(tmp_path / "none")]) == 2  # before the teacher
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "exits: true" in err[0] and not (isolated_cache / "teachers").exists()


def test_exits_left_out_follow_the_space(tiny_model_dir, tmp_path):
    """``elastic.exits`` left out of the study file: on for a space that installs the student's exit
    heads (the built-in joint_elastic), off (and the student's key unchanged) for one that does not;
    ``exits: false`` with such a space is refused in one line."""
    import dataclasses

    from autosqueeze.builtin_spaces import builtin_space
    from autosqueeze.elastic.train import ElasticSettings
    from autosqueeze.search.space import load_space
    from autosqueeze.search.study import settle_for_space
    from autosqueeze.study_config import ConfigError, load_study_config

    config = load_study_config(write_exit_study(tmp_path, tiny_model_dir))
    config = dataclasses.replace(config, elastic=dataclasses.replace(config.elastic, exits=None))
    joint, plain = load_space(builtin_space("joint_elastic")), load_space(builtin_space("elastic"))
    assert settle_for_space(joint, config).elastic.exits is True
    left = settle_for_space(plain, config)
    assert left.elastic.exits is None
    assert left.elastic.key_dict() == dataclasses.replace(left.elastic, exits=False).key_dict()
    assert ElasticSettings().key_dict() == ElasticSettings(exits=False).key_dict() != \
        ElasticSettings(exits=True).key_dict()
    with pytest.raises(ConfigError, match="leave exits out"):
        settle_for_space(joint, dataclasses.replace(config, elastic=dataclasses.replace(config.elastic,
                                                                                            exits=False)))
