"""The elastic student's cache: trained once per (teacher, task data, settings), never retrained.

``$AUTOSQUEEZE_CACHE/elastic/<key>/`` holds ``model.safetensors`` (the reordered, sandwich-
trained student: the teacher's architecture and shapes) and ``elastic.json`` (key, settings,
teacher weights hash, importance orders, sampled space, final losses, training seconds).
The key hashes the settings that shape the student (``ElasticSettings.key_dict``): an elastic
hidden width (``min_hidden`` below the full width) reorders the hidden dimensions and samples
narrower widths, so such a student never shares a key with one trained before hidden width
was elastic (``min_hidden: 1.0`` is that student, and keeps its key).
A student trained with ``exits`` also has ``exits.safetensors``: its exit heads
(``heads.<i>.dense`` / ``heads.<i>.out``, the head after layer ``i``, in the student's hidden
order), kept apart so ``model.safetensors`` stays the teacher's architecture;
:func:`student_exit_state` reads them and ``elastic.json``'s ``exits`` says how many.
The folder is written atomically. Trials load the weights through :func:`student_state`,
which keeps the last few in memory.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_dir
from ..data import TaskData
from ..errors import ConfigError
from ..teacher import cache_root
from ..train import Progress
from .checkpoint import Checkpointing
from .train import EXITS_ATTR, ElasticSettings, resolve_steps, train_elastic

log = logging.getLogger(__name__)
WEIGHTS = "model.safetensors"
EXITS = "exits.safetensors"  # the exit heads of a student trained with ``exits``
INFO = "elastic.json"
KEY_RE = re.compile(r"^[a-z0-9_-]+-[0-9a-f]{12}$")


class ElasticStudentMissing(LookupError):
    """A recipe names an elastic student that this machine's cache does not hold."""


def elastic_key(teacher_hash: str, task: str, data: dict[str, Any], settings: ElasticSettings) -> str:
    ident = {"teacher": teacher_hash, "task": task, "data": data, "settings": settings.key_dict()}
    return f"{task}-{hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]}"


def student_dir(key: str, root: Path | None = None) -> Path:
    if not KEY_RE.match(key):
        raise ValueError(f"{key!r} is not an elastic student key (like 'sst2-0123456789ab')")
    return (root or cache_root()) / "elastic" / key


@dataclass
class ElasticStudent:
    key: str
    path: Path
    info: dict[str, Any]


def data_settings(data: TaskData, train_subset: int | None) -> dict[str, Any]:
    return {"batch_size": data.batch_size, "max_seq_len": data.max_seq_len, "train_subset": train_subset,
            "train_examples": len(data.train)}


def get_elastic_student(teacher: nn.Module, teacher_hash: str, data: TaskData, settings: ElasticSettings,
                        train_subset: int | None = None, progress: Progress | None = None,
                        root: Path | None = None) -> ElasticStudent:
    """The cached elastic student for this teacher, data and settings, training it first if absent."""
    from safetensors.torch import save_model

    key = elastic_key(teacher_hash, data.task.name, data_settings(data, train_subset), settings)
    path = student_dir(key, root)
    if (path / INFO).is_file() and (path / WEIGHTS).is_file():
        log.info("using cached elastic student %s", path)
        return ElasticStudent(key, path, json.loads((path / INFO).read_text()))
    log.info("no cached elastic student %s: training it (%d sandwich steps)", key,
             resolve_steps(settings, len(data.train), data.batch_size))
    partial = path.with_name(f"{key}.partial")  # the run's checkpoint: a killed run continues from it
    student, info = train_elastic(teacher, data, settings, progress,
                                  checkpoint=Checkpointing(partial, {"key": key}, checkpoint_every_s()))
    heads = getattr(student, EXITS_ATTR, None)
    if heads is not None:
        delattr(student, EXITS_ATTR)  # saved apart: the student itself keeps the teacher's architecture
    info = {"key": key, "teacher_weights_hash": teacher_hash, "task": data.task.name,
            "data": data_settings(data, train_subset), "settings": settings.to_dict(), **info}
    with atomic_dir(path) as tmp:
        save_model(student, str(tmp / WEIGHTS), metadata={"format": "pt"})
        if heads is not None:
            save_model(nn.ModuleDict({"heads": heads}), str(tmp / EXITS), metadata={"format": "pt"})
        (tmp / INFO).write_text(json.dumps(info, indent=2))
    shutil.rmtree(partial, ignore_errors=True)
    return ElasticStudent(key, path, info)


