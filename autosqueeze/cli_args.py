"""Checks at the edge of the command line: argument types and output paths, before any work.

The argument types raise ``argparse.ArgumentTypeError`` (argparse prints them as one line);
the output checks raise :class:`~autosqueeze.errors.OutputError`. Both run before a model
is loaded or a study opened, so a typo costs a second, not a training run.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from .errors import OutputError


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (no usage block), exit 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text!r}")
        return value

    parse.__name__ = f"whole number >= {minimum}"
    return parse


def positive_number(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def seed_number(text: str) -> int:
    """An argparse type: a seed, a whole number 0 .. 2**31 - 1 (NumPy refuses negative ones)."""
    from .typecheck import MAX_SEED

    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {MAX_SEED}, got {text!r}")
    return value


def trial_numbers(text: str) -> list[int]:
    """An argparse type: trial numbers, comma-separated (``12,40``), each a whole number >= 0."""
    parse = whole_number(0)
    parts = [t.strip() for t in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"must be trial numbers separated by commas (12,40), got {text!r}")
    return [parse(t) for t in parts]


def task_name(text: str) -> str:
    """An argparse type: a GLUE task name (any spelling ``get_task`` accepts)."""
    from .tasks import get_task

    try:
        return get_task(text).name
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _check_writable_parent(out: Path, flag: str) -> None:
    """The nearest existing ancestor of ``out`` must be a folder we can write into."""
    parent = out.parent
    while not parent.exists():
        if parent.is_symlink():
            raise OutputError(f"{flag} {out}: {parent} is a broken link; choose another {flag}")
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{flag} {out}: {parent} is a file, not a folder; choose another {flag}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {out}: cannot write in {parent} (permission denied); choose another {flag}")


def _protected(out: Path) -> str | None:
    """Why replacing folder ``out`` would be a disaster (the working folder, home, /), or None."""
    target = out.resolve()
    here = Path.cwd().resolve()
    if target == here or target in here.parents:
        return "it is the current folder or contains it"
    if target == Path.home().resolve() or target == Path(target.anchor):
        return "it is your home folder or the root of the file system"
    return None


def check_output_folder(out: str | Path, flag: str, *, overwrite: bool | None = None,
                        ours: str | None = None) -> Path:
    """A folder the command will (re)write: absent, empty, holding our own earlier output
    (a folder with the file ``ours``), or replaced because the user passed ``--overwrite``
    (``overwrite`` None: the command has no such option)."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputError(f"{flag} {out} exists and is a file: choose a folder name")
    if out.is_dir():
        non_empty = any(out.iterdir())
        reason = _protected(out)
        if non_empty and reason:
            raise OutputError(f"{flag} {out}: refusing to replace this folder ({reason}); choose a new folder")
        mine = ours is not None and (out / ours).is_file()
        if non_empty and not mine and not overwrite:
            hint = "" if overwrite is None else ", or pass --overwrite to replace its contents"
            raise OutputError(f"{flag} {out} is a folder that is not empty: choose a new folder{hint}")
    _check_writable_parent(out, flag)
    return out


def check_output_file(out: str | Path, flag: str, *, overwrite: bool | None = None) -> Path:
    """A file the command will write, never a folder; an existing file only with ``--overwrite``
    (``overwrite`` None: the command has no such option and replaces it)."""
    out = Path(out).expanduser()
    if out.is_dir():
        raise OutputError(f"{flag} {out} is a folder: give a file name, e.g. {out / 'recipe.yaml'}")
    if str(out).endswith(os.sep) or out.name in ("", ".", ".."):
        raise OutputError(f"{flag} {out}: give a file name, e.g. recipe.yaml")
    if overwrite is False and (out.exists() or out.is_symlink()):
        raise OutputError(f"{flag} {out} exists: choose a new file name, or pass --overwrite to replace it")
    _check_writable_parent(out, flag)
    return out


SCAN_LIMIT = 2000  # entries looked at for a study database inside an output folder


def _is_sqlite(path: Path) -> bool:
    from .search.storage import SQLITE_MAGIC

    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # a hard link or a link to it
    except OSError:
        return False


def check_not_owned(out: str | Path, flag: str, owned: dict[str, str | Path | None]) -> None:
    """Refuse an output path that is, holds or lies inside one of the files and folders the work
    reads (``owned``: what, e.g. "the study database" -> its path; None entries are skipped),
    links and ``..`` resolved; and, whatever ``owned`` says, a folder that holds a study database
    (a SQLite file): nothing the user keeps is replaced, ``--overwrite`` or not."""
    out = Path(out).expanduser()
    target = out.resolve()
    for what, path in owned.items():
        if path is None or str(path) == "":
            continue
        path = Path(path).expanduser()
        mine = path.resolve()
        if target == mine or _same_file(out, path):
            how = "is"
        elif target in mine.parents:
            how = "holds"
        elif mine in target.parents and path.is_dir():
            how = "is inside"
        else:
            continue
        raise OutputError(f"{flag} {out} {how} {what} ({path}): outputs never replace what the work reads; "
                          f"choose another {flag}")
    if out.is_dir() and not out.is_symlink():
        entries = 0
        for folder in (out, *(p for p in out.iterdir() if p.is_dir() and not p.is_symlink())):
            for f in folder.iterdir():
                entries += 1
                if entries > SCAN_LIMIT:
                    return
                if f.is_file() and f.suffix in (".db", ".sqlite", ".sqlite3") and _is_sqlite(f):
                    raise OutputError(f"{flag} {out} holds a study database ({f}): choose another {flag}")
