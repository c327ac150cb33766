"""The teacher: the base model fine-tuned on the task, trained once and cached.

The cache key is (model, task, training settings, evaluation length); a teacher already in
the cache is never retrained. A teacher folder holds the transformers model (safetensors),
the tokenizer, ``metrics.json`` (the task's official metric names) and ``teacher.json``.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_dir
from .data import TaskData
from .errors import ModelFolderError
from .measure.latency import fixed_threads
from .measure.metrics import evaluate
from .models import check_model_folder, load_classifier, load_tokenizer, resolve_model, weights_hash
from .tasks import TaskSpec, get_task, load_split, subset
from .tasks.loaders import split_path
from .train import TrainSettings, finetune

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int, dict[str, float]], None]


def cache_root() -> Path:
    return Path(os.environ.get("AUTOSQUEEZE_CACHE", Path.home() / ".cache" / "autosqueeze"))


def train_data_id(task: TaskSpec, data_dir: str | None) -> str:
    """Which data trains a teacher: the SHA-256 (16 hex) of the task's train file, or "hub"."""
    path = split_path(task, "train", data_dir)
    if path is None:
        return "hub"
    stat = path.stat()
    return _file_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:  # size and mtime: a changed file is read again
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def teacher_key(model: str, task: TaskSpec, settings: TrainSettings, data_id: str | None = None) -> str:
    """The cache folder name: model, task, training settings and (``data_id``) the train data."""
    ident: dict[str, Any] = {"model": resolve_model(model) if model in (None, "", "default") else model,
                             "task": task.name, "settings": settings.to_dict()}
    if data_id is not None:
        ident["data"] = data_id
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    return f"{task.name}-{digest}"


@dataclass
class Teacher:
    model: nn.Module
    tokenizer: Any
    metrics: dict[str, float]
    path: Path
    info: dict[str, Any]


def load_task_data(task: TaskSpec, tokenizer: Any, data_dir: str | None, settings: TrainSettings,
                   dev_subset: int | None = None, with_train: bool = True) -> tuple[TaskData, dict[str, list]]:
    """Train (subset) and dev examples as TaskData, plus extra dev splits (MNLI mismatched)."""
    train = subset(load_split(task, "train", data_dir), settings.train_subset, settings.seed) if with_train else []
    dev = subset(load_split(task, task.dev_splits[0], data_dir), dev_subset, 0)
    extra = {s.replace("dev_", ""): subset(load_split(task, s, data_dir), dev_subset, 0) for s in task.dev_splits[1:]}
    return TaskData(task, tokenizer, train, dev, settings.max_seq_len, settings.batch_size), extra


def train_teacher(model_name: str, task: TaskSpec | str, data_dir: str | None, settings: TrainSettings,
                  out: str | Path, progress: Progress | None = None) -> Teacher:
    """Fine-tune ``model_name`` on ``task`` and write the teacher folder ``out`` atomically."""
    task = get_task(task)
    out = Path(out)
    tokenizer = load_tokenizer(model_name)
    data, extra = load_task_data(task, tokenizer, data_dir, settings)
    model = load_classifier(model_name, task.num_labels)
    with fixed_threads(settings.threads or torch.get_num_threads()):
        stats = finetune(model, data.train_batches(settings.steps, settings.seed), settings, progress)
        metrics = evaluate(model, data, extra)
    info = {"model": model_name, "task": task.name, "settings": settings.to_dict(), "train_loss": stats["loss"],
            "weights_hash": weights_hash(model), "num_train_examples": len(data.train),
            "data": {"train_sha256": train_data_id(task, data_dir)}}
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)  # type: ignore[operator]  # a transformers model
        tokenizer.save_pretrained(tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (tmp / "teacher.json").write_text(json.dumps(info, indent=2))
    return Teacher(model, tokenizer, metrics, out, info)


def load_teacher(path: str | Path) -> Teacher:
    from transformers import AutoModelForSequenceClassification

    path = Path(path)
    for name in ("config.json", "metrics.json", "teacher.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"teacher folder {path} has no {name}: train it with `autosqueeze finetune`")
    check_model_folder(path, allow_pickle=False)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True).eval()
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelFolderError(f"teacher folder {path} is unreadable ({type(err).__name__}: "
                               f"{' '.join(str(err).split())[:200]}): delete it to train it again") from None
    tokenizer = load_tokenizer(str(path))
    return Teacher(model, tokenizer, json.loads((path / "metrics.json").read_text()), path,
                   json.loads((path / "teacher.json").read_text()))


def _read_info(path: Path) -> dict[str, Any]:
    """A teacher folder's ``teacher.json`` (an unreadable one says so, and is not reused)."""
    try:
        info = json.loads((path / "teacher.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"data": "unreadable"}
    return info if isinstance(info, dict) else {"data": "unreadable"}


def cached_teacher_path(weights_hash: str | None, root: Path | None = None) -> Path | None:
    """The cached teacher folder whose recorded weights hash is ``weights_hash`` (None: none is
    cached here). Needs no data and trains nothing: how ``bench`` finds a saved model's teacher."""
    teachers = (root or cache_root()) / "teachers"
    if not weights_hash or not teachers.is_dir():
        return None
    for info_file in sorted(teachers.glob("*/teacher.json")):
        if _read_info(info_file.parent).get("weights_hash") == weights_hash:
            return info_file.parent
    return None


def get_teacher(model_name: str, task: TaskSpec | str, data_dir: str | None, settings: TrainSettings,
                progress: Progress | None = None, root: Path | None = None) -> Teacher:
    """The cached teacher for (model, task, settings), training it first if the cache has none."""
    task = get_task(task)
    teachers = (root or cache_root()) / "teachers"
    path = teachers / teacher_key(model_name, task, settings, train_data_id(task, data_dir))
    if (path / "teacher.json").is_file():
        log.info("using cached teacher %s", path)
        return load_teacher(path)
    legacy = teachers / teacher_key(model_name, task, settings)  # cached before the data was part of the key
    if (legacy / "teacher.json").is_file() and "data" not in _read_info(legacy):
        log.warning("using teacher %s, cached by an older autosqueeze that did not record its training data; "
                    "delete it if %s changed since", legacy, data_dir or "the hub's data")
        return load_teacher(legacy)
    log.info("no cached teacher for %s/%s: fine-tuning one (%d steps)", model_name, task.name, settings.steps)
    train_teacher(model_name, task, data_dir, settings, path, progress)
    return load_teacher(path)  # reload so search and apply see identical weights