def checkpoint_every_s() -> float:
    """Seconds of training between two checkpoints of an elastic run: ``AUTOSQUEEZE_CHECKPOINT_S``
    (0: after every step), else 10 minutes."""
    raw = os.environ.get("AUTOSQUEEZE_CHECKPOINT_S", "600")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ConfigError(f"AUTOSQUEEZE_CHECKPOINT_S must be a number of seconds >= 0, got {raw!r}")
    return value


@lru_cache(maxsize=2)
def _load(path: str, mtime_ns: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


def student_state(key: str, root: Path | None = None) -> dict[str, torch.Tensor]:
    """The elastic student's weights (a shared, read-only state dict: copy before changing)."""
    path = student_dir(key, root) / WEIGHTS
    if not path.is_file():
        raise ElasticStudentMissing(
            f"elastic student {key} is not in this machine's cache ({path.parent}): run the search that made the "
            f"recipe here (it trains the student once), or copy that folder from the machine that ran it")
    return _load(str(path), path.stat().st_mtime_ns)


def student_exit_state(key: str, root: Path | None = None) -> dict[str, torch.Tensor] | None:
    """The exit heads of a student trained with ``exits`` (a shared, read-only state dict with keys
    ``heads.<layer>.dense.weight`` ...), or None for a student without them."""
    path = student_dir(key, root) / EXITS
    if not path.is_file():
        return None
    return _load_exits(str(path), path.stat().st_mtime_ns)


@lru_cache(maxsize=2)
def _load_exits(path: str, mtime_ns: int) -> dict[str, torch.Tensor]:  # apart: small, never evicts a student
    from safetensors.torch import load_file

    return load_file(path)


def _recorded_orders(key: str, root: Path | None) -> dict[str, Any]:
    """The importance orders the student's record holds (``heads``, ``neurons``, ``hidden``; {} when unreadable)."""
    try:
        return json.loads((student_dir(key, root) / INFO).read_text()).get("orders") or {}
    except (OSError, ValueError):
        return {}


def student_hidden_order(key: str, root: Path | None = None) -> list[int] | None:
    """The teacher hidden dimension of each of the student's (its hidden reordering), or None when
    the student's hidden dimensions are in the teacher's order (trained without an elastic width)."""
    hidden = _recorded_orders(key, root).get("hidden")
    return [int(i) for i in hidden[0]] if hidden else None


def student_head_orders(key: str, root: Path | None = None) -> list[list[int]] | None:
    """The teacher head of each of the student's heads, per layer (its importance reordering), or None
    when the student's record has none (unreadable, or older than the record of the orders)."""
    heads = _recorded_orders(key, root).get("heads")
    return [[int(h) for h in layer] for layer in heads] if heads else None


def ensure_students(keys: set[Any], recorded: Mapping[str, Any] | None, teacher: nn.Module, teacher_hash: str,
                    data: TaskData, train_subset: int | None, progress: Progress | None = None) -> None:
    """Make sure the elastic students a recipe slices (``keys``) are in the cache: rebuild one
    (deterministically, from the settings the recipe ``recorded`` of its study's student) when this
    machine has none."""
    recorded = recorded or {}
    for key in keys:
        if (student_dir(str(key)) / WEIGHTS).is_file():
            continue
        if recorded.get("key") != key or not isinstance(recorded.get("settings"), dict):
            raise ElasticStudentMissing(f"elastic student {key} is not in this machine's cache and the recipe does not "
                                        f"record how it was trained: copy its folder into $AUTOSQUEEZE_CACHE/elastic")
        # a recipe recorded before the hidden width was elastic: its student kept the full width
        settings = ElasticSettings(**{"min_hidden": 1.0, **recorded["settings"]})
        made = get_elastic_student(teacher, teacher_hash, data, settings, train_subset, progress)
        if made.key != key:
            raise ElasticStudentMissing(f"rebuilding elastic student {key} gave {made.key}: the teacher or the data "
                                        f"differ from the ones the recipe was made with")
