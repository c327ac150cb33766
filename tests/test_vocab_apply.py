"""A pruned vocabulary through the user's path: search → export → apply → ``autosqueeze.load``,
and the loaded model predicts the dev set exactly as the search's trial did (issue 13)."""
from __future__ import annotations

import numpy as np
import optuna
import yaml

import autosqueeze
from autosqueeze.cli import main
from autosqueeze.measure.metrics import predict
from autosqueeze.tasks import get_task
from autosqueeze.teacher import load_task_data
from autosqueeze.train import TrainSettings
from tests.test_cli_e2e import FAST_LATENCY


def test_pruned_vocabulary_applied_and_loaded_predicts_the_dev_set_as_searched(tiny_model_dir, glue_dir, tmp_path,
                                                                               isolated_cache, capsys):
    from transformers import AutoTokenizer

    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"steps": [
        {"method": "prune_vocab"}, {"method": "quantize_dynamic", "optional": True}]}))
    study = {"name": "v", "task": "sst2", "model": str(tiny_model_dir), "search_space": "space.yaml", "trials": 1,
             "sampler": "random", "teacher": {"steps": 3, "batch_size": 4, "max_seq_len": 16},
             "recovery": {"batch_size": 4, "max_seq_len": 16}, "hardware": {"seq_len": 16},
             "latency": FAST_LATENCY, "storage": "v.db"}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    assert main(["search", str(tmp_path / "study.yaml"), "--data-dir", str(glue_dir)]) == 0
    assert main(["export", str(tmp_path / "study.yaml"), "-o", str(tmp_path / "r.yaml")]) == 0
    out = tmp_path / "model"
    assert main(["apply", str(tmp_path / "r.yaml"), "-o", str(out), "--data-dir", str(glue_dir), "--no-onnx"]) == 0
    capsys.readouterr()

    trial = optuna.load_study(study_name="v", storage=f"sqlite:///{tmp_path / 'v.db'}").best_trials[0]
    loaded = autosqueeze.load(out)
    original = AutoTokenizer.from_pretrained(tiny_model_dir)
    saved = AutoTokenizer.from_pretrained(out)
    settings = TrainSettings(batch_size=4, max_seq_len=16)
    data, _ = load_task_data(get_task("sst2"), saved, str(glue_dir), settings, with_train=False)
    # the vocabulary really was pruned (the rows of the other tasks' words are gone)
    emb = loaded.get_input_embeddings()
    assert emb.num_embeddings == original.vocab_size and emb.inner.num_embeddings < original.vocab_size
    # the saved folder's tokenizer, the loaded model: the trial's dev metric, exactly
    pred = predict(loaded, data, data.dev)
    labels = np.asarray([e.label for e in data.dev])
    assert float((pred == labels).mean()) == trial.user_attrs["metric"]
    # and the same predictions, example by example, as the original tokenizer gives (the search's)
    data_orig, _ = load_task_data(get_task("sst2"), original, str(glue_dir), settings, with_train=False)
    assert np.array_equal(predict(loaded, data_orig, data_orig.dev), pred)
