"""The built-in ``joint_elastic`` space (issue 24): the elastic slice plus every step that needs no
training (vocabulary pruning, dynamic / static int8, int4 weight-only, bf16, int8 / int4 embedding
tables) and the runtime, each offered only where it can run; ``finalize`` keeps those choices.
The end-to-end study is in tests/test_joint_elastic_study.py."""
from __future__ import annotations

import itertools
from pathlib import Path

import optuna
import pytest
import torch

from autosqueeze.builder import build, replay
from autosqueeze.builtin_spaces import builtin_space, builtin_space_names
from autosqueeze.methods import Stage, get_method
from autosqueeze.recipe import Recipe, Step
from autosqueeze.search.finalize import final_recipe, pick_candidates, search_choices
from autosqueeze.search.machine import drop_slow_steps, probe_machine
from autosqueeze.search.objective import is_data_free
from autosqueeze.search.space import load_space, param_choices, suggest_runtime
from autosqueeze.search.trial_record import TrialRecord
from autosqueeze.study_config import FinalizeSettings
from tests import tiny

BOTH = ("torch", "onnxruntime")
NO_TRAINING = {"prune_vocab", "quantize_dynamic", "quantize_static", "quantize_weights", "cast_precision",
               "quantize_embeddings", "early_exit"}  # early_exit with training: elastic (the student's heads)


def joint():
    return load_space(builtin_space("joint_elastic"))


def test_joint_elastic_is_a_builtin_space_with_every_no_training_step_in_stage_order():
    assert "joint_elastic" in builtin_space_names()
    text = builtin_space("joint_elastic").read_text()
    assert text.startswith("# Joint elastic space")  # the header explains it
    space = joint()
    methods = [s.method for s in space.steps]
    assert methods[0] == "elastic" and set(methods[1:]) == NO_TRAINING
    assert set(space.step("elastic").dists) == {"layers", "heads_keep", "ffn_keep", "hidden_keep"}
    stages = [get_method(m).stage for m in methods]
    assert stages == sorted(stages) and stages[0] == Stage.DEPTH
    assert not any(get_method(m).trains for m in methods)  # a trial trains nothing
    exits = space.step("early_exit")  # the student's own exit heads: data-free, no training in the trial
    assert exits.fixed["training"] == "elastic" and get_method("early_exit").is_data_free(exits.fixed)
    assert exits.excludes == ("quantize_static",)  # PyTorch only; static int8 is ONNX Runtime only
    precision = {m.method for m in space.groups()["precision"]}
    assert precision == {"quantize_dynamic", "quantize_static", "quantize_weights", "cast_precision"}
    assert all(s.optional for s in space.steps[1:])
    assert space.step("quantize_weights").fixed["bits"] == 4
    assert space.step("quantize_embeddings").dists["bits"].choices == (8, 4)
    # the existing elastic space is unchanged: structure + dynamic int8 / bf16
    assert [s.method for s in load_space(builtin_space("elastic")).steps] == \
        ["elastic", "quantize_dynamic", "cast_precision"]


def test_one_runtime_drops_what_it_cannot_deploy_from_the_registry_and_the_params():
    space = joint()
    torch_only = space.for_runtime("torch")
    assert "quantize_static" not in [s.method for s in torch_only.steps]  # registry: onnxruntime only
    assert {m.method for m in torch_only.groups()["precision"]} == \
        {"quantize_dynamic", "quantize_weights", "cast_precision"}
    ort_only = space.for_runtime("onnxruntime")
    assert "cast_precision" not in [s.method for s in ort_only.steps]  # bf16: no ONNX Runtime kernel
    assert "quantize_static" in [s.method for s in ort_only.steps]
    # a step with one deployable choice stays (the trial's runtime check refuses the other)
    mixed = [s for s in load_space(builtin_space("quantization")).steps if s.method == "quantize_weights"][0]
    assert {p["compute"] for p in param_choices(mixed)} == {"fp32", "bf16"}
    assert len(param_choices(mixed)) == 2 * 2 * 2


def test_the_machine_probe_drops_bf16_and_keeps_the_rest():
    space = joint()
    slow = drop_slow_steps(space, probe_machine(features=["avx2"]))
    assert [s.method for s in slow.steps] == [s.method for s in space.steps if s.method != "cast_precision"]
    assert drop_slow_steps(space, {"device": "cpu", "bf16_units": True}) is space


