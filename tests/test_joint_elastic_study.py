"""An elastic study over the built-in ``joint_elastic`` space on a tiny model (issue 24): its trials
slice the elastic student and pick a bit width and an embedding step (and a pruned vocabulary),
training nothing; the best recipe, exported and applied, reproduces its metric exactly, and so
does the folder loaded back with ``autosqueeze.load``; ``finalize`` trains the front's slices
again and keeps every other choice of each point (steps, params, runtime) as the search made it."""
from __future__ import annotations

import json

import numpy as np
import optuna
import yaml

import autosqueeze
from autosqueeze.cli import main
from autosqueeze.measure.metrics import predict
from autosqueeze.recipe import Recipe
from autosqueeze.search.finalize import search_choices
from autosqueeze.tasks import get_task
from autosqueeze.teacher import load_task_data
from autosqueeze.train import TrainSettings
from tests.test_elastic_study import write_elastic_study

BIT_WIDTH = ("quantize_dynamic", "quantize_weights", "quantize_static", "cast_precision")
# what the trials pick besides the slice (the sampler fills in the slice's own knobs)
PICKS = [{"prune_vocab.on": True, "choice.precision": "quantize_weights", "quantize_embeddings.on": True,
          "quantize_embeddings.bits": 4, "early_exit.on": False},
         {"prune_vocab.on": False, "choice.precision": "quantize_dynamic", "quantize_embeddings.on": True,
          "quantize_embeddings.bits": 8, "early_exit.on": False},
         {"prune_vocab.on": True, "choice.precision": "quantize_dynamic", "quantize_embeddings.on": True,
          "quantize_embeddings.bits": 4, "early_exit.on": False},
         {"prune_vocab.on": False, "choice.precision": "quantize_weights", "quantize_embeddings.on": True,
          "quantize_embeddings.bits": 8, "early_exit.on": False}]


def _loaded_metric(folder, glue_dir, recipe: dict) -> float:
    """The dev metric of ``autosqueeze.load(folder)``, after checking that the loaded model holds the
    recipe's embedding steps (a pruned vocabulary, an int8 / int4 table)."""
    from transformers import AutoTokenizer

    from autosqueeze.methods.prune_vocab import PrunedVocabEmbedding
    from autosqueeze.methods.quantize_weights import WeightOnlyEmbedding

    model = autosqueeze.load(folder)
    steps = {s["method"]: s["params"] for s in recipe["steps"]}
    table = model.get_input_embeddings()
    assert isinstance(table, PrunedVocabEmbedding) == ("prune_vocab" in steps)
    table = table.inner if isinstance(table, PrunedVocabEmbedding) else table
    assert isinstance(table, WeightOnlyEmbedding) and table.bits == steps["quantize_embeddings"]["bits"]
    data, _ = load_task_data(get_task("sst2"), AutoTokenizer.from_pretrained(folder), str(glue_dir),
                             TrainSettings(batch_size=4, max_seq_len=16), with_train=False)
    labels = np.asarray([e.label for e in data.dev])
    return float((predict(model, data, data.dev) == labels).mean())


