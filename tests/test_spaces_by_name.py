"""Built-in search spaces by name (``search_space: quick``), a relative path still wins, and the
objectives' metric names on every study."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from autosqueeze.builtin_spaces import builtin_space, builtin_space_names, builtin_spaces_dir, resolve_space
from autosqueeze.search.space import load_space
from autosqueeze.study_config import ConfigError, load_study_config

HOME = Path(__file__).resolve().parents[1] / "search_spaces"


def study_file(folder: Path, search_space: str, task: str = "sst2") -> Path:
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "task": task, "search_space": search_space, "trials": 1,
                                    "storage": "t.db"}))
    return path


def test_every_file_in_search_spaces_is_a_builtin():
    assert builtin_space_names() == sorted(p.stem for p in HOME.glob("*.yaml"))
    assert {"quick", "full"} <= set(builtin_space_names())
    assert builtin_space("quick").read_text() == (HOME / "quick.yaml").read_text()
    assert builtin_spaces_dir() is not None


def test_study_outside_the_repository_names_a_builtin_space(tmp_path):
    config = load_study_config(study_file(tmp_path, "quick"))
    assert config.search_space.name == "quick.yaml" and config.search_space.is_file()
    assert [s.method for s in load_space(config.search_space).steps] == \
        [s.method for s in load_space(HOME / "quick.yaml").steps]
    assert load_study_config(study_file(tmp_path, "full")).search_space.name == "full.yaml"


def test_a_relative_path_still_works_and_wins_over_a_name(tmp_path):
    shutil.copy(HOME / "pruning.yaml", tmp_path / "quick")  # a local file called like a built-in
    assert resolve_space("quick", tmp_path) == (tmp_path / "quick").resolve()
    (tmp_path / "spaces").mkdir()
    shutil.copy(HOME / "quick.yaml", tmp_path / "spaces" / "mine.yaml")
    assert load_study_config(study_file(tmp_path, "spaces/mine.yaml")).search_space == \
        (tmp_path / "spaces" / "mine.yaml").resolve()


@pytest.mark.parametrize("value", ["nowhere", "nowhere.yaml", "../quick"])
def test_unknown_names_are_config_errors_that_list_the_builtins(tmp_path, value):
    with pytest.raises(ConfigError, match=r"does not exist .*quick"):
        load_study_config(study_file(tmp_path, value))
    with pytest.raises(FileNotFoundError, match="built-in"):
        builtin_space("nowhere")


def test_every_study_names_its_objectives(tmp_path):
    from autosqueeze.search.study import open_study

    config = load_study_config(study_file(tmp_path, "quick", task="rte"))
    study = open_study(config)
    assert study.metric_names == ["accuracy", "latency_ms"]
    again = open_study(config, create=False)  # read back from the storage
    assert again.metric_names == ["accuracy", "latency_ms"]
