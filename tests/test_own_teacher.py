"""Bring your own fine-tuned model: a study names a sequence-classification folder as its teacher.

Nothing is trained; the folder is only read; its dev metric is measured once (the one computed
here independently) and cached with its weights hash; a changed folder is measured again; a
head that does not fit the task (label count, names, order) or no head at all is refused in one
line before anything is created.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast  # type: ignore[attr-defined]

from autosqueeze import teacher as teacher_mod
from autosqueeze.cli import main
from autosqueeze.errors import ConfigError, ModelFolderError
from autosqueeze.models import weights_hash
from autosqueeze.search.trial_record import TrialRecord
from autosqueeze.study_config import load_study_config
from autosqueeze.tasks import get_task
from autosqueeze.tasks.specs import head_label_problem
from autosqueeze.teacher import cached_teacher_path, check_own_teacher, get_teacher
from autosqueeze.train import TrainSettings
from tests.fixtures_glue import LAYOUTS

FAST_LATENCY = {"warmup": 1, "repeats": 3, "min_time_s": 0.0, "idle_wait_s": 0.0}
SEQ = 16


def make_fine_tuned(out: Path, tokenizer_dir: Path, num_labels: int = 2, id2label: dict[int, str] | None = None,
                    seed: int = 1, bare: bool = False, train: bool = False) -> Path:
    """A tiny BERT classifier folder as a user's fine-tuning run leaves it (save_pretrained)."""
    tok = BertTokenizerFast.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,  # type: ignore[call-arg]
                     intermediate_size=64, max_position_embeddings=128, num_labels=num_labels,
                     **({"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}} if id2label else {}))
    model = BertModel(cfg, add_pooling_layer=True) if bare else BertForSequenceClassification(cfg)
    if train:  # fine-tuned on the fixture's SST-2 rows until it fits them, as a user's run would
        rows = LAYOUTS["sst2"][3]
        enc = tok([t[0] for t, _ in rows], padding=True, return_tensors="pt")
        labels = torch.tensor([label for _, label in rows])
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(100):
            out_ = model(**enc, labels=labels)
            if (out_.logits.argmax(-1) == labels).all() and out_.loss < 0.1:
                break
            opt.zero_grad()
            out_.loss.backward()
            opt.step()
    model.eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out


def folder_bytes(folder: Path) -> dict[str, tuple[str, int]]:
    return {f.name: (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns)
            for f in sorted(folder.iterdir()) if f.is_file()}


def dev_accuracy(folder: Path) -> float:
    """SST-2 dev accuracy of ``folder``'s model, computed here without autosqueeze."""
    tok = BertTokenizerFast.from_pretrained(folder)
    model = BertForSequenceClassification.from_pretrained(folder).eval()
    right = 0
    expected = LAYOUTS["sst2"][3]
    with torch.inference_mode():
        for texts, label in expected:
            enc = tok(*texts, truncation=True, max_length=SEQ, return_tensors="pt")
            right += int(model(**enc).logits.argmax(-1).item() == label)
    return right / len(expected)


def write_study(folder: Path, teacher: dict, trials: int = 2, **extra) -> Path:
    (folder / "space.yaml").write_text(yaml.safe_dump({"steps": [
        {"method": "drop_layers", "optional": True, "params": {"keep": {"type": "int", "low": 1, "high": 1}}},
        {"method": "distill", "requires_any": ["drop_layers"], "params": {"steps": 2}},
        {"method": "quantize_dynamic", "optional": True},
    ]}))
    study = {"name": "own", "task": "sst2", "search_space": "space.yaml", "trials": trials, "sampler": "random",
             "teacher": teacher, "recovery": {"batch_size": 4}, "hardware": {"seq_len": SEQ},
             "latency": FAST_LATENCY, **extra}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def no_training(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a fine-tuned teacher was trained")

    monkeypatch.setattr(teacher_mod, "finetune", refuse)
    monkeypatch.setattr(teacher_mod, "train_teacher", refuse)


def test_a_study_uses_the_folder_as_it_is_and_measures_it_once(tiny_model_dir, glue_dir, tmp_path, isolated_cache,
                                                               monkeypatch, capsys):
    mine = make_fine_tuned(tmp_path / "my-finetuned-sst2", tiny_model_dir,
                           id2label={0: "NEGATIVE", 1: "POSITIVE"}, train=True)
    before = folder_bytes(mine)
    want_hash = weights_hash(BertForSequenceClassification.from_pretrained(mine))
    want_metric = dev_accuracy(mine)
    assert want_metric > 0.5  # above the majority floor, so that export finds a point worth deploying
    no_training(monkeypatch)
    measured = []
    real_evaluate = teacher_mod.evaluate
    monkeypatch.setattr(teacher_mod, "evaluate", lambda *a, **k: measured.append(1) or real_evaluate(*a, **k))  # type: ignore[func-returns-value]

    study = write_study(tmp_path, {"path": "my-finetuned-sst2", "max_seq_len": SEQ, "batch_size": 4})
    config = load_study_config(study)
    assert config.model == str(mine.resolve()) and config.teacher.steps == 0 and config.recovery.max_seq_len == SEQ
    data = ["--data-dir", str(glue_dir)]
    assert main(["search", str(study), *data]) == 0, capsys.readouterr().err
    [cached] = list((isolated_cache / "teachers").iterdir())
    info = json.loads((cached / "teacher.json").read_text())
    assert info["weights_hash"] == want_hash and info["fine_tuned"]["folder"] == str(mine.resolve())
    assert json.loads((cached / "metrics.json").read_text())["accuracy"] == want_metric
    assert measured == [1]
    assert BertTokenizerFast.from_pretrained(cached).get_vocab() == BertTokenizerFast.from_pretrained(mine).get_vocab()
    import optuna

    trials = optuna.load_study(study_name="own", storage=config.storage_url).trials
    recorded = trials[0].user_attrs["recipe"]["teacher"]
    assert recorded["weights_hash"] == want_hash and recorded["metrics"]["accuracy"] == want_metric

    # a second run (more trials), finalize and apply reuse the cached measure: nothing measured or trained again
    stamp = (cached / "teacher.json").stat().st_mtime_ns
    assert main(["search", str(study), *data, "--trials", "3"]) == 0
    assert main(["finalize", str(study), *data, "--top-k", "1", "--steps", "1"]) == 0
    recipe = tmp_path / "recipe.yaml"  # a compressed trial's recipe (export may refuse, on timing, what a
    compressed = [t for t in optuna.load_study(study_name="own", storage=config.storage_url).trials  # reference
                  if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs["recipe"]["steps"]]  # dominates)
    TrialRecord.from_trial(compressed[0]).to_recipe().save(recipe)
    assert main(["apply", str(recipe), "-o", str(tmp_path / "compressed"), *data]) == 0
    assert measured == [1] and list((isolated_cache / "teachers").iterdir()) == [cached]
    assert (cached / "teacher.json").stat().st_mtime_ns == stamp
    manifest = json.loads((tmp_path / "compressed" / "autosqueeze.json").read_text())
    assert manifest["recipe"]["teacher"]["weights_hash"] == want_hash
    assert cached_teacher_path(want_hash) == cached  # how bench finds a saved model's teacher
    assert folder_bytes(mine) == before  # the user's folder: not a byte nor a timestamp changed


def test_a_changed_folder_is_measured_again(tiny_model_dir, glue_dir, tmp_path, isolated_cache, monkeypatch):
    mine = make_fine_tuned(tmp_path / "mine", tiny_model_dir)
    no_training(monkeypatch)
    settings = TrainSettings(steps=0, max_seq_len=SEQ)
    first = get_teacher(str(mine), "sst2", str(glue_dir), settings)
    assert get_teacher(str(mine), "sst2", str(glue_dir), settings).path == first.path  # cached
    make_fine_tuned(mine, tiny_model_dir, seed=2)  # the user fine-tuned again into the same folder
    second = get_teacher(str(mine), "sst2", str(glue_dir), settings)
    assert second.path != first.path
    assert second.info["weights_hash"] == weights_hash(BertForSequenceClassification.from_pretrained(mine))
    assert second.info["weights_hash"] != first.info["weights_hash"]
    assert second.metrics["accuracy"] == dev_accuracy(mine)


def test_a_head_with_the_wrong_label_count_is_refused_in_one_line_before_anything_is_created(
        tiny_model_dir, glue_dir, tmp_path, isolated_cache, capsys):
    mine = make_fine_tuned(tmp_path / "mnli-model", tiny_model_dir, num_labels=3)
    before = folder_bytes(mine)
    study = write_study(tmp_path, {"path": str(mine)})
    capsys.readouterr()
    assert main(["search", str(study), "--data-dir", str(glue_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert str(mine.resolve()) in err[0] and "3 label(s)" in err[0] and "sst2 has 2" in err[0]
    assert not (tmp_path / "own.db").exists() and not (isolated_cache / "teachers").exists()
    assert folder_bytes(mine) == before


@pytest.mark.parametrize("id2label, says", [
    ({0: "positive", 1: "negative"}, "another order"),
    ({0: "bad", 1: "good"}, "set id2label"),
    ({0: "LABEL_1", 1: "LABEL_0"}, "are not sst2.s"),
])
def test_label_names_that_are_not_the_tasks_are_refused(id2label, says, tiny_model_dir, tmp_path):
    mine = make_fine_tuned(tmp_path / "m", tiny_model_dir, id2label=id2label)
    with pytest.raises(ModelFolderError, match=says) as err:
        check_own_teacher(mine, get_task("sst2"))
    assert str(mine) in str(err.value) and "\n" not in str(err.value)


def test_label_names_that_fit() -> None:
    sst2, mnli = get_task("sst2"), get_task("mnli")
    for names in ({0: "LABEL_0", 1: "LABEL_1"}, {0: "NEGATIVE", 1: "POSITIVE"}, {0: "neg", 1: "pos"}, {0: "0", 1: "1"}):
        assert head_label_problem(sst2, names) is None, names
    assert head_label_problem(mnli, {0: "ENTAILMENT", 1: "NEUTRAL", 2: "CONTRADICTION"}) is None
    assert "another order" in str(head_label_problem(mnli, {0: "contradiction", 1: "neutral", 2: "entailment"}))
    assert head_label_problem(get_task("rte"), {0: "entailment", 1: "not entailment"}) is None
    assert head_label_problem(get_task("stsb"), {0: "similarity"}) is None  # a regression head has no classes


def test_a_bare_encoder_is_refused_with_the_training_hint(tiny_model_dir, glue_dir, tmp_path, isolated_cache):
    bare = make_fine_tuned(tmp_path / "encoder", tiny_model_dir, bare=True)
    with pytest.raises(ModelFolderError, match=r"not a fine-tuned sequence classifier.*teacher: \{steps: N\}"):
        get_teacher(str(bare), "sst2", str(glue_dir), TrainSettings(steps=0))
    # the config claims a classifier but the checkpoint has no head: refused, not given a random one
    cfg = json.loads((bare / "config.json").read_text())
    (bare / "config.json").write_text(json.dumps({**cfg, "architectures": ["BertForSequenceClassification"]}))
    with pytest.raises(ModelFolderError, match="no trained classification head"):
        get_teacher(str(bare), "sst2", str(glue_dir), TrainSettings(steps=0))
    with pytest.raises(ModelFolderError, match="no classification head"):
        get_teacher("default", "sst2", str(glue_dir), TrainSettings(steps=0))
    assert not (isolated_cache / "teachers").exists()


@pytest.mark.parametrize("teacher, extra, says", [
    ({"path": "mine", "steps": 100}, {}, r"nothing is trained, so 'teacher' cannot also set \['steps'\]"),
    ({"path": "mine", "lr": 1e-4, "steps": 0}, {}, r"cannot also set \['lr', 'steps'\]"),
    ({"path": "mine"}, {"model": "default"}, "'model' and 'teacher.path' both name the model"),
    ({"path": "elsewhere"}, {}, "elsewhere does not exist"),
    ({"path": 3}, {}, "'teacher.path' must be the path"),
    ({"path": "mine", "colour": 1}, {}, r"unknown key\(s\) \['colour'\] in 'teacher'"),
])
def test_the_study_file_says_in_one_line_what_conflicts(teacher, extra, says, tiny_model_dir, tmp_path):
    make_fine_tuned(tmp_path / "mine", tiny_model_dir)
    study = write_study(tmp_path, teacher, **extra)
    with pytest.raises(ConfigError, match=says) as err:
        load_study_config(study)
    assert str(study) in str(err.value) and "\n" not in str(err.value)
