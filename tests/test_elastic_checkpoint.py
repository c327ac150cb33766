"""A killed elastic training run continues from its checkpoint and gives the same student as a run
that was never stopped; a checkpoint of other settings is ignored; the store removes it when done."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from autosqueeze.elastic import ElasticSettings, train_elastic
from autosqueeze.elastic import store as estore
from autosqueeze.elastic.checkpoint import STATE, Checkpointing
from autosqueeze.errors import ConfigError
from tests.tiny import batches, tiny_bert

SMALL = dict(min_layers=1, min_heads=1, min_ffn=8, ffn_step=8, importance_batches=1, steps=6)


class Killed(RuntimeError):
    pass


def _data():
    task = SimpleNamespace(name="sst2", num_labels=2, is_regression=False)
    return SimpleNamespace(task=task, train=list(range(40)), batch_size=4, max_seq_len=12,
                           train_batches=lambda n, seed: batches(n, seed))


def _run(settings, checkpoint=None, kill_after=None):
    teacher = tiny_bert(layers=3, heads=4, hidden=32, ffn=64, seed=1)

    def progress(what, done, total, stats):
        if kill_after is not None and done == kill_after:
            raise Killed(f"killed after step {done}")

    return train_elastic(teacher, _data(), settings, progress, checkpoint=checkpoint)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("exits", [False, True])
def test_a_resumed_run_gives_the_same_student_as_an_unbroken_one(tmp_path, exits):
    settings = ElasticSettings(exits=exits, **SMALL)  # dropout on: the torch random state matters too
    whole, info = _run(settings)
    ck = Checkpointing(tmp_path / "ck", {"key": "k"}, every_s=0)
    with pytest.raises(Killed):
        _run(settings, ck, kill_after=4)  # saved after step 3 (the progress call comes before the save)
    assert (tmp_path / "ck" / STATE).is_file()
    import json

    assert json.loads((tmp_path / "ck" / STATE).read_text())["step"] == 3
    resumed, info2 = _run(settings, Checkpointing(tmp_path / "ck", {"key": "k"}, every_s=0))
    a, b = _state(whole), _state(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert info2["loss"] == info["loss"] and info2["steps"] == info["steps"] == 6


def test_a_checkpoint_of_other_settings_is_ignored(tmp_path, caplog):
    settings = ElasticSettings(**SMALL)
    with pytest.raises(Killed):
        _run(settings, Checkpointing(tmp_path / "ck", {"key": "other"}, every_s=0), kill_after=4)
    whole, _ = _run(settings)
    with caplog.at_level("WARNING"):
        fresh, _ = _run(settings, Checkpointing(tmp_path / "ck", {"key": "k"}, every_s=0))
    assert "other settings" in caplog.text
    assert all(torch.equal(x, y) for x, y in zip(_state(whole).values(), _state(fresh).values()))


def test_no_checkpoint_is_written_after_the_last_step_or_before_its_time(tmp_path):
    ck = Checkpointing(tmp_path / "ck", {"key": "k"}, every_s=3600)
    _run(ElasticSettings(**SMALL), ck)
    assert not (tmp_path / "ck").exists()
    assert not Checkpointing(tmp_path / "x", {}, every_s=0).due(6, 6)


def test_checkpoint_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv("AUTOSQUEEZE_CHECKPOINT_S", "0")
    assert estore.checkpoint_every_s() == 0
    monkeypatch.delenv("AUTOSQUEEZE_CHECKPOINT_S")
    assert estore.checkpoint_every_s() == 600
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv("AUTOSQUEEZE_CHECKPOINT_S", bad)
        with pytest.raises(ConfigError, match="AUTOSQUEEZE_CHECKPOINT_S must be a number of seconds >= 0"):
            estore.checkpoint_every_s()
