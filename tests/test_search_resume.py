"""Killing a search at any moment loses no completed trial; the same command resumes.

The search runs in a subprocess (the real CLI) on the tiny model and the GLUE fixtures; it
is killed with SIGKILL, or interrupted with SIGINT (Ctrl-C), while a trial is training.
"""
from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from autosqueeze.search.study import run_search
from autosqueeze.study_config import load_study_config
from autosqueeze.tasks import get_task
from autosqueeze.teacher import get_teacher
from tests.test_search_trials import load, write_study

REPO = Path(__file__).resolve().parents[1]
SLOW_SPACE = [  # trials of a few seconds, so the kill lands mid-training; a continuous knob makes every
    # recipe new (a recipe sampled again would reuse its stored result in no time)
    {"method": "drop_layers", "params": {"keep": {"type": "int", "low": 1, "high": 2}}},
    {"method": "distill", "params": {"steps": 600, "temperature": {"type": "float", "low": 1.0, "high": 4.0}}},
]


def states(db: Path) -> dict[int, str]:
    if not db.exists():
        return {}
    con = sqlite3.connect(db, timeout=30)
    try:
        return dict(con.execute("select number, state from trials").fetchall())
    except sqlite3.OperationalError:  # tables not created yet
        return {}
    finally:
        con.close()


def _default_sigint() -> None:
    # a background job of a non-interactive shell (nohup, `cmd &` in a script, some CI runners) starts with SIGINT
    # ignored, and its children inherit that: Python then never raises KeyboardInterrupt. A user's terminal delivers
    # Ctrl-C with the default disposition, which is what the search is tested against.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def search_process(study: Path, glue_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "autosqueeze.cli", "search", str(study), "--data-dir", str(glue_dir),
                             *extra], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)


def wait_mid_trial(proc: subprocess.Popen, db: Path, completed: int, timeout: float = 240) -> dict[int, str]:
    """Until ``completed`` trials are COMPLETE and another one is RUNNING (then a bit more)."""
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the search ended before it could be interrupted (rc {proc.returncode}):\n{out}\n{err}")
        s = states(db)
        if list(s.values()).count("COMPLETE") >= completed and "RUNNING" in s.values():
            time.sleep(0.5)  # into the trial's training
            s = states(db)
            if "RUNNING" in s.values():
                return s
        time.sleep(0.1)
    proc.kill()
    pytest.fail("no trial was running within the timeout")


def pretrain_teacher(study: Path, glue_dir: Path) -> None:
    """The teacher once, in the cache the subprocess uses (so it starts trials quickly)."""
    config = load_study_config(study)
    get_teacher(config.model, get_task(config.task), str(glue_dir), config.teacher)


def test_kill_9_mid_trial_loses_nothing_and_the_same_command_resumes(tiny_model_dir, glue_dir, tmp_path,
                                                                    isolated_cache):
    study = write_study(tmp_path, tiny_model_dir, SLOW_SPACE, trials=3)
    pretrain_teacher(study, glue_dir)
    db = tmp_path / "t.db"
    proc = search_process(study, glue_dir)
    wait_mid_trial(proc, db, completed=1)
    before = {t.number: t.values for t in load(study).trials if t.state == TrialState.COMPLETE}
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    running = [n for n, s in states(db).items() if s == "RUNNING"]
    assert len(running) == 1  # the trial in flight is left behind, RUNNING
    summary = run_search(load_study_config(study), str(glue_dir))  # the same command again
    assert summary.stale_failed == running
    trials = {t.number: t for t in load(study).trials}
    assert all(trials[n].state == TrialState.COMPLETE and trials[n].values == v for n, v in before.items())
    killed = trials[running[0]]
    assert killed.state == TrialState.FAIL and "ended during the trial" in killed.system_attrs["fail_reason"]
    assert summary.done == 3 and sum(t.state == TrialState.COMPLETE for t in trials.values()) == 3  # failed: no result
    assert not any(t.state == TrialState.RUNNING for t in trials.values())


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])  # Ctrl-C; kill, a scheduler, `timeout`
def test_ctrl_c_stops_cleanly_and_says_where_the_study_stands(tiny_model_dir, glue_dir, tmp_path, isolated_cache,
                                                              stop):
    study = write_study(tmp_path, tiny_model_dir, SLOW_SPACE, trials=3)
    pretrain_teacher(study, glue_dir)
    db = tmp_path / "t.db"
    proc = search_process(study, glue_dir)
    wait_mid_trial(proc, db, completed=1)
    proc.send_signal(stop)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted: study 't'" in err and "done 2: feasible 1" in err and "Run the same command" in err
    assert "Traceback" not in err
    s = states(db)
    assert sorted(s.values()) == ["COMPLETE", "FAIL"]  # the trial in flight is recorded as failed
    summary = run_search(load_study_config(study), str(glue_dir))
    assert summary.done == 3 and summary.stale_failed == []


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_vanished_workers_trial_is_failed_by_its_heartbeat(tiny_model_dir, glue_dir, tmp_path, isolated_cache,
                                                             monkeypatch):
    monkeypatch.setenv("AUTOSQUEEZE_HEARTBEAT_S", "1")  # grace period 4 s
    study_file = write_study(tmp_path, tiny_model_dir, trials=2)
    config = load_study_config(study_file)
    from autosqueeze.search.study import open_study

    study = open_study(config)
    trial = study.ask()  # a trial of a machine that disappeared: RUNNING, heartbeat long gone
    study._storage.set_trial_user_attr(trial._trial_id, "worker", {"host": "elsewhere", "pid": 1})
    study._storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]  # an RDB storage's
    time.sleep(5)
    summary = run_search(config, str(glue_dir))
    trials = load(study_file).trials
    assert trials[0].state == TrialState.FAIL and summary.stale_failed == []  # not ours: failed by heartbeat
    assert summary.done == 2 and trials[1].state == TrialState.COMPLETE


def test_a_new_studys_storage_folder_is_made_and_a_missing_one_is_not_read(tmp_path):
    """``storage: results/NAME.db`` in a fresh checkout: the search makes ``results/``; reading a
    study (``create=False``) from a folder that does not exist is one clear error, nothing made."""
    from autosqueeze.errors import UserError
    from autosqueeze.search.storage import make_storage

    url = f"sqlite:///{tmp_path / 'results' / 'deep' / 'study.db'}"
    with pytest.raises(UserError, match="does not exist"):
        make_storage(url, create=False)
    assert not (tmp_path / "results").exists()
    make_storage(url)
    assert (tmp_path / "results" / "deep").is_dir()