def test_joint_elastic_study_picks_bit_widths_and_embeddings_and_reproduces_them(tiny_model_dir, glue_dir, tmp_path,
                                                                                 isolated_cache, capsys):
    study_file = write_elastic_study(tmp_path, tiny_model_dir, trials=len(PICKS))
    config = yaml.safe_load(study_file.read_text())
    config.update(name="je", search_space="joint_elastic", finalize={"steps": 2, "top_k": len(PICKS)})
    study_file.write_text(yaml.safe_dump(config))
    storage = f"sqlite:///{tmp_path / 'je.db'}"
    queued = optuna.create_study(study_name="je", storage=storage, directions=["maximize", "minimize"])
    for picks in PICKS:
        queued.enqueue_trial(picks)
    data = ["--data-dir", str(glue_dir)]
    assert main(["search", str(study_file), *data]) == 0

    study = optuna.load_study(study_name="je", storage=storage)
    student = next((isolated_cache / "elastic").iterdir()).name
    done = sorted((t for t in study.trials if t.user_attrs.get("status") == "complete"), key=lambda t: t.number)
    assert len(done) == len(PICKS)
    for t, picks in zip(done, PICKS):
        steps = t.user_attrs["recipe"]["steps"]
        methods = [s["method"] for s in steps]
        assert steps[0]["method"] == "elastic" and steps[0]["params"]["student"] == student
        assert methods[1:] == [*(["prune_vocab"] if picks["prune_vocab.on"] else []), picks["choice.precision"],
                               "quantize_embeddings"]  # a bit width and an embedding step, nothing trained
        assert steps[-1]["params"]["bits"] == picks["quantize_embeddings.bits"]
        assert t.user_attrs["runtime"] == "torch"
        assert t.user_attrs["size_pct"]["total"] < 100

    # the best (most accurate) point of the search-time front: exported, applied, loaded
    recipe_path = tmp_path / "best.yaml"
    assert main(["export", str(study_file), "-o", str(recipe_path)]) == 0
    recipe = yaml.safe_load(recipe_path.read_text())
    methods = [s["method"] for s in recipe["steps"]]
    assert methods[0] == "elastic" and "quantize_embeddings" in methods and set(methods) & set(BIT_WIDTH)
    trial = study.trials[recipe["measured"]["trial"]]
    out = tmp_path / "best"
    assert main(["apply", str(recipe_path), "-o", str(out), "--no-onnx", *data]) == 0
    manifest = json.loads((out / "autosqueeze.json").read_text())
    assert manifest["measured"]["reproduced"]["metric"] == trial.user_attrs["metric"]
    assert manifest["measured"]["comparison"]["size_equal"]
    assert _loaded_metric(out, glue_dir, recipe) == trial.user_attrs["metric"]

    # finalize: the slices distilled again, everything else as the search chose it
    assert main(["finalize", str(study_file), *data]) == 0
    capsys.readouterr()
    study = optuna.load_study(study_name="je", storage=storage)
    finals = study.user_attrs["final"]
    assert finals
    for number, entry in finals.items():
        assert entry["status"] == "complete"
        final = Recipe.from_dict(entry["recipe"])
        searched = Recipe.from_dict(study.trials[int(number)].user_attrs["recipe"])
        assert "distill" in [s.method for s in final.steps]
        assert search_choices(final) == search_choices(searched)

    # the final point exported and applied reproduces the final metric; loaded back, too
    final_path = tmp_path / "final.yaml"
    assert main(["export", str(study_file), "-o", str(final_path)]) == 0
    chosen = yaml.safe_load(final_path.read_text())
    assert chosen["measured"]["fidelity"] == "final"
    out = tmp_path / "final"
    assert main(["apply", str(final_path), "-o", str(out), "--no-onnx", *data]) == 0
    manifest = json.loads((out / "autosqueeze.json").read_text())
    assert manifest["measured"]["reproduced"]["metric"] == chosen["measured"]["metric"]
    assert _loaded_metric(out, glue_dir, chosen) == chosen["measured"]["metric"]


ORT_PICKS = [{"prune_vocab.on": True, "choice.precision": "quantize_static", "quantize_embeddings.on": True,
              "quantize_embeddings.bits": 8, "early_exit.on": False},
             {"prune_vocab.on": False, "choice.precision": "quantize_weights", "quantize_embeddings.on": True,
              "quantize_embeddings.bits": 4, "early_exit.on": False, "runtime": "onnxruntime"}]


def test_joint_elastic_static_int8_and_the_runtime_choice_in_onnxruntime(tiny_model_dir, glue_dir, tmp_path,
                                                                          isolated_cache):
    """With ``hardware.runtimes: [torch, onnxruntime]`` static int8 is offered (its calibration runs in
    the trial, on training sentences; no training) and deploys in ONNX Runtime only; another trial picks
    ONNX Runtime for int4 weights + an int4 table. ``apply`` rebuilds each and reproduces the metric of
    the graph the search evaluated, and the folder loads back."""
    import pytest
    import torch

    pytest.importorskip("onnxruntime")
    from autosqueeze.apply import rebuild
    from autosqueeze.measure import HardwareProfile
    from autosqueeze.runtimes.ort import OrtClassifier, make_session

    study_file = write_elastic_study(tmp_path, tiny_model_dir, trials=len(ORT_PICKS))
    config = yaml.safe_load(study_file.read_text())
    config.update(name="jo", search_space="joint_elastic", deploy="default",
                  hardware={"seq_len": 16, "threads": 1, "runtimes": ["torch", "onnxruntime"]})
    study_file.write_text(yaml.safe_dump(config))
    storage = f"sqlite:///{tmp_path / 'jo.db'}"
    queued = optuna.create_study(study_name="jo", storage=storage, directions=["maximize", "minimize"])
    for picks in ORT_PICKS:
        queued.enqueue_trial(picks)
    assert main(["search", str(study_file), "--data-dir", str(glue_dir)]) == 0
    study = optuna.load_study(study_name="jo", storage=storage)
    done = sorted((t for t in study.trials if t.user_attrs.get("status") == "complete"), key=lambda t: t.number)
    assert len(done) == len(ORT_PICKS)
    static, int4 = done
    assert [s["method"] for s in static.user_attrs["recipe"]["steps"]] == \
        ["elastic", "prune_vocab", "quantize_static", "quantize_embeddings"]
    assert "runtime" not in static.params  # only ONNX Runtime runs static int8: not a choice
    assert static.user_attrs["runtime"] == "onnxruntime"
    assert int4.params["runtime"] == int4.user_attrs["runtime"] == "onnxruntime"  # a choice, made
    for t in done:
        recipe = Recipe.from_dict(t.user_attrs["recipe"])
        recipe.save(tmp_path / f"r{t.number}.yaml")
        rebuilt = rebuild(tmp_path / f"r{t.number}.yaml", tmp_path / f"m{t.number}", str(glue_dir), onnx=False)
        assert rebuilt.reproduced["runtime"] == "onnxruntime" and (rebuilt.out / "model.onnx").is_file()
        assert rebuilt.reproduced["metric"] == t.user_attrs["metric"]  # the ORT graph's, as searched
        model = autosqueeze.load(rebuilt.out)  # PyTorch's model of the same steps (static int8: simulated)
        ids = torch.randint(5, model.config.vocab_size, (3, 9))
        b = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
        with torch.inference_mode():
            ref = model(**b).logits
        graph = OrtClassifier(make_session(rebuilt.out / "model.onnx", HardwareProfile(threads=1)))(**b).logits
        assert (torch.as_tensor(graph) - ref).abs().max() <= 0.05 * ref.abs().max() + 1e-4


