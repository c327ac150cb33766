"""Write folders and files atomically: build beside the target, rename over, remove the old last.

A folder is built in ``.<name>.tmp-<pid>-*`` next to its target. To swap it in, the old
folder is first renamed aside (``.<name>.old-<pid>-*``), the new one renamed into place, and
only then is the old one removed: a kill at any moment leaves either the old or the new
folder in place, never neither. The next write to the same target cleans what a dead
process left (and puts an old folder back if the kill came between the two renames).

Created folders and files get the usual permissions (0777 / 0666 less the umask), not the
private 0700 / 0600 of :mod:`tempfile`, so a shared cache stays shared.
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` on this host still runs (another user's counts; a zombie does not)."""
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


def _owner_pid(leftover: Path, out: Path, kind: str) -> int | None:
    """The pid in ``.<name>.<kind>-<pid>-*`` or None when ``leftover`` is not such a name."""
    prefix = f".{out.name}.{kind}-"
    if not leftover.name.startswith(prefix):
        return None
    pid = leftover.name[len(prefix):].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def clean_leftovers(out: Path) -> list[Path]:
    """Remove what a dead writer of ``out`` left beside it; restore ``out`` if only its old copy
    survived (a kill between the two renames). Returns the paths removed or restored."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    touched = []
    for kind in ("old", "tmp"):  # the old copy first: it may have to go back into place
        for leftover in sorted(out.parent.glob(f".{out.name}.{kind}-*")):
            pid = _owner_pid(leftover, out, kind)
            if pid is None or pid == os.getpid() or pid_alive(pid):
                continue
            if kind == "old" and not out.exists() and not out.is_symlink():
                os.replace(leftover, out)
                log.warning("restored %s from %s (a write was interrupted)", out, leftover.name)
            else:
                _remove(leftover)
                log.info("removed %s left by an interrupted write", leftover)
            touched.append(leftover)
    return touched


def temp_beside(out: Path, kind: str = "tmp", *, directory: bool = True) -> Path:
    """A new empty folder (or file) next to ``out``, named so that :func:`clean_leftovers`
    removes it once its process is gone; permissions follow the umask."""
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out.name}.{kind}-{os.getpid()}-"
    if directory:
        path = Path(tempfile.mkdtemp(dir=out.parent, prefix=prefix))
        path.chmod(0o777 & ~_umask())
        return path
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=prefix)
    os.close(fd)
    Path(name).chmod(0o666 & ~_umask())
    return Path(name)


def replace_dir(new: Path, out: Path) -> None:
    """Move folder ``new`` to ``out``; an existing ``out`` is renamed aside first and removed last."""
    old = None
    if out.exists() or out.is_symlink():
        old = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(out, old)
    try:
        os.replace(new, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        _remove(old)


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``out``; on success it replaces ``out``, on any error
    it is removed and ``out`` is left as it was (nothing half-written, nothing lost)."""
    out = Path(out)
    clean_leftovers(out)
    tmp = temp_beside(out)
    try:
        yield tmp
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: Path, text: str, encoding: str = "utf-8") -> Path:
    """Write a text file through a temporary file beside it and one rename."""
    path = Path(path)
    clean_leftovers(path)
    tmp = temp_beside(path, directory=False)
    try:
        tmp.write_text(text, encoding=encoding)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return path
