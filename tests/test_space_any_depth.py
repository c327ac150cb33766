"""The built-in spaces, unchanged, on models of any depth: relative knobs (``of: layers``) are
resolved against the study's model, so ``full`` and ``quick`` run on 2, 4 and 12 layers of every
supported architecture; a method the architecture refuses is left out of the space for it."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml

from autosqueeze.builder import build
from autosqueeze.cli import main
from autosqueeze.measure.latency import fixed_threads
from autosqueeze.search.space import SpaceError, load_space, model_sizes
from autosqueeze.search.validate import validate_for_model
from tests import tiny
from tests.test_cli_e2e import FAST_LATENCY
from tests.test_space import write

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
TOKENIZER = SimpleNamespace(unk_token_id=1, all_special_ids=[0, 1, 2, 3])  # prune_vocab reads [UNK] from it
# One per layout (RoBERTa and ELECTRA share BERT's; tests/test_methods_contract.py covers every family).
STUDY_ARCHS = ("bert", "mpnet", "deberta-v2", "modernbert")
# Methods an architecture refuses (ArchAdapter.refused): full.yaml has them optional, so the study
# leaves them out for that model (with a warning); a space that needs one is refused in one line.
REFUSED = {"modernbert": {"early_exit", "share_layers", "elastic"}}


# The 12-layer searches of the other layouts are marked slow (a full-space trial trains early exit for
# 400 steps: about a minute each here): CI runs them (nothing is deselected by default); `-m "not slow"`
# keeps 2, 4 and 12 layers of BERT and 2 and 4 of the others.
DEPTHS = [pytest.param(arch, layers, id=f"{arch}-{layers}",
                       marks=[pytest.mark.slow] if layers == 12 and arch != "bert" else [])
          for arch in STUDY_ARCHS for layers in (2, 4, 12)]


@pytest.mark.parametrize("space", ["quick", "full"])
@pytest.mark.parametrize("arch,layers", DEPTHS)
def test_builtin_spaces_run_unchanged_on_any_depth(arch, space, layers, tiny_model_dir, glue_dir, tmp_path,
                                                   isolated_cache, caplog, monkeypatch):
    monkeypatch.setenv("AUTOSQUEEZE_ONNX_EXPORTER", "torchscript")  # ORT reference in seconds (dynamo: test_onnx)
    # as cheap as a real search gets: hidden 16 and 2 heads, one trial, one teacher step, batches of 2
    # sequences of 8 tokens on one thread (the trial's training steps are the space's own)
    model = tiny.save_model_dir(arch, tiny_model_dir / "vocab.txt", tmp_path / arch, layers=layers, heads=2,
                                hidden=16, ffn=32)
    study = {"name": "t", "task": "sst2", "model": str(model), "search_space": space, "trials": 1,
             "sampler": "random", "seed": layers, "teacher": {"steps": 1, "batch_size": 2, "max_seq_len": 8},
             "recovery": {"batch_size": 2, "max_seq_len": 8, "threads": 1}, "eval": {"batch_size": 8},
             "hardware": {"seq_len": 8, "threads": 1}, "latency": FAST_LATENCY, "storage": "t.db"}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    with caplog.at_level(logging.WARNING, logger="autosqueeze"):
        assert main(["search", str(path), "--data-dir", str(glue_dir)]) == 0, caplog.text
    done = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 't.db'}").trials
    assert [t.state for t in done] == [optuna.trial.TrialState.COMPLETE], [t.user_attrs.get("error") for t in done]
    for t in done:  # the depth a trial keeps is a count of this model's layers
        keep = t.params.get("drop_layers.keep")
        assert keep is None or 2 <= keep <= max(2, int(0.84 * layers))
    skipped = {m for m in ("early_exit", "share_layers") if f"step '{m}' is skipped" in caplog.text}
    assert skipped == (REFUSED.get(arch, set()) - {"elastic"} if space == "full" else set()), caplog.text
    assert not any(f"{m}.on" in t.params for t in done for m in skipped)  # never offered to the sampler


@pytest.mark.parametrize("layers", [2, 4, 12])
@pytest.mark.parametrize("arch", STUDY_ARCHS)
def test_builtin_spaces_fit_any_depth_and_their_recipes_build(arch, layers):
    """Every built-in space, resolved for the model, passes the model check (or, when it needs a
    method the architecture refuses, is refused in one line), and random recipes from full.yaml
    build together (structure only: probe mode skips training)."""
    teacher = tiny.tiny_model(arch, layers=layers, heads=4, hidden=32, ffn=64)
    refused = REFUSED.get(arch, set())
    for path in sorted(SPACES.glob("*.yaml")):
        space = load_space(path)
        needs = {s.method for s in space.steps if not s.optional} & refused
        if needs:
            with pytest.raises(SpaceError, match=f"cannot run on this {arch} model") as err:
                space.for_model(teacher)
            assert "\n" not in str(err.value) and needs.pop() in str(err.value)
            continue
        resolved = space.for_model(teacher)
        assert {sid for sid, _ in resolved.skipped} == {s.id for s in space.steps if s.method in refused}
        if path.stem != "elastic":  # elastic slices a trained elastic student (tests/test_elastic_study.py)
            validate_for_model(resolved, teacher, lambda: tiny.context(teacher, probe=True, tokenizer=TOKENIZER))
    space = load_space(SPACES / "full.yaml").for_runtime("torch").for_model(teacher)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=layers), directions=["maximize", "minimize"])
    with fixed_threads(1):
        for _ in range(12):
            trial = study.ask()
            recipe = space.suggest(trial)
            model = build(recipe, teacher, tiny.context(teacher, probe=True, tokenizer=TOKENIZER)).model
            assert tiny.logits(model, tiny.batch()).shape == (4, 2), recipe
            study.tell(trial, [0.5, 1.0])


def test_relative_knobs_resolve_against_the_model(tmp_path):
    path = write(tmp_path, [
        {"method": "drop_layers", "params": {"keep": {"type": "int", "low": 0.33, "high": 0.84, "of": "layers"}}},
        {"method": "decompose_svd", "params": {
            "rank": {"type": "int", "low": 0.125, "high": 0.5, "step": 0.125, "of": "hidden"}}},
        {"id": "emb", "method": "decompose_svd",
         "params": {"embedding_rank": {"type": "categorical", "choices": [0.1, 0.12, 0.5], "of": "hidden"}}},
        {"method": "share_layers", "params": {"group_size": {"type": "int", "low": 0.1, "high": 0.2, "of": "layers",
                                                             "min": 2}}},
    ])
    space = load_space(path)
    assert space.relative_knobs() == ["drop_layers.keep", "decompose_svd.rank", "emb.embedding_rank",
                                      "share_layers.group_size"]
    with pytest.raises(SpaceError, match="relative to the model's layers.*for_model"):
        space.suggest(optuna.trial.FixedTrial({}))
    teacher = tiny.tiny_bert(layers=12, hidden=32)
    assert model_sizes(teacher) == {"layers": 12, "heads": 4, "ffn": 64, "hidden": 32}
    resolved = space.for_model(teacher)
    keep, rank = resolved.step("drop_layers").dists["keep"], resolved.step("decompose_svd").dists["rank"]
    assert (keep.type, keep.low, keep.high, keep.of) == ("int", 4, 10, None)  # whole layers inside 3.96..10.08
    assert (rank.low, rank.high, rank.step) == (4, 16, 4)
    assert resolved.step("emb").dists["embedding_rank"].choices == (3, 4, 16)  # round(0.1*32) = round(0.12*32)
    group = resolved.step("share_layers").dists["group_size"]
    assert (group.low, group.high) == (2, 2)  # at least 'min', an empty range collapses to one value
    recipe = resolved.suggest(optuna.trial.FixedTrial({"drop_layers.keep": 7, "decompose_svd.rank": 8,
                                                       "emb.embedding_rank": 16, "share_layers.group_size": 2}))
    assert recipe.steps[0].params["keep"] == 7
    small = space.resolve({"layers": 2, "heads": 2, "ffn": 8, "hidden": 8})
    assert small.step("drop_layers").dists["keep"].low == small.step("drop_layers").dists["keep"].high == 1
    assert space.resolve({"layers": 1, "heads": 1, "ffn": 1, "hidden": 1}).step("share_layers").dists[
        "group_size"].high == 1  # never above the model's own size


@pytest.mark.parametrize("spec, needle", [
    ({"type": "int", "low": 0.3, "high": 0.8, "of": "depth"}, "'of' must be one of"),
    ({"type": "float", "low": 0.3, "high": 0.8, "of": "layers"}, "use type: int"),
    ({"type": "int", "low": 0, "high": 0.8, "of": "layers"}, "fractions of the model's layers"),
    ({"type": "int", "low": 0.3, "high": 0.8, "of": "layers", "min": 0}, "'min' must be an int >= 1"),
    ({"type": "int", "low": 2, "high": 3, "min": 2}, "'min' only goes with 'of'"),
    ({"type": "categorical", "choices": ["a"], "of": "layers"}, "positive numbers"),
])
def test_bad_relative_knobs_are_one_line_errors(tmp_path, spec, needle):
    path = write(tmp_path, [{"method": "drop_layers", "params": {"keep": spec}}])
    with pytest.raises(SpaceError, match=needle) as err:
        load_space(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
