"""Optuna storage for studies: SQLite by default, PostgreSQL for many workers; stale trials.

Every trial is committed by Optuna when it ends, so a killed process loses at most the
trial it was running. That trial stays RUNNING in the storage; it must neither block nor
count. Two mechanisms fail it:

- on start, a worker fails the RUNNING trials that a process *of this host* started and
  that is no longer alive (``worker`` user attribute: host + pid) — immediate, the usual
  "kill -9, run the same command again" case;
- Optuna's heartbeat (every ``HEARTBEAT_S`` seconds while a trial runs): a RUNNING trial
  without a heartbeat for ``4 * HEARTBEAT_S`` is failed by whichever worker starts its
  next trial — the case of a machine that disappeared.

``AUTOSQUEEZE_HEARTBEAT_S`` overrides the interval (tests use 1 s).
"""
from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ..study_config import ConfigError

log = logging.getLogger(__name__)
HEARTBEAT_S = 30


def heartbeat_interval() -> int:
    raw = os.environ.get("AUTOSQUEEZE_HEARTBEAT_S")
    try:
        return max(1, int(raw)) if raw else HEARTBEAT_S
    except ValueError:
        raise ConfigError(f"AUTOSQUEEZE_HEARTBEAT_S must be a whole number of seconds, got {raw!r}") from None


def redact(url: str) -> str:
    """The URL without its password (for messages)."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    cred, host = rest.rsplit("@", 1)
    user = cred.split(":", 1)[0]
    return f"{scheme}://{user}{':***' if ':' in cred else ''}@{host}"


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _postgres_driver(url: str) -> str:
    """``postgresql://`` with an installed driver named: SQLAlchemy 2.1 defaults to psycopg 3,
    our ``postgres`` extra installs psycopg2."""
    scheme, rest = url.split("://", 1)
    if "+" in scheme:
        return url
    import importlib.util

    for module, driver in (("psycopg2", "psycopg2"), ("psycopg", "psycopg")):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{driver}://{rest}"
    raise ConfigError(f"storage {redact(url)} needs a PostgreSQL driver: pip install 'autosqueeze[postgres]' "
                      f"(psycopg2-binary)")


def make_storage(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats; clear one-line errors for a missing driver or server."""
    if url.startswith(("postgresql", "postgres")):
        url = _postgres_driver(url)
    if is_sqlite(url):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:" and not Path(path).parent.is_dir():
            raise ConfigError(f"storage {url}: folder {Path(path).parent} does not exist")
        engine_kwargs = {"connect_args": {"timeout": 120}}  # several local workers wait for the lock
    else:
        engine_kwargs = {"pool_pre_ping": True}
    hb = heartbeat_interval()
    import sqlalchemy.exc

    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=hb,
                                                  grace_period=4 * hb)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == 2:  # workers started together race to create the tables: the loser retries
                raise
            time.sleep(1.0 + attempt)
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.ArgumentError, ImportError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"cannot open storage {redact(url)}: {first}; check the URL and that the "
                              f"database server is running and reachable") from None
    raise AssertionError("unreachable")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not yet reaped is a zombie: dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def fail_dead_local_trials(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials whose worker process on this host has ended; returns their numbers."""
    host, me = socket.gethostname(), os.getpid()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker") or {}
        pid = worker.get("pid")
        if worker.get("host") != host or not isinstance(pid, int) or pid == me or _pid_alive(pid):
            continue
        try:
            study._storage.set_trial_system_attr(
                t._trial_id, "fail_reason",
                f"worker {host}:{pid} ended during the trial (killed?); failed when the study resumed")
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            failed.append(t.number)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker got there first
    if failed:
        log.warning("trials %s were left RUNNING by a process that ended; marked failed", failed)
    return failed


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's heartbeat check, run on demand (it also runs before every new trial)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