def test_joint_elastic_trial_with_exits_a_bit_width_and_an_embedding_step_reproduces(tiny_model_dir, glue_dir,
                                                                                     tmp_path, isolated_cache):
    """Issue 24's whole joint space in one trial: the built-in ``joint_elastic`` space (its student
    trains exit heads: ``elastic.exits`` left out follows the space), a trial that picks an exit rule and
    threshold, int8 and an int4 embedding table; exported by number, ``apply`` and ``autosqueeze.load``
    reproduce its metric exactly, exits included (evaluated at batch 1, as the search did)."""
    from transformers import AutoTokenizer

    from autosqueeze.elastic.store import EXITS
    from autosqueeze.measure.metrics import evaluate_deployed

    study_file = write_elastic_study(tmp_path, tiny_model_dir, trials=1)
    config = yaml.safe_load(study_file.read_text())
    config.update(name="jx", search_space="joint_elastic")
    config.get("elastic", {}).pop("exits", None)
    study_file.write_text(yaml.safe_dump(config))
    storage = f"sqlite:///{tmp_path / 'jx.db'}"
    queued = optuna.create_study(study_name="jx", storage=storage, directions=["maximize", "minimize"])
    queued.enqueue_trial({"prune_vocab.on": False, "early_exit.on": True, "early_exit.rule": "entropy",
                          "early_exit.threshold": 0.5, "choice.precision": "quantize_dynamic",
                          "quantize_embeddings.on": True, "quantize_embeddings.bits": 4})
    data = ["--data-dir", str(glue_dir)]
    assert main(["search", str(study_file), *data]) == 0
    assert any((s / EXITS).is_file() for s in (isolated_cache / "elastic").iterdir())  # trained with exits
    study = optuna.load_study(study_name="jx", storage=storage)
    trial = next(t for t in study.trials if t.user_attrs.get("status") == "complete")
    steps = trial.user_attrs["recipe"]["steps"]
    assert [s["method"] for s in steps] == ["elastic", "early_exit", "quantize_dynamic", "quantize_embeddings"]
    assert steps[1]["params"]["training"] == "elastic" and steps[1]["params"]["threshold"] == 0.5
    assert trial.user_attrs["exit_stats"]["calls"] > 0

    recipe_path = tmp_path / "jx.yaml"
    assert main(["export", str(study_file), "--trial", str(trial.number), "-o", str(recipe_path)]) == 0
    recorded = yaml.safe_load(recipe_path.read_text())["measured"]["metric"]
    assert recorded == trial.user_attrs["metric"]
    out = tmp_path / "jx-model"
    assert main(["apply", str(recipe_path), "-o", str(out), "--no-onnx", *data]) == 0
    manifest = json.loads((out / "autosqueeze.json").read_text())
    assert manifest["measured"]["reproduced"]["metric"] == recorded
    model = autosqueeze.load(out)
    task_data, extra = load_task_data(get_task("sst2"), AutoTokenizer.from_pretrained(out), str(glue_dir),
                                      TrainSettings(batch_size=4, max_seq_len=16), with_train=False)
    metrics, stats = evaluate_deployed(model, task_data, extra, 64, 1)
    assert metrics[get_task("sst2").main_metric] == recorded and stats == trial.user_attrs["exit_stats"]