def test_every_trial_is_offered_only_the_runtimes_that_run_it():
    space = joint()
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=3))
    seen: dict[str, set[str]] = {}
    for _ in range(80):
        trial = study.ask()
        recipe = space.suggest(trial)
        runtime = suggest_runtime(trial, recipe, BOTH)
        methods = [s.method for s in recipe.steps]
        assert methods[0] == "elastic" and len([m for m in methods if m in
                                                 ("quantize_dynamic", "quantize_static", "quantize_weights",
                                                  "cast_precision")]) <= 1
        Recipe(steps=recipe.steps).validate()  # a valid order
        for m in methods:
            seen.setdefault(m, set()).add(runtime)
        study.tell(trial, [0.0, 1.0])
    assert seen["quantize_static"] == {"onnxruntime"} and seen["cast_precision"] == {"torch"}
    assert seen["quantize_weights"] == set(BOTH) and seen["quantize_embeddings"] == set(BOTH)
    assert seen["prune_vocab"] == set(BOTH)


def test_weight_only_and_embedding_steps_need_no_second_build():
    """A step that depends on the weights alone is data-free: its probe build is the final model,
    so a trial builds once (prune_vocab and quantize_static, which read data, build twice)."""
    for m in ("quantize_weights", "quantize_embeddings", "quantize_dynamic", "cast_precision", "elastic"):
        assert get_method(m).data_free, m
    for m in ("prune_vocab", "quantize_static"):
        assert not get_method(m).data_free, m
    assert is_data_free(Recipe(steps=[Step("elastic", {"student": "k"}), Step("quantize_weights", {"bits": 4}),
                                      Step("quantize_embeddings", {"bits": 4})]))
    teacher = tiny.tiny_bert()
    recipe = Recipe(steps=[Step("quantize_weights", {"bits": 4, "group_size": 16}),
                           Step("quantize_embeddings", {"bits": 4})])
    probe = build(recipe, teacher, tiny.context(teacher, probe=True)).model
    final = build(recipe, teacher, tiny.context(teacher)).model
    b = tiny.batch()
    assert torch.equal(tiny.logits(probe, b), tiny.logits(final, b))


ELASTIC = Step("elastic", {"layers": 0.5, "heads_keep": 0.5, "ffn_keep": 0.5, "hidden_keep": 0.75})
PRECISION = {"fp32": [], "dynamic": [Step("quantize_dynamic", {})],
             "static": [Step("quantize_static", {"sentences": 4})],
             "int4": [Step("quantize_weights", {"bits": 4, "group_size": 32})],
             "bf16": [Step("cast_precision", {"dtype": "bf16", "parts": ["attention", "ffn"]})]}
EMBEDDINGS = {"none": [], "int8": [Step("quantize_embeddings", {"bits": 8})],
              "int4": [Step("quantize_embeddings", {"bits": 4})]}


def test_every_no_training_step_follows_a_slice_and_replays_from_its_decisions():
    """The slice (structure only here: the student's weights are the study test's business), then
    each combination of the joint space's steps: built with data, then replayed from the recorded
    decisions alone (what ``autosqueeze.load`` does) to the same logits."""
    teacher = tiny.tiny_bert()
    b = tiny.batch()
    for vocab, precision, emb in itertools.product((False, True), PRECISION, EMBEDDINGS):
        steps = [ELASTIC, *([Step("prune_vocab", {"unk_token_id": 1})] if vocab else []), *PRECISION[precision],
                 *EMBEDDINGS[emb]]
        # the elastic step without a student is a structure-only slice, as a probe makes it; the
        # steps after it run for real (the vocabulary scanned, static int8 calibrated)
        sliced = build(Recipe(steps=steps[:1]), teacher, tiny.context(teacher, probe=True))
        built = build(Recipe(steps=steps[1:]), sliced.model, tiny.context(sliced.model))
        again = replay(Recipe(steps=steps), teacher, sliced.decisions + built.decisions)
        assert torch.equal(tiny.logits(built.model, b), tiny.logits(again, b)), (vocab, precision, emb)
        assert len(list(tiny.adapter(again).layers(again))) == 2


