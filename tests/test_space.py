"""Search spaces: parsing, method choice, conditional knobs, validation against the model."""
from __future__ import annotations

import copy
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import FixedTrial

from autosqueeze.builder import build
from autosqueeze.measure.latency import fixed_threads
from autosqueeze.methods import get_method, method_names
from autosqueeze.search.space import SpaceError, load_space
from autosqueeze.search.validate import validate_for_model
from tests import tiny

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"


def write(tmp_path: Path, steps: list, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"steps": steps}))
    return path


CHOICE = [
    {"method": "drop_layers", "optional": True, "params": {"keep": {"type": "int", "low": 1, "high": 2}}},
    {"method": "distill", "requires_any": ["drop_layers"], "excludes": ["qat"], "params": {"steps": 2}},
    {"method": "qat", "optional": True, "requires_any": ["quantize_dynamic"], "params": {"steps": 2}},
    {"method": "quantize_dynamic", "choice": "quantize", "optional": True},
    {"method": "cast_precision", "choice": "quantize", "optional": True,
     "params": {"parts": {"type": "categorical", "choices": [["attention", "ffn"], ["embeddings", "attention"]]}}},
]


def methods(recipe) -> list[str]:
    return [s.method for s in recipe.steps]


def test_choice_group_requires_and_excludes(tmp_path):
    space = load_space(write(tmp_path, CHOICE))
    assert space.order.index("choice:quantize") < space.order.index("qat") < space.order.index("distill")
    r = space.suggest(FixedTrial({"drop_layers.on": True, "drop_layers.keep": 2, "choice.quantize": "none"}))
    assert methods(r) == ["drop_layers", "distill"]  # qat needs quantize_dynamic: never asked
    r = space.suggest(FixedTrial({"drop_layers.on": True, "drop_layers.keep": 1, "choice.quantize": "quantize_dynamic",
                                  "qat.on": True}))
    assert methods(r) == ["drop_layers", "qat", "quantize_dynamic"]  # qat excludes distill
    r = space.suggest(FixedTrial({"drop_layers.on": False, "choice.quantize": "cast_precision",
                                  "cast_precision.parts": '["embeddings", "attention"]'}))
    assert methods(r) == ["cast_precision"]
    assert r.steps[0].params["parts"] == ["embeddings", "attention"]  # list choices come back as lists
    r.validate()
    # every step off would be the teacher itself (a study reference): choice.only_step switches one on
    off = {"drop_layers.on": False, "choice.quantize": "none"}
    assert methods(space.suggest(FixedTrial({**off, "choice.only_step": "quantize_dynamic", "qat.on": False}))) \
        == ["quantize_dynamic"]
    assert methods(space.suggest(FixedTrial({**off, "choice.only_step": "drop_layers", "drop_layers.keep": 1}))) \
        == ["drop_layers", "distill"]  # what requires the forced step is decided as usual


def test_sampled_recipes_only_hold_knobs_of_steps_that_are_on(tmp_path):
    space = load_space(write(tmp_path, CHOICE))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), directions=["maximize", "minimize"])
    for _ in range(30):
        trial = study.ask()
        recipe = space.suggest(trial)
        recipe.validate()
        on = set(methods(recipe))
        assert not ({"quantize_dynamic", "cast_precision"} <= on)
        assert ("qat" in on) <= ("quantize_dynamic" in on)
        assert not ({"qat", "distill"} <= on)
        assert ("distill" in on) == ("drop_layers" in on and "qat" not in on)
        for name in trial.params:
            sid = name.split(".")[0]
            assert sid == "choice" or name.endswith(".on") or sid in on, name
        study.tell(trial, [0.5, 1.0])


@pytest.mark.parametrize("steps, needle", [
    ([{"method": "nope"}], "unknown method 'nope'"),
    ([{"method": "drop_layers", "params": {"kep": 2}}], "no parameter(s) ['kep']"),
    ([{"method": "drop_layers", "params": {"keep": {"type": "int", "low": 4, "high": 2}}}],
     "drop_layers.keep: empty range"),
    ([{"method": "drop_layers", "params": {"keep": {"type": "int", "low": 1.5, "high": 2}}}],
     "drop_layers.keep: an int range"),
    ([{"method": "drop_layers", "params": {"keep": 2}, "requires_any": ["distill"], "excludes": []},
      {"method": "distill", "requires_any": ["drop_layers"]}], "cycle"),
    ([{"method": "quantize_dynamic", "choice": "q", "optional": True},
      {"method": "cast_precision", "choice": "q"}], "disagree on 'optional'"),
    ([{"method": "drop_layers", "params": {"keep": 2}, "requires_any": ["prune"]}], "not step ids"),
    ([{"method": "quantize_dynamic"}, {"method": "drop_layers", "params": {"keep": 2}}], "step order"),
    ([{"method": "drop_layers", "params": {"keep": 2}, "when": "always"}], "unknown key(s) ['when']"),
])
def test_bad_spaces_name_file_and_key(tmp_path, steps, needle):
    path = write(tmp_path, steps)
    with pytest.raises(SpaceError) as err:
        load_space(path)
    assert needle in str(err.value) and str(path) in str(err.value)


