"""Values the schema's types let through, checked against the model and the machine before any work;
storage that keeps nothing; inputs built to exhaust (alias bombs, huge spaces, a space with nothing
new to propose). Each: one line naming the key and the limit, exit 2, nothing created or changed.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import yaml

from tests.bad_inputs_helpers import make_db, run_bad, study_dict, write_study

pytestmark = pytest.mark.bad_input

# --- study values: against the schema, the model (128 positions) and the machine -----------

BAD_VALUES = [
    ("name with /", {"name": "a/b"}, "'name'"),
    ("name ..", {"name": ".."}, "'name'"),
    ("name 300 chars", {"name": "n" * 300}, "'name'"),
    ("name with a newline", {"name": "a\nb"}, "'name'"),
    ("model empty", {"model": ""}, "'model'"),
    ("model null", {"model": None}, "'model'"),
    ("teacher.threads 0", {"teacher": {"steps": 2, "threads": 0}}, "'teacher.threads' must be a whole number >= 1"),
    ("recovery.threads -1", {"recovery": {"threads": -1}}, "'recovery.threads' must be a whole number >= 1"),
    ("eval.batch_size 0", {"eval": {"batch_size": 0}}, "'eval.batch_size' must be a whole number >= 1"),
    ("eval.dev_subset 0", {"eval": {"dev_subset": 0}}, "'eval.dev_subset' must be a whole number >= 1"),
    ("teacher.lr inf", {"teacher": {"lr": float("inf")}}, "'teacher.lr' must be a finite number"),
    ("teacher.weight_decay nan", {"teacher": {"weight_decay": float("nan")}}, "'teacher.weight_decay'"),
    ("latency.min_time_s inf", {"latency": {"min_time_s": float("inf")}}, "'latency.min_time_s'"),
    ("finalize.lr inf", {"finalize": {"lr": float("inf")}}, "'finalize.lr'"),
    ("hardware.seq_len past the positions", {"hardware": {"seq_len": 4096}}, "'hardware.seq_len' 4096"),
    ("teacher.max_seq_len past the positions", {"teacher": {"max_seq_len": 129}}, "128 positions"),
    ("recovery.max_seq_len past the positions", {"recovery": {"max_seq_len": 10000}}, "'recovery.max_seq_len'"),
]


@pytest.mark.parametrize(("name", "change", "says"), BAD_VALUES, ids=[c[0] for c in BAD_VALUES])
def test_values_beyond_the_model_or_schema_stop_every_command(name, change, says, tiny_model_dir, tmp_path, capsys):
    study = write_study(tmp_path, tiny_model_dir)
    study.write_text(yaml.safe_dump({**study_dict(tiny_model_dir), **change}))
    for argv in (["search", str(study)], ["finalize", str(study)], ["report", str(study)],
                 ["export", str(study), "-o", str(tmp_path / "r.yaml")]):
        line = run_bad(capsys, tmp_path, argv, says)  # run_bad: no database or file created
        assert str(study) in line


def test_cuda_on_a_machine_without_one_is_said_before_the_teacher(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    study = write_study(tmp_path, tiny_model_dir, hardware={"seq_len": 16, "device": "cuda"})
    for command in ("search", "finalize"):
        line = run_bad(capsys, tmp_path, [command, str(study)], "'hardware.device'", "no CUDA device")
        assert "space" not in line


# --- storage that keeps nothing, and writes that fail --------------------------------------

@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://", "sqlite:///file:x?mode=memory&uri=true"])
@pytest.mark.parametrize("command", ["search", "report", "export"])
def test_in_memory_storage_is_refused(url, command, tiny_model_dir, tmp_path, capsys):
    study = write_study(tmp_path, tiny_model_dir)
    argv = [command, str(study), "--storage", url, *(["-o", str(tmp_path / "r.yaml")] if command == "export" else [])]
    run_bad(capsys, tmp_path, argv, "in memory", "keeps nothing")


def test_a_failed_database_write_is_one_line(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """Optuna hides a failed trial update ("database or disk is full") behind AssertionError("Should not
    reach"): the chain is searched for the cause."""
    import sqlalchemy.exc

    from autosqueeze import cli

    def full_disk(args):
        try:
            raise sqlalchemy.exc.OperationalError("UPDATE trials", {}, Exception("database or disk is full"))
        except sqlalchemy.exc.OperationalError:
            raise AssertionError("Should not reach.")  # noqa: B904 (as Optuna raises it, in a finally)

    monkeypatch.setattr(cli, "cmd_search", full_disk)
    study = write_study(tmp_path, tiny_model_dir)
    make_db(study)
    run_bad(capsys, tmp_path, ["search", str(study)], "database or disk is full", "run the same command")


# --- inputs built to exhaust -------------------------------------------------------------

def _bomb(levels: int = 9) -> str:
    text = 'l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i in range(1, levels):
        text += f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]\n"
    return text


