"""Outputs never land on what a study owns: export, report, apply and finetune pointed at the study
file, its search space, its database, the teacher cache, the data or the model folder (directly,
through a link, a hard link or ``..``, or at a folder holding or inside one of them) exit 2 in one
line and leave every byte as it was, ``--overwrite`` or not.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from tests.bad_inputs_helpers import make_db, run_bad, study_dict, write_space

pytestmark = pytest.mark.bad_input

RECIPE = {"steps": [{"method": "drop_layers", "version": 1, "params": {"keep": 1}}]}


@pytest.fixture()
def owned(tiny_model_dir, glue_dir, isolated_cache, tmp_path, monkeypatch) -> dict[str, Path]:
    """A study folder (study file, space, database), its model folder and data, a cached teacher and
    a recipe; the working folder is tmp_path."""
    from autosqueeze.tasks.loaders import split_path

    monkeypatch.chdir(tmp_path)
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    folder = tmp_path / "study"
    folder.mkdir()
    write_space(folder)
    study = folder / "study.yaml"
    study.write_text(yaml.safe_dump(study_dict(model, data_dir=str(glue_dir))))
    db = make_db(study)
    teacher = isolated_cache / "teachers" / "abc"
    teacher.mkdir(parents=True)
    (teacher / "model.safetensors").write_bytes(b"weights")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    return {"study": study, "space": folder / "space.yaml", "db": db, "folder": folder, "model": model,
            "data": glue_dir, "sst2": split_path("sst2", "train", str(glue_dir)).parent,
            "teacher": teacher, "cache": isolated_cache, "recipe": recipe}


def _target(o: dict[str, Path], tmp_path: Path, how: str) -> Path:
    """The output path of case ``how``: a key of ``owned``, or a way of reaching one."""
    if how == "db through a link":
        link = tmp_path / "link.yaml"
        link.symlink_to(o["db"])
        return link
    if how == "db hard-linked":
        hard = tmp_path / "hard.yaml"
        os.link(o["db"], hard)
        return hard
    if how == "db through ..":
        return o["folder"] / ".." / "study" / "t.db"
    if how == "db journal":
        return o["db"].with_name("t.db-journal")
    if how == "inside the teacher":
        return o["teacher"] / "new"
    if how == "inside the data":  # the folder of the task's TSV files
        return o["sst2"] / "new"
    if how == "inside the model":
        return o["model"] / "new"
    if how == "holding the study":
        return tmp_path
    return o[how]


EXPORT = ["study", "space", "db", "db through a link", "db hard-linked", "db through ..", "db journal",
          "inside the teacher", "inside the data", "inside the model", "holding the study"]


@pytest.mark.parametrize("how", EXPORT)
@pytest.mark.parametrize("overwrite", [False, True], ids=["", "--overwrite"])
def test_export_never_writes_over_what_the_study_owns(how, overwrite, owned, tmp_path, capsys):
    out = _target(owned, tmp_path, how)
    argv = ["export", str(owned["study"]), "-o", str(out), *(["--overwrite"] if overwrite else [])]
    run_bad(capsys, tmp_path, argv, "-o", "outputs never replace what the work reads")


REPORT = ["folder", "teacher", "cache", "data", "model", "inside the teacher", "inside the data",
          "holding the study"]


@pytest.mark.parametrize("how", REPORT)
def test_report_never_writes_into_what_the_study_owns(how, owned, tmp_path, capsys):
    out = _target(owned, tmp_path, how)
    run_bad(capsys, tmp_path, ["report", str(owned["study"]), "--out", str(out), "--overwrite"], "--out")


APPLY = [("the teacher", "teacher", ["--teacher", "T"]),
         ("inside the teacher", "inside the teacher", ["--teacher", "T"]),
         ("inside the teacher cache", "inside the teacher", []),
         ("inside the data", "inside the data", ["--data-dir", "D"]),
         ("the study folder", "folder", []), ("the database", "db", [])]


@pytest.mark.parametrize(("name", "how", "extra"), APPLY, ids=[c[0] for c in APPLY])
def test_apply_never_writes_over_what_it_reads(name, how, extra, owned, tmp_path, capsys):
    recipe = owned["recipe"]
    extra = [{"T": str(owned["teacher"]), "D": str(owned["data"])}.get(a, a) for a in extra]
    run_bad(capsys, tmp_path, ["apply", str(recipe), "-o", str(_target(owned, tmp_path, how)), *extra], "-o")


FINETUNE = ["folder", "model", "data", "teacher", "inside the teacher", "inside the model", "db", "study"]


@pytest.mark.parametrize("how", FINETUNE)
def test_finetune_overwrite_never_replaces_a_study_model_or_data(how, owned, tmp_path, capsys):
    argv = ["finetune", "--task", "sst2", "--model", str(owned["model"]), "--data-dir", str(owned["data"]),
            "--out", str(_target(owned, tmp_path, how)), "--overwrite", "--max-steps", "1"]
    run_bad(capsys, tmp_path, argv, "--out")


def test_export_replaces_an_existing_file_only_with_overwrite(owned, tmp_path, capsys):
    out = tmp_path / "mine.yaml"
    out.write_text("my notes\n")
    run_bad(capsys, tmp_path, ["export", str(owned["study"]), "-o", str(out)], "exists", "--overwrite")
    assert out.read_text() == "my notes\n"