def test_shipped_spaces_load_and_cover_every_method():
    files = {p.stem: load_space(p) for p in SPACES.glob("*.yaml")}
    assert {"full", "quick", "quantization", "pruning", "distillation", "decomposition", "early_exit",
            "sharing"} <= set(files)
    # the joint per-trial space has every method but elastic slicing, which has its own space
    # (an elastic step makes the study train an elastic student first)
    assert set(files["full"].method_names()) == set(method_names()) - {"elastic"}
    assert "elastic" in files["elastic"].method_names()
    families = {name: {get_method(m).family for m in space.method_names()} for name, space in files.items()}
    assert families["quantization"] == {"quantization"}
    assert families["pruning"] <= {"structured pruning", "unstructured pruning", "knowledge distillation"}
    assert families["sharing"] == {"parameter sharing", "knowledge distillation"}
    assert families["early_exit"] == {"dynamic inference"}


def _tiny_full(tmp_path: Path) -> Path:
    """full.yaml with ranges shrunk to a 4-layer, 4-head, hidden-32 BERT."""
    raw = yaml.safe_load((SPACES / "full.yaml").read_text())
    for step in raw["steps"]:
        p = step.get("params", {})
        if step["method"] == "drop_layers":
            p["keep"] = {"type": "int", "low": 2, "high": 3}
        if step["method"] == "decompose_svd" and "rank" in p:
            p["rank"] = {"type": "int", "low": 4, "high": 8, "step": 4}
        if "embedding_rank" in p:  # the tiny model's embeddings are 120 x 32
            p["embedding_rank"] = 8
        if step["method"] == "prune_vocab":  # the tiny contexts have no tokenizer to read [UNK] from
            p["unk_token_id"] = 100
        if step["method"] == "quantize_weights":
            p["group_size"] = {"type": "categorical", "choices": [8, 16]}
        if "steps" in p:
            p["steps"] = 2
    return write(tmp_path, raw["steps"], "full_tiny.yaml")


def test_full_space_recipes_apply_together(tmp_path):
    """Random joint recipes from full.yaml (ranges shrunk) build on a tiny BERT: the combinations
    the space allows are ones the methods accept (structure only: probe mode)."""
    space = load_space(_tiny_full(tmp_path))
    teacher = tiny.tiny_bert(layers=4)
    validate_for_model(space, teacher, lambda: tiny.context(teacher, probe=True))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1), directions=["maximize", "minimize"])
    seen: set[str] = set()
    with fixed_threads(1):  # tiny matrices: one thread is fastest, above all on a busy machine
        for _ in range(25):
            trial = study.ask()
            recipe = space.suggest(trial)
            seen.update(methods(recipe))
            model = build(recipe, teacher, tiny.context(teacher, probe=True)).model
            out = tiny.logits(model, tiny.batch())
            assert out.shape == (4, 2), methods(recipe)
            study.tell(trial, [0.5, 1.0])
    assert len(seen) >= 8


@pytest.mark.parametrize("step, needle", [
    ({"method": "drop_layers", "params": {"keep": {"type": "int", "low": 2, "high": 5}}},
     "drop_layers.keep = 5 cannot be applied to this model"),
    ({"method": "prune_structured", "params": {"heads_keep": {"type": "int", "low": 2, "high": 8}}},
     "prune_structured.heads_keep = 8"),
    ({"method": "share_layers", "params": {"group_size": {"type": "categorical", "choices": [2, 6]}}},
     "share_layers.group_size = 6"),
    ({"method": "decompose_svd", "params": {"rank": {"type": "int", "low": 8, "high": 64}}},
     "decompose_svd.rank = 64 would factorize no matrix"),
])
def test_ranges_the_model_cannot_satisfy(tmp_path, step, needle):
    path = write(tmp_path, [step])
    teacher = tiny.tiny_bert(layers=4, heads=4, hidden=32, ffn=64)
    with pytest.raises(SpaceError) as err:
        validate_for_model(load_space(path), teacher, lambda: tiny.context(teacher, probe=True))
    msg = str(err.value)
    assert str(path) in msg and needle in msg, msg
    assert "narrow the range" in msg or "remove that choice" in msg


def test_validation_leaves_the_model_alone(tmp_path):
    teacher = tiny.tiny_bert(layers=4)
    before = copy.deepcopy(teacher.state_dict())
    validate_for_model(load_space(_tiny_full(tmp_path)), teacher, lambda: tiny.context(teacher, probe=True))
    after = teacher.state_dict()
    assert before.keys() == after.keys() and all((before[k] == after[k]).all() for k in before)