def _record(number: int, steps: list[Step], runtime: str, metric: float, latency: float) -> TrialRecord:
    recipe = Recipe(steps=steps, profile={"runtime": runtime, "deploy_variant": {"exporter": "dynamo"}})
    return TrialRecord(number=number, state="COMPLETE", feasible=True, status="complete", recipe=recipe.to_dict(),
                       runtime=runtime, metric=metric, latency_ms=latency)


JOINT = [Step("elastic", {"student": "sst2-0123456789ab", "layers": 0.5, "heads_keep": 0.75, "ffn_keep": 0.5,
                          "hidden_keep": 0.75}),
         Step("prune_vocab", {}), Step("quantize_static", {"sentences": 256}), Step("quantize_embeddings", {"bits": 4})]


def test_finalize_keeps_every_non_training_choice_and_the_runtime():
    searched = _record(4, JOINT, "onnxruntime", 0.8, 2.0).to_recipe()
    final = final_recipe(searched, FinalizeSettings(steps=30))
    assert [s.method for s in final.steps] == ["elastic", "prune_vocab", "distill", "quantize_static",
                                               "quantize_embeddings"]
    assert final.steps[2].params["steps"] == 30
    assert search_choices(final) == search_choices(searched)
    assert search_choices(final)[1] == "onnxruntime" and final.profile["deploy_variant"] == {"exporter": "dynamo"}
    for i, step in enumerate(JOINT):
        kept = [s for s in final.steps if s.method == step.method][0]
        assert kept.params == step.params and kept.version == step.version, i
    # a front with the same steps in two runtimes holds two points: both are finalized
    torch_steps = [JOINT[0], JOINT[1], Step("quantize_dynamic", {}), JOINT[3]]
    front = [_record(1, torch_steps, "torch", 0.7, 1.0), _record(2, torch_steps, "onnxruntime", 0.75, 1.5),
             _record(3, JOINT, "onnxruntime", 0.8, 2.0)]
    assert [r.number for r in pick_candidates(front, 3)] == [1, 2, 3]
    assert [r.number for r in pick_candidates(front + [_record(5, torch_steps, "torch", 0.7, 1.0)], 3)] == [1, 2, 3]