BOMBS = [("billion laughs", _bomb(), "aliases are expanded"), ("recursive alias", "a: &a [*a]\n", "recursive"),
         ("5 MB", "# " + "x" * (5 * 1024 * 1024) + "\n", "bytes, more than"),
         ("deep nesting", "[" * 3000 + "]" * 3000, "nested deeper")]


@pytest.mark.parametrize(("name", "text", "says"), BOMBS, ids=[c[0] for c in BOMBS])
@pytest.mark.parametrize("where", ["study", "space", "recipe"])
def test_yaml_bombs_are_refused_in_a_second(name, text, says, where, tiny_model_dir, tmp_path, capsys):
    import time

    study = write_study(tmp_path, tiny_model_dir)
    target = {"study": study, "space": tmp_path / "space.yaml", "recipe": tmp_path / "recipe.yaml"}[where]
    target.write_text(text)
    argv = ["apply", str(target), "-o", str(tmp_path / "out")] if where == "recipe" else ["search", str(study)]
    t0 = time.perf_counter()
    run_bad(capsys, tmp_path, argv, str(target), "refused", says)
    assert time.perf_counter() - t0 < 5


def _space(tmp_path: Path, steps: list) -> None:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"steps": steps}))


BAD_SPACES = [
    ("10,000 steps", [{"method": "quantize_dynamic", "id": f"q{i}", "optional": True} for i in range(10_000)],
     "10000 steps, more than the 64"),
    ("int step 0.5", [{"method": "drop_layers", "params": {"keep": {"type": "int", "low": 1, "high": 2, "step": 0.5}}}],
     "whole number, got 0.5"),
    ("infinite high", [{"method": "drop_layers", "params": {"keep": {"type": "int", "low": 1, "high": float("inf")}}}],
     "finite"),
    ("5,000 choices", [{"method": "drop_layers", "params": {"keep": {"type": "categorical",
                                                                       "choices": list(range(5000))}}}],
     "5000 choices"),
]


@pytest.mark.parametrize(("name", "steps", "says"), BAD_SPACES, ids=[c[0] for c in BAD_SPACES])
def test_spaces_too_large_or_malformed_are_refused_up_front(name, steps, says, tiny_model_dir, tmp_path, capsys):
    study = write_study(tmp_path, tiny_model_dir)
    _space(tmp_path, steps)
    run_bad(capsys, tmp_path, ["search", str(study)], "space.yaml", says)


# --- model files: shapes that do not match the bytes, weights that are not finite ----------

def _copy_model(tiny_model_dir: Path, tmp_path: Path) -> Path:
    import shutil

    out = tmp_path / "model"
    shutil.copytree(tiny_model_dir, out)
    return out


def test_a_safetensors_header_whose_shapes_do_not_match_its_bytes(tiny_model_dir, tmp_path, capsys):
    model = _copy_model(tiny_model_dir, tmp_path)
    f = model / "model.safetensors"
    raw = f.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    key = next(k for k, v in header.items() if k != "__metadata__" and len(v["shape"]) == 2)
    header[key]["shape"] = [header[key]["shape"][0] * 2, header[key]["shape"][1]]  # twice the rows, same bytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    f.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    run_bad(capsys, tmp_path, ["bench", str(model)], str(f), key, "bytes")


