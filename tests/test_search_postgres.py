"""Two workers on one study through a real PostgreSQL server: no trial lost or duplicated.

The test starts a throw-away server (initdb + pg_ctl in a temporary folder, on a free port,
as the ``postgres`` user when running as root: PostgreSQL refuses to run as root). It skips
with the reason when the server binaries (Debian package ``postgresql``) or the driver
(``psycopg2``) are absent; ``.ci/run`` installs both.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from optuna.trial import TrialState

from autosqueeze.search.study import open_study
from autosqueeze.study_config import load_study_config
from tests.test_search_resume import REPO, pretrain_teacher
from tests.test_search_trials import write_study

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def pg_bin() -> Path | None:
    found = shutil.which("initdb")
    cands = ([found] if found else []) + sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    for cand in cands:
        folder = Path(cand).resolve().parent
        if (folder / "pg_ctl").is_file():
            return folder
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    folder = pg_bin()
    if folder is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql (.ci/run does)")
    try:
        import psycopg2
    except ImportError:
        pytest.skip("the PostgreSQL driver is missing: pip install 'autosqueeze[postgres]'")
    run_as: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="autosqueeze-pg-"))  # under /tmp: reachable by the server's user
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        runuser = shutil.which("runuser")
        run_as = [runuser, "-u", "postgres", "--"] if runuser else ["su", "postgres", "-s", "/bin/sh", "-c"]
        os.chown(base, user.pw_uid, user.pw_gid)

    def run(*cmd: str) -> None:
        args = list(cmd) if not run_as or run_as[0] != "su" else [" ".join(cmd)]
        res = subprocess.run(run_as + args, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            log = (base / "log").read_text() if (base / "log").exists() else ""
            pytest.fail(f"{' '.join(cmd)} failed: {res.stderr}\n{log}")

    port = free_port()
    data = base / "data"
    run(str(folder / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    run(str(folder / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-t", "60", "-o",
        f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        con = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        con.autocommit = True
        con.cursor().execute("CREATE DATABASE autosqueeze")
        con.close()
        yield f"postgresql://postgres@127.0.0.1:{port}/autosqueeze"
    finally:
        subprocess.run(run_as + ([str(folder / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]
                                 if not run_as or run_as[0] != "su"
                                 else [f"{folder / 'pg_ctl'} -D {data} -m immediate stop"]), capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_two_workers_share_one_study(postgres_url, tiny_model_dir, glue_dir, tmp_path, isolated_cache):
    target = 8
    space = [{"method": "drop_layers", "params": {"keep": {"type": "int", "low": 1, "high": 2}}},
             {"method": "distill", "params": {"steps": {"type": "int", "low": 20, "high": 60}}}]
    # a repeated recipe does not count toward the target: the space holds more distinct recipes (82) than it
    study_file = write_study(tmp_path, tiny_model_dir, space, trials=target)
    pretrain_teacher(study_file, glue_dir)
    config = load_study_config(study_file)
    open_study(config, postgres_url)  # create the tables once (workers racing to create them would retry)
    cmd = [sys.executable, "-m", "autosqueeze.cli", "search", str(study_file), "--data-dir", str(glue_dir),
           "--storage", postgres_url]
    logs = [(tmp_path / f"worker{i}.out", tmp_path / f"worker{i}.err") for i in range(2)]
    workers = [subprocess.Popen(cmd, cwd=REPO, stdout=out.open("w"), stderr=err.open("w"), text=True)
               for out, err in logs]  # files, not pipes: a worker must never block on a full pipe
    try:
        for w in workers:
            w.wait(timeout=900)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    outputs = [(out.read_text(), err.read_text()) for out, err in logs]
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, f"{out}\n{err}"
    ran = [{int(line.split()[1]) for line in out.splitlines() if line.startswith("trial ")} for out, _ in outputs]
    study = open_study(config, postgres_url, create=False)
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))  # no trial stored twice
    assert not ran[0] & ran[1]  # no trial run by both workers
    assert ran[0] | ran[1] == set(numbers)  # every trial a worker ran is stored, none lost
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert target <= len(trials) <= target + 1  # both may start a last trial at the same moment
    pids = {t.user_attrs["worker"]["pid"] for t in trials}
    assert pids <= {w.pid for w in workers}
    assert ran[0] and ran[1], "both workers should have run trials"