@pytest.mark.parametrize("name", ["elastic", "joint_elastic"])
def test_builtin_elastic_spaces_ship_in_the_package(name):
    """setup.py maps search_spaces/ to autosqueeze.search_spaces and pyproject's package-data takes
    every *.yaml there: a new space file ships without a list to update."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    assert '"autosqueeze.search_spaces": "search_spaces"' in (root / "setup.py").read_text()
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert data["autosqueeze.search_spaces"] == ["*.yaml"] and (root / "search_spaces" / f"{name}.yaml").is_file()


def test_the_registry_names_the_units_a_step_computes_with(tmp_path):
    """bf16 compute is the registry's knowledge (``MethodSpec.units``), so weight-only bf16 compute is
    refused by ONNX Runtime and dropped on a CPU without bf16 units like a bf16 cast, with no name check."""
    from autosqueeze.runtimes import offered_runtimes

    assert get_method("cast_precision").units({"dtype": "bf16"}) == ("bf16",)
    assert get_method("cast_precision").units({"dtype": "fp16"}) == ()
    assert get_method("quantize_weights").units({"compute": "bf16", "bits": 4}) == ("bf16",)
    assert get_method("quantize_weights").units({"bits": 4}) == ()
    assert get_method("quantize_dynamic").units({}) == ()
    assert get_method("cast_precision").units({"dtype": "int3"}) == ()  # no config: the config check says why
    assert offered_runtimes([Step("quantize_weights", {"compute": "bf16"})], BOTH) == ["torch"]
    assert offered_runtimes([Step("quantize_weights", {"compute": "fp32"})], BOTH) == list(BOTH)
    assert get_method("quantize_static").runtime_refusal({}, "torch") == "quantize_static deploys only with onnxruntime"
    (tmp_path / "s.yaml").write_text(
        "steps:\n"
        "  - {method: quantize_weights, id: w_bf16, choice: q, params: {compute: bf16}}\n"
        "  - {method: quantize_weights, id: w_any, choice: q, params: {compute: {type: categorical, "
        "choices: [fp32, bf16]}}}\n"
        "  - {method: quantize_dynamic, choice: q}\n")
    space = load_space(tmp_path / "s.yaml")
    no_units = {"device": "cpu", "bf16_units": False, "units_rule": "registry"}
    assert [s.id for s in drop_slow_steps(space, no_units).steps] == ["w_any", "quantize_dynamic"]
    # a probe a study recorded before the rule drops the bf16 casts only: a resumed space keeps its choices
    assert drop_slow_steps(space, {"device": "cpu", "bf16_units": False}) is space
    assert [s.id for s in space.for_runtime("onnxruntime").steps] == ["w_any", "quantize_dynamic"]
    assert drop_slow_steps(space, {"device": "cpu", "bf16_units": None}) is space  # unknown: kept


def test_a_search_process_tokenizes_the_training_set_once_for_vocabulary_pruning():
    """prune_vocab counts every training token; tokenizing SST-2 takes seconds, a slice milliseconds:
    the search context keeps the ids after the first trial that asks, and every trial's context reads them."""
    from types import SimpleNamespace

    from autosqueeze.measure import HardwareProfile
    from autosqueeze.methods.prune_vocab import PruneVocabConfig, choose_kept
    from autosqueeze.search.objective import SearchContext

    calls = []

    def token_ids():
        calls.append(1)
        yield torch.tensor([[2, 7, 9, 3, 0]])
        yield torch.tensor([[2, 9, 11, 3, 0]])

    data = SimpleNamespace(train_token_ids=token_ids, train_batches=tiny.batches,
                           task=SimpleNamespace(num_labels=2, is_regression=False))
    teacher = SimpleNamespace(model=tiny.tiny_bert(), tokenizer=None)
    sc = SearchContext(teacher=teacher, data=data, extra_dev={}, profile=HardwareProfile(), main_metric="accuracy",
                       provenance={})
    kept = [choose_kept(30, PruneVocabConfig(unk_token_id=1), sc.method_context(seed, probe=False), 0)[0].tolist()
            for seed in range(3)]
    assert kept[0] == kept[1] == kept[2] == [0, 1, 2, 3, 7, 9, 11]
    assert len(calls) == 1 and all(t.dtype == torch.int32 for t in sc.train_ids)


def test_a_trial_that_trains_nothing_builds_once_and_exports_once(tiny_model_dir, glue_dir, tmp_path, isolated_cache,
                                                                  monkeypatch):
    """A pruned vocabulary and static int8 read training data but train nothing: the trial builds the final
    model once (its calibration on the configured sentences, its vocabulary from the training tokens) and
    times and evaluates that same model, one ONNX Runtime graph; a recipe that trains still probes first."""
    pytest.importorskip("onnxruntime")
    from autosqueeze.search import objective as objective_mod
    from autosqueeze.search.study import prepare
    from autosqueeze.study_config import load_study_config
    from tests.test_objective_ort import count_exports
    from tests.test_search_trials import write_study

    sc = prepare(load_study_config(write_study(tmp_path, tiny_model_dir)), str(glue_dir), None)
    builds: list[bool] = []
    real_build = objective_mod.build
    monkeypatch.setattr(objective_mod, "build", lambda r, m, ctx: builds.append(ctx.probe) or real_build(r, m, ctx))  # type: ignore[func-returns-value]
    exports = count_exports(monkeypatch)
    recipe = Recipe(steps=[Step("prune_vocab", {}), Step("quantize_static", {"sentences": 12})],
                    profile={"runtime": "onnxruntime"})
    assert objective_mod.trains_nothing(recipe) and not objective_mod.is_data_free(recipe)
    keep: dict = {}
    result = objective_mod.evaluate_recipe(recipe, sc, keep=keep)
    assert result.status == "complete" and builds == [False] and len(exports) == 1
    vocab, static = keep["built"].decisions
    assert "kept_bitmap" in vocab and static["sentences"] == 12  # the final choices, not a probe's
    trained = Recipe(steps=[Step("drop_layers", {"keep": 1}), Step("distill", {"steps": 1})])
    assert not objective_mod.trains_nothing(trained)
    builds.clear()
    objective_mod.evaluate_recipe(trained, sc)
    assert builds == [True, False]  # probed (timed before training), then trained