def test_weights_that_are_all_nan_are_refused_on_load(tiny_model_dir, tmp_path, capsys, isolated_cache, glue_dir):
    import torch
    from transformers import AutoModelForSequenceClassification

    model = _copy_model(tiny_model_dir, tmp_path)
    m = AutoModelForSequenceClassification.from_pretrained(model)
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(float("nan"))
    m.save_pretrained(model)
    run_bad(capsys, tmp_path, ["finetune", "--task", "sst2", "--model", str(model), "--data-dir", str(glue_dir),
                               "--out", str(tmp_path / "t"), "--max-steps", "1"], "not finite", str(model))


# --- sequence lengths of bench and recipes against the model --------------------------------

def test_bench_seq_len_beyond_the_positions(tiny_model_dir, tmp_path, capsys):
    run_bad(capsys, tmp_path, ["bench", str(tiny_model_dir), "--seq-len", "4096"], "--seq-len 4096", "128 positions")


def test_a_recipe_seq_len_beyond_its_model_is_refused_before_the_teacher(tiny_model_dir, tmp_path, capsys,
                                                                        isolated_cache, monkeypatch):
    from autosqueeze import teacher

    def no_training(*args, **kwargs):
        raise AssertionError("a teacher was trained for a recipe its model cannot take")

    monkeypatch.setattr(teacher, "train_teacher", no_training)
    recipe = tmp_path / "recipe.yaml"
    for data in ({"recovery": {"max_seq_len": 4096}}, {}):
        profile = {} if data else {"seq_len": 4096}
        recipe.write_text(yaml.safe_dump({"steps": [{"method": "drop_layers", "params": {"keep": 1}}],
                                          "base_model": str(tiny_model_dir), "data": data, "profile": profile}))
        run_bad(capsys, tmp_path, ["apply", str(recipe), "-o", str(tmp_path / "out")], "4096", "128 positions")


def test_a_recipe_for_another_task_than_its_teacher_is_refused_before_loading(tiny_model_dir, tmp_path, capsys,
                                                                             isolated_cache):
    teacher_dir = tmp_path / "teacher"
    teacher_dir.mkdir()
    (teacher_dir / "teacher.json").write_text(json.dumps({"task": "rte", "model": str(tiny_model_dir)}))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"steps": [{"method": "drop_layers", "params": {"keep": 1}}],
                                      "base_model": str(tiny_model_dir), "task": "sst2"}))
    run_bad(capsys, tmp_path, ["apply", str(recipe), "-o", str(tmp_path / "out"), "--teacher", str(teacher_dir)],
            "rte", "sst2")


def test_a_space_with_nothing_new_to_propose_stops_as_exhausted(tiny_model_dir, glue_dir, tmp_path, capsys,
                                                                 isolated_cache, monkeypatch):
    from autosqueeze.cli import main
    from autosqueeze.search import study as study_module

    def no_references(sc):  # what a trial is compared with does not matter here
        point = {"metric": 0.5, "metrics": {sc.main_metric: 0.5}, "dev_examples": len(sc.data.dev)}
        return {"teacher": point, "int8_baseline": {**point, "runtime": "torch"}}

    monkeypatch.setattr(study_module, "reference_points", no_references)
    monkeypatch.setattr(study_module, "MAX_REPEATS_IN_A_ROW", 3)
    study = write_study(tmp_path, tiny_model_dir, trials=50)
    _space(tmp_path, [{"method": "quantize_dynamic"}])  # one recipe, always on
    assert main(["search", str(study), "--data-dir", str(glue_dir)]) == 0
    out = capsys.readouterr().out
    assert "space exhausted: 1 distinct recipes" in out
    assert sum(line.startswith("trial ") for line in out.splitlines()) == 4, out  # one trial, three repeats


def test_a_tokenizer_with_ids_beyond_the_embedding_table_is_refused_before_training(
        tiny_model_dir, glue_dir, tmp_path, capsys, isolated_cache):
    model = _copy_model(tiny_model_dir, tmp_path)
    rows = json.loads((model / "config.json").read_text())["vocab_size"]
    (model / "tokenizer.json").unlink()  # vocab.txt alone: ten more words than the table has rows
    with open(model / "vocab.txt", "a") as f:
        f.write("".join(f"extra{i}\n" for i in range(10)))
    run_bad(capsys, tmp_path, ["finetune", "--task", "sst2", "--model", str(model), "--data-dir", str(glue_dir),
                               "--out", str(tmp_path / "t"), "--max-steps", "1"], f"vocab_size {rows}", str(model))
