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

import contextlib
import logging
import os
import socket
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ..atomic import pid_alive
from ..errors import ConfigError, StorageError
from .trial_record import TrialRecord

log = logging.getLogger(__name__)
HEARTBEAT_S = 30
SQLITE_MAGIC = b"SQLite format 3\x00"


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


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None for an in-memory or non-SQLite URL)."""
    if not is_sqlite(url) or ":///" not in url:  # sqlite:// alone is an in-memory database
        return None
    path = url.split(":///", 1)[-1].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def check_persistent(url: str) -> None:
    """Refuse a storage that keeps nothing once the process ends (an in-memory SQLite database):
    every trial would be lost, and other processes could not see the study."""
    if not isinstance(url, str) or not url.strip():
        raise StorageError("the storage URL is empty: give sqlite:///FILE.db or postgresql://...")
    if is_sqlite(url) and (sqlite_file(url) is None or "mode=memory" in url or ":memory:" in url):
        raise StorageError(f"storage {redact(url)} is in memory and keeps nothing once the process ends: give a "
                           f"file, e.g. --storage sqlite:///study.db (or leave --storage out: NAME.db beside the "
                           f"study file)")


WRITE_FAILURES = ("database or disk is full", "readonly database", "disk i/o error", "no space left on device",
                  "read-only file system")


def write_failure(err: BaseException) -> StorageError | None:
    """A write to the study database that failed (disk full, read-only file system), as one line;
    None when ``err`` (or an error it was raised during, as Optuna's "Should not reach" after a
    failed trial update) is not one. SQLite rolls back the failed transaction: the study keeps
    every trial it had."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e).lower()
        for what in WRITE_FAILURES:
            if what in text:
                return StorageError(f"a write to the study database failed ({what}): the study keeps the trials "
                                    f"stored before it (the one in flight is not recorded); free disk space or "
                                    f"make it writable, then run the same command to continue")
        e = e.__cause__ or e.__context__
    return None


def storage_exists(url: str) -> bool:
    """False only for a SQLite file that is not there yet (a server storage is assumed to exist)."""
    path = sqlite_file(url)
    return path is None or path.exists()


def check_sqlite_file(path: Path) -> None:
    """Refuse a file that is not a SQLite database, or a truncated or damaged one, in one line
    (read-only: the file is not changed)."""
    if not path.is_file():
        raise StorageError(f"storage {path} is not a file: give the study database (.db) file")
    size = path.stat().st_size
    if size == 0:
        return  # an empty file: SQLite makes it a new database
    with open(path, "rb") as f:
        head = f.read(100)
    if not head.startswith(SQLITE_MAGIC):
        raise StorageError(f"storage {path} is not a SQLite database (is it the right file?); "
                           f"give the study's .db file, or a new file name to start a new study")
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(head[28:32], "big")
    valid = len(head) == 100 and head[24:28] == head[92:96]  # the header's page count is current
    if len(head) < 100 or (valid and pages and size < pages * page_size):
        raise StorageError(f"storage {path} is truncated ({size} bytes, the database says "
                           f"{pages * page_size}): restore it from a copy, or start a new study with another file")
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            status = db.execute("PRAGMA quick_check").fetchone()
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as err:
        raise StorageError(f"storage {path} is damaged ({err}): restore it from a copy, or start a new study "
                           f"with another file") from None
    if not status or status[0] != "ok":
        raise StorageError(f"storage {path} is damaged ({status[0] if status else 'no answer'}): restore it "
                           f"from a copy, or start a new study with another file")
    if tables and not {"studies", "version_info"} <= tables:
        raise StorageError(f"storage {path} is a SQLite database of something else (no study tables): give the "
                           f"study's .db file, or a new file name to start a new study")


def check_writable(url: str) -> None:
    """Refuse, before any work, a SQLite study database the search could not write: the file,
    or its folder (SQLite writes its journal beside the database), read-only."""
    check_persistent(url)
    path = sqlite_file(url)
    if path is None:
        return
    fix = "make it writable, or pass --storage sqlite:///FILE.db with FILE in a folder you can write"
    if path.is_file() and not os.access(path, os.W_OK):
        raise StorageError(f"storage {path} is read-only (the search records every trial in it): {fix}")
    if path.parent.is_dir() and not os.access(path.parent, os.W_OK | os.X_OK):
        raise StorageError(f"storage {path}: its folder {path.parent} is read-only (SQLite writes the study "
                           f"database and its journal there): {fix}")


def make_storage(url: str, create: bool = True) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats; clear one-line errors for a missing driver or server, and
    for a SQLite file that is absent (unless ``create``), not a database, or damaged."""
    check_persistent(url)
    if url.startswith(("postgresql", "postgres")):
        url = _postgres_driver(url)
    if is_sqlite(url):
        path = sqlite_file(url)
        if path is not None and not path.parent.is_dir():
            if not create:
                raise StorageError(f"storage {url}: folder {path.parent} does not exist")
            try:  # a new study's results folder (``storage: results/NAME.db``) is made, as any output folder
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StorageError(f"storage {url}: cannot make its folder {path.parent}: {err.strerror}") from err
        if path is not None and path.exists():
            check_sqlite_file(path)
            if not create and path.is_file() and path.stat().st_size == 0:  # opening it would write the tables
                raise StorageError(f"storage {path} is an empty file, not a study database: run `autosqueeze "
                                   f"search` on the study file first (or pass --storage)")
        elif path is not None and not create:
            raise StorageError(f"no study database {path}: run `autosqueeze search` on the study file first "
                               f"(or pass --storage)")
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 120}}  # several local workers wait for the lock
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
            raise StorageError(f"cannot open storage {redact(url)}: {first}; check the URL and that the "
                               f"database server is running and reachable") from None
        except sqlalchemy.exc.DatabaseError as err:  # a file SQLite cannot read after all
            first = " ".join(str(err.orig or err).split())[:200]
            raise StorageError(f"storage {redact(url)} is not a usable study database ({first})") from None
        except RuntimeError as err:  # Optuna refuses a schema it does not know (another Optuna wrote it)
            if "schema" not in str(err):
                raise
            raise StorageError(f"storage {redact(url)} was written by an Optuna this one cannot read "
                               f"({' '.join(str(err).split())[:200]}): use the Optuna that wrote it, or "
                               f"another storage") from None
    raise AssertionError("unreachable")


def open_study_for_reading(storage: str, name: str, study_file: str | Path | None = None) -> optuna.Study:
    """The existing study ``name`` in ``storage``, opened to read its trials and attributes (report,
    export, the command line's standing). No sampler of the study's is built: reading needs none.

    Raises StorageError for a database that is absent or unusable, FileNotFoundError for a study
    the storage does not hold (the message names ``study_file``, the one to search first).
    """
    rdb = make_storage(storage, create=False)
    try:
        return optuna.load_study(study_name=name, storage=rdb)
    except KeyError:
        raise FileNotFoundError(f"no study {name!r} in {redact(storage)}: run `autosqueeze search "
                                f"{study_file if study_file is not None else '<study file>'}` first") from None


def fail_dead_local_trials(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials whose worker process on this host has ended; returns their numbers."""
    host, me = socket.gethostname(), os.getpid()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = TrialRecord.from_trial(t).worker or {}
        pid = worker.get("pid")
        if worker.get("host") != host or not isinstance(pid, int) or pid == me or pid_alive(pid):
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
