"""The teacher: the base model fine-tuned on the task, trained once and cached.

The cache key is (model, task, training settings, evaluation length); a teacher already in
the cache is never retrained. A teacher folder holds the transformers model (safetensors),
the tokenizer, ``metrics.json`` (the task's official metric names) and ``teacher.json``.

A model the user fine-tuned already (``teacher: {path: DIR}`` in a study, which is ``model: DIR``
with ``teacher.steps`` 0) is used as it is: :func:`get_teacher` checks that its head fits the
task (label count and names, read from ``config.json`` before any weight is loaded), measures
its dev metric once and caches it, with a copy of the model and its tokenizer, under a key made
of the folder's file bytes, the task, the evaluation length and the dev data: the same folder
is never measured twice, a changed one is measured again, and nothing is ever trained.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_dir
from .data import load_task_data
from .errors import ModelFolderError
from .hashing import file_sha256
from .measure.latency import fixed_threads
from .measure.metrics import evaluate
from .models import (
    DEFAULT_MODEL,
    check_model_folder,
    load_classifier,
    load_tokenizer,
    pickle_allowed,
    quiet_transformers,
    resolve_model,
    weights_hash,
)
from .tasks import TaskSpec, get_task
from .tasks.loaders import split_path
from .tasks.specs import head_label_problem
from .train import Progress, TrainSettings, finetune

log = logging.getLogger(__name__)


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
    return file_sha256(path)[:16]


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


def read_teacher_info(path: Path) -> dict[str, Any]:
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
        if read_teacher_info(info_file.parent).get("weights_hash") == weights_hash:
            return info_file.parent
    return None


def get_teacher(model_name: str, task: TaskSpec | str, data_dir: str | None, settings: TrainSettings,
                progress: Progress | None = None, root: Path | None = None) -> Teacher:
    """The cached teacher for (model, task, settings), training it first if the cache has none.

    With ``settings.steps`` 0, ``model_name`` must be a folder holding a classifier already
    fine-tuned on ``task``: it is used as it is (:func:`own_teacher`), never trained."""
    task = get_task(task)
    if settings.steps == 0:
        return own_teacher(model_name, task, data_dir, settings, root)
    teachers = (root or cache_root()) / "teachers"
    path = teachers / teacher_key(model_name, task, settings, train_data_id(task, data_dir))
    if (path / "teacher.json").is_file():
        log.info("using cached teacher %s", path)
        return load_teacher(path)
    legacy = teachers / teacher_key(model_name, task, settings)  # cached before the data was part of the key
    if (legacy / "teacher.json").is_file() and "data" not in read_teacher_info(legacy):
        log.warning("using teacher %s, cached by an older autosqueeze that did not record its training data; "
                    "delete it if %s changed since", legacy, data_dir or "the hub's data")
        return load_teacher(legacy)
    log.info("no cached teacher for %s/%s: fine-tuning one (%d steps)", model_name, task.name, settings.steps)
    train_teacher(model_name, task, data_dir, settings, path, progress)
    return load_teacher(path)  # reload so search and apply see identical weights


# --- a model the user fine-tuned: used as it is ------------------------------------------------
TRAIN_WITH = "name a base model with 'model:' and fine-tune it here with 'teacher: {steps: N}'"
# the files that make the folder's predictions: weights, config, tokenizer (not checkpoints, logs, READMEs)
OWN_FILES = ("*.safetensors", "pytorch_model*.bin", "model*.bin", "config.json", "tokenizer*.json",
             "special_tokens_map.json", "added_tokens.json", "vocab*", "merges.txt", "*.model")


def own_teacher_folder(model_name: str) -> Path:
    """The local folder a fine-tuned teacher is read from (a hub name is refused: it has no file
    bytes to key the cache by)."""
    if model_name in (None, "", "default", DEFAULT_MODEL):
        raise ModelFolderError(f"the default model is a pretrained encoder with no classification head, so it "
                               f"cannot be used as it is (teacher steps 0): {TRAIN_WITH}")
    source = Path(resolve_model(model_name))
    if not source.is_dir():
        raise ModelFolderError(f"{model_name!r} is not a local folder: a fine-tuned teacher used as it is "
                               f"(teacher: {{path: DIR}}, or steps 0) must be one; download it (e.g. "
                               f"`huggingface-cli download {model_name} --local-dir DIR`) and name DIR")
    return source


def check_own_teacher(folder: Path, task: TaskSpec) -> Any:
    """Refuse, in one line naming ``folder``, a model that cannot be ``task``'s teacher as it is:
    no sequence-classification head, another label count, label names that are not the task's
    (or not in its order). Reads ``config.json`` only (no weights); returns the config."""
    from transformers import AutoConfig

    from .arch import get_adapter

    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise ModelFolderError(f"cannot read {folder / 'config.json'}: {_one_line(err)}") from None
    get_adapter(config.model_type)  # an unsupported architecture is named before anything loads
    archs = list(getattr(config, "architectures", None) or [])
    if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
        raise ModelFolderError(f"{folder} is a {', '.join(archs)}, not a fine-tuned sequence classifier (no "
                               f"classification head), so it cannot be the teacher as it is: {TRAIN_WITH}")
    want = task.num_labels
    if config.num_labels != want:
        raise ModelFolderError(
            f"{folder} has a classification head with {config.num_labels} label(s) but {task.name} has {want}: "
            f"name a model fine-tuned on {task.name}, or {TRAIN_WITH}")
    problem = str(getattr(config, "problem_type", None) or "")
    if problem and problem != ("regression" if task.is_regression else "single_label_classification"):
        raise ModelFolderError(f"{folder} was fine-tuned with problem_type {problem!r}, which {task.name} is not "
                               f"(one {'score' if task.is_regression else 'class'} per example): {TRAIN_WITH}")
    id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}
    saved = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("label2id")  # as written
    label2id = {str(k): v for k, v in saved.items()} if isinstance(saved, dict) else {}
    if label2id and label2id != {v: k for k, v in id2label.items()}:
        raise ModelFolderError(f"{folder}: config.json's label2id {label2id} is not the inverse of its id2label "
                               f"{id2label}; make them agree (the class index the head outputs is id2label's)")
    why = head_label_problem(task, id2label)
    if why:
        raise ModelFolderError(f"{folder}: {why}")
    check_model_folder(folder, allow_pickle=pickle_allowed())  # complete weight files, and a tokenizer
    return config


def folder_digest(folder: Path) -> str:
    """SHA-256 (16 hex) of the files that make ``folder``'s predictions (:data:`OWN_FILES`):
    a rewritten weight, config or tokenizer file gives another digest."""
    files = sorted({f for pat in OWN_FILES for f in folder.glob(pat) if f.is_file()})
    h = hashlib.sha256()
    for f in files:
        stat = f.stat()
        h.update(f.name.encode() + b"\0" + _file_digest(str(f.resolve()), stat.st_size, stat.st_mtime_ns).encode())
    return h.hexdigest()[:16]


def dev_data_id(task: TaskSpec, data_dir: str | None) -> str:
    """Which data a dev metric is measured on: the digests of the task's dev files, or "hub"."""
    ids = []
    for split in task.dev_splits:
        path = split_path(task, split, data_dir)
        if path is None:
            return "hub"
        stat = path.stat()
        ids.append(_file_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns))
    return "+".join(ids)


