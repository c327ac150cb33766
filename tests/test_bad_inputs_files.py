"""Bad data rows, model folders and study databases: one line naming the file, exit 2, nothing touched.

Also the writers that must never lose what the user has: atomic folders and files, the
teacher cache key, permissions. In-process and on the tiny local model (no training).
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import torch

from autosqueeze.atomic import atomic_dir, clean_leftovers, write_text_atomic
from autosqueeze.errors import ModelFolderError, UserError
from tests.bad_inputs_helpers import make_db, run_bad, write_study
from tests.fixtures_glue import write_glue

pytestmark = pytest.mark.bad_input  # `python -m pytest -m bad_input` runs this set

# --- data rows --------------------------------------------------------------------------

SST2_HEADER = b"sentence\tlabel\n"
BAD_DATA = [  # (case, split file, bytes, what the line must say besides the file)
    ("short row", "train", SST2_HEADER + b"good one\t1\njust text\n", ":3:"),
    ("extra column", "train", SST2_HEADER + b"good one\t1\nstray\ttab\t0\n", ":3:"),
    ("unknown label", "dev", SST2_HEADER + b"good one\t1\nbad one\tpositive\n", ":3:"),
    ("empty label", "dev", SST2_HEADER + b"good one\t\n", ":2:"),
    ("no rows", "train", b"", "empty"),
    ("blank lines only", "dev", b"\n\n", "empty"),
    ("header only", "train", SST2_HEADER, "only a header"),
    ("header without label", "dev", b"sentence\tscore\ngood\t1\n", "'label'"),
    ("not UTF-8", "train", SST2_HEADER + b"good\t1\ncaf\xe9 au lait\t0\n", ":3:"),
    ("binary", "dev", b"\x00\x01\x02\xff\xfe", "UTF-8"),
    ("NUL byte in a row", "dev", SST2_HEADER + b"good\t1\ngood\x00one\t1\n", ":3:"),  # was: read as text, exit 0
    ("UTF-16 without BOM", "train", "sentence\tlabel\ngood\t1\n".encode("utf-16-le"), ":1:"),
]


@pytest.mark.parametrize(("case", "split", "data", "says"), BAD_DATA, ids=[c[0] for c in BAD_DATA])
def test_bad_data_rows_name_the_file_and_row(case, split, data, says, tiny_model_dir, tmp_path, capsys,
                                             isolated_cache):
    glue = write_glue(tmp_path / "glue")
    bad = glue / "SST-2" / f"{split}.tsv"
    bad.write_bytes(data)
    run_bad(capsys, tmp_path, ["finetune", "--task", "sst2", "--model", str(tiny_model_dir), "--data-dir", str(glue),
                               "--out", str(tmp_path / "teacher"), "--max-steps", "1"], str(bad), says)


@pytest.mark.parametrize("score", ["nan", "inf", "-Infinity"])
def test_a_regression_score_that_is_not_finite_names_the_file_and_row(score, tiny_model_dir, tmp_path, capsys,
                                                                      isolated_cache):
    glue = write_glue(tmp_path / "glue")
    bad = glue / "STS-B" / "train.tsv"
    bad.write_text(bad.read_text().replace("\t0.5\n", f"\t{score}\n"))  # was: an internal error, loss nan at step 0
    run_bad(capsys, tmp_path, ["finetune", "--task", "stsb", "--model", str(tiny_model_dir), "--data-dir", str(glue),
                               "--out", str(tmp_path / "teacher"), "--max-steps", "1"], f"{bad}:4:", "not a finite")


def test_a_missing_data_file_is_one_line_before_training(tiny_model_dir, tmp_path, capsys, isolated_cache):
    glue = write_glue(tmp_path / "glue")
    (glue / "RTE" / "dev.tsv").unlink()
    run_bad(capsys, tmp_path, ["finetune", "--task", "rte", "--model", str(tiny_model_dir), "--data-dir", str(glue),
                               "--out", str(tmp_path / "teacher")], "dev.tsv")


# --- model folders ----------------------------------------------------------------------

def _broken_model(src: Path, dst: Path, how: str) -> Path:
    shutil.copytree(src, dst)
    if how == "no tokenizer":
        for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (dst / name).unlink(missing_ok=True)
    elif how == "truncated weights":
        data = (dst / "model.safetensors").read_bytes()
        (dst / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "weights not safetensors":
        (dst / "model.safetensors").write_bytes(b"<html>404 not found</html>")
    elif how == "no weights":
        (dst / "model.safetensors").unlink()
    elif how == "config not JSON":
        (dst / "config.json").write_text("{'model_type': 'bert',")
    elif how == "config unknown model_type":
        (dst / "config.json").write_text('{"model_type": "bart-of-darkness"}')
    elif how == "config without model_type":
        (dst / "config.json").write_text('{"hidden_size": 32}')
    elif how == "no config":
        (dst / "config.json").unlink()
    elif how == "config value of the wrong type":  # was: an internal error (transformers' strict dataclass)
        cfg = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": "three"}))
    elif how in ("config vocab_size mismatch", "config intermediate_size mismatch"):
        cfg = json.loads((dst / "config.json").read_text())  # was: those weights silently re-initialised
        key = how.split()[1]
        (dst / "config.json").write_text(json.dumps({**cfg, key: cfg[key] + 16}))
    elif how == "pickle only":
        import torch
        from safetensors.torch import load_file

        torch.save(load_file(dst / "model.safetensors"), dst / "pytorch_model.bin")
        (dst / "model.safetensors").unlink()
    return dst


MODEL_CASES = [("no tokenizer", "tokenizer"), ("truncated weights", "truncated"),
               ("weights not safetensors", "not a safetensors"), ("no weights", "no weights"),
               ("config not JSON", "not valid JSON"), ("config unknown model_type", "bart-of-darkness"),
               ("config without model_type", "model_type"), ("no config", "config.json"),
               ("config value of the wrong type", "num_hidden_layers"),
               ("pickle only", "--allow-pickle"),
               ("config vocab_size mismatch", "word_embeddings.weight has shape"),
               ("config intermediate_size mismatch", "intermediate.dense")]


@pytest.fixture(scope="module")
def broken_models(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("broken_models")
    return {how: _broken_model(tiny_model_dir, root / how.replace(" ", "_"), how) for how, _ in MODEL_CASES}


@pytest.mark.parametrize(("how", "says"), MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_bad_model_folders_are_one_line_before_training(how, says, broken_models, glue_dir, tmp_path, capsys,
                                                        isolated_cache):
    model = broken_models[how]
    run_bad(capsys, tmp_path, ["finetune", "--task", "sst2", "--model", str(model), "--data-dir", str(glue_dir),
                               "--out", str(tmp_path / "teacher")], str(model), says)


@pytest.mark.parametrize("how", ["truncated weights", "config unknown model_type", "pickle only", "no weights"])
def test_bench_refuses_bad_model_folders_in_one_line(how, broken_models, tmp_path, capsys):
    model = broken_models[how]
    run_bad(capsys, tmp_path, ["bench", str(model), "--seq-len", "8", "--repeats", "3"], str(model))


@pytest.mark.parametrize(("how", "says"), [c for c in MODEL_CASES if c[0] != "no config"],
                         ids=[c[0] for c in MODEL_CASES if c[0] != "no config"])
def test_a_search_on_a_bad_model_leaves_no_database(how, says, broken_models, glue_dir, tmp_path, capsys,
                                                    isolated_cache):
    study = write_study(tmp_path, broken_models[how])
    run_bad(capsys, tmp_path, ["search", str(study), "--data-dir", str(glue_dir)], says)
    assert not (tmp_path / "t.db").exists()


def test_the_library_refuses_a_folder_without_tokenizer_and_pickle_unless_allowed(broken_models):
    from autosqueeze.models import check_model_folder, load_tokenizer

    with pytest.raises(ModelFolderError, match="no tokenizer files"):
        load_tokenizer(str(broken_models["no tokenizer"]))
    with pytest.raises(ModelFolderError, match="--allow-pickle"):
        check_model_folder(broken_models["pickle only"])
    check_model_folder(broken_models["pickle only"], allow_pickle=True)  # the flag says otherwise


@pytest.mark.parametrize("arch", ["bert", "modernbert"])
def test_a_new_head_is_expected_but_an_encoder_weight_that_does_not_fit_is_refused(arch, tiny_model_dir, tmp_path,
                                                                                   caplog):
    import logging

    import transformers

    from autosqueeze.models import load_classifier
    from tests import tiny

    folder = tiny.save_model_dir(arch, tiny_model_dir / "vocab.txt", tmp_path / arch, layers=1)
    config = json.loads((folder / "config.json").read_text())
    with caplog.at_level(logging.INFO, logger="autosqueeze"):  # a 2-label head, a 3-label task: a new head
        model = load_classifier(str(folder), 3)
    assert model.config.num_labels == 3
    heads = [r.message for r in caplog.records if "new classification head" in r.message]
    assert len(heads) == 1 and "for 3 label(s)" in heads[0] and "classifier.weight" in heads[0], caplog.text
    reference = transformers.AutoModelForSequenceClassification.from_pretrained(folder)
    backbone = tiny.adapter(model).base_attr
    for name, tensor in reference.state_dict().items():  # the encoder is the checkpoint's
        if name.startswith(backbone + ".") and ".pooler." not in name:
            assert torch.equal(model.state_dict()[name], tensor), name
    for key in ("vocab_size", "intermediate_size"):
        (folder / "config.json").write_text(json.dumps({**config, key: config[key] + 8}))
        with pytest.raises(ModelFolderError) as err:
            load_classifier(str(folder), 2)
        line = str(err.value)
        assert "\n" not in line and str(folder) in line and "make config.json match the weights" in line, line
        assert ("embeddings" if key == "vocab_size" else "mlp" if arch == "modernbert" else "intermediate") in line


# --- study databases --------------------------------------------------------------------

def _bad_db(tmp_path: Path, study: Path, how: str) -> Path:
    db = tmp_path / "t.db"
    if how in ("truncated", "zeroed page"):
        make_db(study)
        data = bytearray(db.read_bytes())
        if how == "truncated":
            data = data[: len(data) // 2]
        else:
            data[4096 + 100: 4096 + 600] = bytes(500)
        db.write_bytes(bytes(data))
    elif how == "text file":
        db.write_text("name,value\na,1\n")
    elif how == "other SQLite database":
        import sqlite3

        with sqlite3.connect(db) as con:
            con.execute("create table birds (name text)")
        con.close()
    elif how == "folder":
        db.mkdir()
    elif how == "another Optuna's schema":  # was: an internal error (Optuna's RuntimeError)
        import sqlite3

        make_db(study)
        with sqlite3.connect(db) as con:
            con.execute("update alembic_version set version_num = 'v99.0.0.a'")
        con.close()
    return db


DB_CASES = [("truncated", "truncated"), ("text file", "not a SQLite database"),
            ("other SQLite database", "something else"), ("folder", "not a file"),
            ("another Optuna's schema", "Optuna this one cannot read")]


@pytest.mark.parametrize(("how", "says"), DB_CASES, ids=[c[0] for c in DB_CASES])
@pytest.mark.parametrize("command", ["search", "report", "export"])
def test_bad_study_databases_are_one_line_and_unchanged(how, says, command, tiny_model_dir, tmp_path, capsys):
    study = write_study(tmp_path, tiny_model_dir)
    db = _bad_db(tmp_path, study, how)
    extra = ["-o", str(tmp_path / "r.yaml")] if command == "export" else []
    for storage in ([], ["--storage", f"sqlite:///{db}"]):
        run_bad(capsys, tmp_path, [command, str(study), *extra, *storage], str(db), says)


@pytest.mark.parametrize("command", ["report", "export"])
def test_report_and_export_on_a_missing_study_create_no_database(command, tiny_model_dir, tmp_path, capsys):
    study = write_study(tmp_path, tiny_model_dir)
    extra = ["-o", str(tmp_path / "r.yaml")] if command == "export" else []
    run_bad(capsys, tmp_path, [command, str(study), *extra], "autosqueeze search")
    assert not (tmp_path / "t.db").exists()
    other = tmp_path / "other.db"
    run_bad(capsys, tmp_path, [command, str(study), *extra, "--storage", f"sqlite:///{other}"], str(other))


@pytest.mark.parametrize("command", ["report", "export"])
def test_report_and_export_on_an_empty_database_file_leave_it_empty(command, tiny_model_dir, tmp_path, capsys):
    study = write_study(tmp_path, tiny_model_dir)
    db = tmp_path / "t.db"
    db.write_bytes(b"")  # was: Optuna's tables written into it, then "no study"
    extra = ["-o", str(tmp_path / "r.yaml")] if command == "export" else []
    run_bad(capsys, tmp_path, [command, str(study), *extra], str(db), "empty file")


@pytest.fixture()
def read_only():
    """Makes paths read-only for this process (chmod; as root, whom modes do not stop, chattr +i); undone after."""
    done: list[Path] = []
    root = os.geteuid() == 0

    def make(path: Path) -> Path:
        if root and (not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(path)],
                                                                  capture_output=True).returncode):
            pytest.skip("running as root, and chattr +i is not available to make a path read-only")
        if not root:
            path.chmod(path.stat().st_mode & ~0o222)
        done.append(path)
        return path

    yield make
    for path in reversed(done):
        if root:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        else:
            path.chmod(path.stat().st_mode | 0o200)


@pytest.mark.parametrize("what", ["database", "its folder", "the folder of a new study", "--storage file"])
def test_a_read_only_study_database_is_one_line_before_any_work(what, tiny_model_dir, tmp_path, capsys, read_only):
    study = write_study(tmp_path, tiny_model_dir)
    db = tmp_path / "t.db" if what == "the folder of a new study" else make_db(study)
    read_only(tmp_path if "folder" in what else db)
    storage = ["--storage", f"sqlite:///{db}"] if what == "--storage file" else []
    line = run_bad(capsys, tmp_path, ["search", str(study), *storage], str(db), "read-only", "--storage")
    assert ("folder" in what) == (f"folder {tmp_path} is read-only" in line)


def test_export_from_a_database_without_that_study_is_one_line(tiny_model_dir, tmp_path, capsys):
    study = write_study(tmp_path, tiny_model_dir)
    make_db(study)
    renamed = study.parent / "renamed.yaml"
    renamed.write_text(study.read_text().replace("name: t", "name: u").replace("search_space", "storage: t.db\n"
                                                                                "search_space"))
    run_bad(capsys, tmp_path, ["export", str(renamed), "-o", str(tmp_path / "r.yaml")], "no study 'u'")


# --- writers that never lose what is there ------------------------------------------------

def test_atomic_dir_keeps_the_old_folder_until_the_new_one_is_in(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("killed while writing")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "old.txt").read_text() == "old"
    with atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["out"]


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_kill_between_the_renames_is_repaired_by_the_next_write(tmp_path):
    out = tmp_path / "out"
    pid = _dead_pid()
    old = tmp_path / f".out.old-{pid}-abcd"  # the old folder moved aside, the new one never moved in
    old.mkdir()
    (old / "old.txt").write_text("old")
    half = tmp_path / f".out.tmp-{pid}-efgh"
    half.mkdir()
    alive = tmp_path / f".out.tmp-{os.getppid()}-ijkl"  # a live writer's folder is left alone
    alive.mkdir()
    clean_leftovers(out)
    assert (out / "old.txt").read_text() == "old" and not old.exists() and not half.exists() and alive.exists()


def test_written_folders_and_files_follow_the_umask(tmp_path):
    before = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "a.txt").write_text("a")
        write_text_atomic(tmp_path / "r.yaml", "steps: []\n")
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "r.yaml").stat().st_mode) == 0o644


def test_the_teacher_cache_key_depends_on_the_training_data(tmp_path):
    from autosqueeze.tasks import get_task
    from autosqueeze.teacher import teacher_key, train_data_id
    from autosqueeze.train import TrainSettings

    task, settings = get_task("sst2"), TrainSettings(steps=2)
    a, b = write_glue(tmp_path / "a"), write_glue(tmp_path / "b")
    assert train_data_id(task, str(a)) == train_data_id(task, str(b))  # the same rows: the same teacher
    with open(b / "SST-2" / "train.tsv", "a") as f:
        f.write("another sentence\t1\n")
    keys = {teacher_key("m", task, settings, train_data_id(task, str(d))) for d in (a, b)}
    assert len(keys) == 2


def test_user_errors_are_one_family():
    from autosqueeze.errors import USER_ERRORS, ConfigError, DataError, StorageError
    from autosqueeze.methods import MethodError
    from autosqueeze.recipe import RecipeError
    from autosqueeze.search.space import SpaceError

    for cls in (ConfigError, DataError, ModelFolderError, StorageError, RecipeError, MethodError, SpaceError):
        assert issubclass(cls, UserError) and issubclass(cls, USER_ERRORS)
    assert issubclass(DataError, ValueError)  # callers catching ValueError keep working


# --- what a successful run keeps and records ----------------------------------------------

def test_finetune_overwrite_replaces_a_folder_only_when_asked(tiny_model_dir, glue_dir, tmp_path, capsys,
                                                              isolated_cache):
    from autosqueeze.cli import main

    out = tmp_path / "teacher"
    out.mkdir()
    (out / "old.txt").write_text("old")
    argv = ["finetune", "--task", "sst2", "--model", str(tiny_model_dir), "--data-dir", str(glue_dir), "--out",
            str(out), "--max-steps", "1", "--batch-size", "2", "--max-seq-len", "16"]
    run_bad(capsys, tmp_path, argv, "--overwrite")
    assert main([*argv, "--overwrite"]) == 0
    assert not (out / "old.txt").exists() and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no leftovers beside it


def test_the_search_records_its_machine_once_and_the_export_carries_it(tiny_model_dir, glue_dir, tmp_path, capsys,
                                                                       isolated_cache, monkeypatch):
    import optuna
    import yaml

    from autosqueeze.cli import main

    # the study's ONNX Runtime int8 reference in seconds, not tens of them (test_onnx covers the dynamo exporter)
    monkeypatch.setenv("AUTOSQUEEZE_ONNX_EXPORTER", "torchscript")
    study = write_study(tmp_path, tiny_model_dir, trials=1)
    assert main(["search", str(study), "--data-dir", str(glue_dir)]) == 0
    attrs = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 't.db'}").user_attrs
    assert attrs["fingerprint"]["cpu"]["model"] and attrs["fingerprint"]["threads"] == 2
    assert main(["export", str(study), "-o", str(tmp_path / "r.yaml")]) == 0
    fingerprint = yaml.safe_load((tmp_path / "r.yaml").read_text())["profile"]["fingerprint"]
    assert fingerprint["source"] == "recorded by the search" and fingerprint["cpu"] == attrs["fingerprint"]["cpu"]
