"""Shared helpers of the bad-input tests: run the CLI in-process, snapshot folders byte for byte."""
from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from autosqueeze.cli import main

FAST_LATENCY = {"warmup": 1, "repeats": 3, "min_time_s": 0.0, "idle_wait_s": 0.0}


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: relative path -> SHA-256 of its bytes ("dir" for folders)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def run_bad(capsys: pytest.CaptureFixture[str], root: Path, argv: list[str], *must_say: str) -> str:
    """Run the CLI on a bad input: exit 2, exactly one line on stderr that says each of
    ``must_say``, and nothing under ``root`` created, changed or removed. Returns the line."""
    capsys.readouterr()
    before = snapshot(root)
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert rc == 2, f"exit {rc}; stderr:\n{err}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert "error:" in lines[0] and "Traceback" not in err
    for text in must_say:
        assert text in lines[0], f"{text!r} not in: {lines[0]}"
    assert snapshot(root) == before, "a bad input changed files"
    return lines[0]


def write_space(folder: Path) -> Path:
    space = folder / "space.yaml"
    space.write_text(yaml.safe_dump({"steps": [
        {"method": "drop_layers", "optional": True, "params": {"keep": {"type": "int", "low": 1, "high": 2}}},
        {"method": "quantize_dynamic", "optional": True},
    ]}))
    return space


def study_dict(model: Path, **extra: object) -> dict[str, object]:
    return {"name": "t", "task": "sst2", "model": str(model), "search_space": "space.yaml", "trials": 2,
            "sampler": "random", "teacher": {"steps": 2, "batch_size": 4, "max_seq_len": 16},
            "recovery": {"batch_size": 4, "max_seq_len": 16}, "hardware": {"seq_len": 16},
            "latency": FAST_LATENCY, **extra}


def write_study(folder: Path, model: Path, **extra: object) -> Path:
    write_space(folder)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study_dict(model, **extra)))
    return path


_TEMPLATE_DBS: dict[tuple[str, str], Path] = {}  # (study name, task) -> a database made once per session


def make_db(study: Path) -> Path:
    """The study's SQLite database with the study in it and one finished trial (no search run).

    Creating an Optuna database (tables, migrations) costs a fraction of a second and most
    bad-input tests need one, so it is made once per study name and task, then copied."""
    from autosqueeze.study_config import load_study_config

    config = load_study_config(study)
    db = Path(config.storage_url.split(":///", 1)[1])
    key = (config.name, config.task)
    if key not in _TEMPLATE_DBS or not _TEMPLATE_DBS[key].is_file():
        import optuna

        from autosqueeze.search.study import open_study

        folder = tempfile.mkdtemp(prefix="autosqueeze-template-db-")
        atexit.register(shutil.rmtree, folder, True)
        template = Path(folder) / db.name
        s = open_study(config, f"sqlite:///{template}")
        s.add_trial(optuna.trial.create_trial(values=[0.5, 1.0], user_attrs={"status": "complete"}))
        _TEMPLATE_DBS[key] = template
    shutil.copyfile(_TEMPLATE_DBS[key], db)
    return db