def own_teacher_key(digest: str, task: TaskSpec, settings: TrainSettings, data_id: str) -> str:
    """The cache folder name of a fine-tuned model used as it is: its files, the task, the length
    its dev metric is measured at, and the dev data (nothing else changes the metric)."""
    ident = {"fine_tuned": digest, "task": task.name, "max_seq_len": settings.max_seq_len, "dev": data_id}
    return f"{task.name}-own-{hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]}"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


def load_fine_tuned(folder: Path, task: TaskSpec) -> nn.Module:
    """``folder``'s classifier exactly as saved: a weight the checkpoint lacks (a head never
    trained, an encoder weight) is refused, not initialised at random."""
    from transformers import AutoModelForSequenceClassification

    from .arch import get_adapter

    config = check_own_teacher(folder, task)
    kwargs: dict[str, Any] = {} if pickle_allowed() else {"use_safetensors": True}
    try:
        with quiet_transformers():  # a missing weight is refused below, in one line
            model, info = AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True,
                                                                             **kwargs)
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelFolderError(f"cannot load the fine-tuned model {folder}: {_one_line(err)}") from None
    base = get_adapter(config.model_type).base_attr
    missing = sorted(str(k) for k in info.get("missing_keys") or ())
    head = [k for k in missing if not k.startswith(base + ".") or k.startswith(base + ".pooler.")]
    if head:
        raise ModelFolderError(f"{folder} has no trained classification head (weights {', '.join(head[:3])} are not "
                               f"in its checkpoint), so it cannot be the teacher as it is: {TRAIN_WITH}")
    if missing:
        raise ModelFolderError(f"{folder}: encoder weight {missing[0]} is not in its checkpoint: re-save the model "
                               f"with save_pretrained")
    return model.eval()


def own_teacher(model_name: str, task: TaskSpec | str, data_dir: str | None, settings: TrainSettings,
                root: Path | None = None) -> Teacher:
    """A classifier the user fine-tuned on ``task``, as it is: checked, its dev metric measured once
    (at ``settings.max_seq_len``) and cached with a copy of its weights and tokenizer, then loaded
    from the cache like any teacher. Nothing is trained; ``model_name``'s folder is only read."""
    task = get_task(task)
    folder = own_teacher_folder(model_name)
    check_own_teacher(folder, task)  # before reading data or weights: a wrong head fails in a second
    data_id = dev_data_id(task, data_dir)
    digest = folder_digest(folder)
    path = (root or cache_root()) / "teachers" / own_teacher_key(digest, task, settings, data_id)
    if (path / "teacher.json").is_file():
        log.info("using the cached measure of %s (%s)", folder, path)
        return load_teacher(path)
    log.info("using %s as the teacher as it is: measuring its dev metric once", folder)
    tokenizer = load_tokenizer(str(folder))
    model = load_fine_tuned(folder, task)
    data, extra = load_task_data(task, tokenizer, data_dir, settings, with_train=False)
    with fixed_threads(settings.threads or torch.get_num_threads()):
        metrics = evaluate(model, data, extra)
    info = {"model": str(folder), "task": task.name, "settings": settings.to_dict(), "train_loss": None,
            "weights_hash": weights_hash(model), "num_train_examples": 0,
            "fine_tuned": {"folder": str(folder), "files_sha256": digest},
            "data": {"dev_sha256": data_id}}
    with atomic_dir(path) as tmp, quiet_transformers():
        model.save_pretrained(tmp)  # type: ignore[operator]  # a transformers model
        tokenizer.save_pretrained(tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (tmp / "teacher.json").write_text(json.dumps(info, indent=2))
    return load_teacher(path)  # from the cache, as a trained teacher is: search and apply see identical weights
