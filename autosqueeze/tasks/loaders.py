"""Read GLUE splits from a local ``glue_data`` folder (original TSV layouts) or from the hub.

Local files are read with quoting off (``csv.QUOTE_NONE``): GLUE sentences contain ``"``
characters, and a quote-honouring reader silently merges rows. Columns are found by header
name; only CoLA, which has no header, is read by position.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import socket
import sys
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .specs import Example, TaskSpec, _normalise, get_task

__all__ = ["ENV_VAR", "load_split", "resolve_data_dir", "split_filename", "split_path", "subset"]

logger = logging.getLogger(__name__)

ENV_VAR = "AUTOSQUEEZE_GLUE_DIR"

# Hub class names, in our class-index order (the same order the hub's glue/<task> uses).
HUB_LABEL_NAMES: dict[str, tuple[str, ...]] = {
    "cola": ("unacceptable", "acceptable"),
    "sst2": ("negative", "positive"),
    "mrpc": ("not_equivalent", "equivalent"),
    "qqp": ("not_duplicate", "duplicate"),
    "mnli": ("entailment", "neutral", "contradiction"),
    "qnli": ("entailment", "not_entailment"),
    "rte": ("entailment", "not_entailment"),
    "wnli": ("not_entailment", "entailment"),
}

_HUB_SPLITS = {"train": "train", "dev": "validation",
               "dev_matched": "validation_matched", "dev_mismatched": "validation_mismatched"}


@dataclass(frozen=True)
class _Layout:
    """Where a task's texts and label sit in its original TSV file."""

    text_columns: tuple[str, ...] | tuple[int, ...]
    label_column: str | int
    header: bool = True
    skip_malformed: bool = False
    extra_fields_ok: bool = False  # rows may carry fields beyond the header (the label is read as the last)


_LAYOUTS: dict[str, _Layout] = {
    "cola": _Layout((3,), 1, header=False),
    "sst2": _Layout(("sentence",), "label"),
    "mrpc": _Layout(("#1 String", "#2 String"), "Quality"),
    "qqp": _Layout(("question1", "question2"), "is_duplicate", skip_malformed=True, extra_fields_ok=True),
    "stsb": _Layout(("sentence1", "sentence2"), "score", extra_fields_ok=True),
    "mnli": _Layout(("sentence1", "sentence2"), "gold_label", extra_fields_ok=True),
    "qnli": _Layout(("question", "sentence"), "label"),
    "rte": _Layout(("sentence1", "sentence2"), "label"),
    "wnli": _Layout(("sentence1", "sentence2"), "label"),
}


def resolve_data_dir(data_dir: str | os.PathLike | None) -> str | None:
    """The GLUE folder to read: the flag if given, else ``$AUTOSQUEEZE_GLUE_DIR``, else None (hub)."""
    if data_dir is not None and str(data_dir) != "":
        return str(Path(data_dir).expanduser())
    env = os.environ.get(ENV_VAR, "").strip()
    return str(Path(env).expanduser()) if env else None


def split_filename(spec: TaskSpec, split: str) -> str:
    """The TSV file name of ``split`` ("dev" means the first dev split, dev_matched for MNLI)."""
    if split not in spec.splits:
        raise ValueError(f"{spec.name} has no split {split!r}; valid: {', '.join(spec.splits)}")
    name = spec.dev_splits[0] if split == "dev" else split
    return f"{name}.tsv"


def _missing(path: Path, spec: TaskSpec) -> FileNotFoundError:
    return FileNotFoundError(
        f"GLUE file not found: {path} . Pass --data-dir (or set {ENV_VAR}) to the glue_data "
        f"folder that contains {spec.glue_dir}/, or to the {spec.glue_dir} folder itself."
    )


def _task_folder(root: Path, spec: TaskSpec, filename: str) -> Path:
    """``<root>/<glue_dir>``, or ``root`` itself when it already is the task folder."""
    nested = root / spec.glue_dir
    if nested.is_dir():
        return nested
    if root.is_dir() and (
        _normalise(root.name) == _normalise(spec.glue_dir)
        or (root / "train.tsv").is_file()
        or (root / filename).is_file()
    ):
        return root
    raise _missing(nested / filename, spec)


def _column(header: Sequence[str], name: str | int, path: Path) -> int:
    if isinstance(name, int):
        return name
    try:
        return list(header).index(name)
    except ValueError:
        raise DataError(f"{path}:1: header has no column {name!r}; header is {list(header)}") from None


def _read_text(path: Path) -> str:
    """The file as text; bytes that are not UTF-8 are an error naming the line."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: bytes that are not UTF-8 ({raw[err.start:err.start + 4]!r}); "
                        f"save the file as UTF-8") from None
    if "\x00" in text:  # UTF-16 without a byte-order mark, or a binary file: never a sentence
        line = text[:text.index("\x00")].count("\n") + 1
        raise DataError(f"{path}:{line}: a NUL byte (is it UTF-16 or a binary file?); save the file as UTF-8 text")
    return text


def _parse_label(spec: TaskSpec, raw: str, path: Path, line: int) -> int | float:
    raw = raw.strip()
    if spec.is_regression:
        try:
            score = float(raw)
        except ValueError:
            raise DataError(f"{path}:{line}: score {raw!r} is not a number") from None
        if not math.isfinite(score):  # "nan", "inf": the loss would be nan from the first step
            raise DataError(f"{path}:{line}: score {raw!r} is not a finite number")
        return score
    try:
        return spec.label_names.index(raw)
    except ValueError:
        raise DataError(
            f"{path}:{line}: unknown label {raw!r}; valid labels: {', '.join(spec.label_names)}"
        ) from None


def _read_tsv(path: Path, spec: TaskSpec) -> list[Example]:
    layout = _LAYOUTS[spec.name]
    examples: list[Example] = []
    skipped = 0
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    text = _read_text(path)
    if not text.strip():
        raise DataError(f"{path}: the file is empty; expected {'a header row and ' if layout.header else ''}"
                        f"tab-separated {spec.name} examples")
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header: list[str] = next(reader, []) if layout.header else []
        width = len(header)
        text_idx = [_column(header, c, path) for c in layout.text_columns]
        label_idx = _column(header, layout.label_column, path)
        # A label that is the header's last column is read as row[-1] (STS-B, MNLI), so a
        # stray extra field inside a row cannot shift it.
        label_last = layout.header and label_idx == width - 1
        needed = max([*text_idx, label_idx]) + 1
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) < max(needed, width):
                if layout.skip_malformed:
                    skipped += 1
                    continue
                raise DataError(
                    f"{path}:{line}: expected {max(needed, width)} tab-separated columns, got {len(row)}"
                )
            if width and len(row) > width and not (label_last and layout.extra_fields_ok):
                raise DataError(f"{path}:{line}: expected {width} tab-separated columns (as the header), got "
                                f"{len(row)}: a stray tab in a sentence?")
            label = _parse_label(spec, row[-1] if label_last else row[label_idx], path, line)
            examples.append(Example(texts=tuple(row[i] for i in text_idx), label=label))
    if not examples:
        what = "only a header" if layout.header else "no rows"
        raise DataError(f"{path}: {what}, no examples: a {spec.name} file needs at least one example row")
    if skipped:
        logger.warning("%s: skipped %d malformed rows with missing columns", path, skipped)
    logger.debug("read %d %s examples from %s", len(examples), spec.name, path)
    return examples


def _load_local(spec: TaskSpec, split: str, root: Path) -> list[Example]:
    filename = split_filename(spec, split)
    path = _task_folder(root, spec, filename) / filename
    if not path.is_file():
        raise _missing(path, spec)
    return _read_tsv(path, spec)


def split_path(task: TaskSpec | str, split: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local TSV file ``load_split`` reads for ``split`` (None when it reads the hub)."""
    spec = get_task(task)
    root = resolve_data_dir(data_dir)
    if root is None:
        return None
    filename = split_filename(spec, split)
    path = _task_folder(Path(root), spec, filename) / filename
    if not path.is_file():
        raise _missing(path, spec)
    return path


_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


class GlueDataUnavailable(DataError, RuntimeError):
    """No GLUE folder was given and the hub copy cannot be loaded (offline, no cache, no ``datasets``)."""


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (a proxy, or offline mode, is taken
    at its word), so that an offline machine fails in seconds instead of after the hub client's retries."""
    if any(os.environ.get(v, "").strip() not in ("", "0") for v in _OFFLINE_VARS):
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _offline_flags() -> dict[tuple[Any, str], Any]:
    """Switch the already-imported hub clients to offline mode (they read the environment only
    when first imported); returns the previous values, to restore."""
    import importlib

    saved: dict[tuple[Any, str], Any] = {}
    for module_name, attrs in (("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
                               ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for attr in attrs:
            if hasattr(module, attr):
                saved[(module, attr)] = getattr(module, attr)
                setattr(module, attr, True)
    return saved


def _load_hub(spec: TaskSpec, split: str) -> list[Example]:
    split_filename(spec, split)  # validates the split name
    hub_split = _HUB_SPLITS[spec.dev_splits[0] if split == "dev" else split]
    hint = (f"pass --data-dir (or set {ENV_VAR}) to a local glue_data folder "
            f"containing {spec.glue_dir}/")
    online = _hub_reachable()
    saved = {v: os.environ.get(v) for v in _OFFLINE_VARS}
    if not online:  # the datasets cache only, no retries (datasets reads these when imported and loading)
        os.environ.update(dict.fromkeys(_OFFLINE_VARS, "1"))
    try:
        try:
            import datasets  # lazy: optional and slow to import
        except ImportError:
            raise GlueDataUnavailable(f"no GLUE data folder given and the `datasets` package is not installed "
                                      f"(pip install datasets); {hint}") from None
        flags = _offline_flags() if not online else {}
        try:
            ds: Any = datasets.load_dataset("glue", spec.name, split=hub_split)
        except Exception as exc:  # network, missing cache, renamed dataset ...
            where = "the hub" if online else "the hub (unreachable: offline) or its local cache"
            reason = " ".join(str(exc).split())[:200]
            raise GlueDataUnavailable(f"no GLUE data folder given, and glue/{spec.name} [{hub_split}] could not be "
                                      f"loaded from {where} ({type(exc).__name__}: {reason}); {hint}") from None
        finally:
            for (module, name), value in flags.items():
                setattr(module, name, value)
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
    return _hub_examples(spec, ds)


def _hub_label_map(spec: TaskSpec, ds: Any) -> dict[int, int] | None:
    """Hub class int -> our class index, matched by class name when the hub exposes names."""
    ours = HUB_LABEL_NAMES.get(spec.name)
    names = getattr(getattr(ds, "features", {}).get("label", None), "names", None)
    if ours is None or not names:
        return None
    if sorted(names) != sorted(ours):
        logger.warning("glue/%s hub label names %s differ from %s; using them as indices",
                       spec.name, list(names), list(ours))
        return None
    return {i: ours.index(n) for i, n in enumerate(names)}


def _hub_examples(spec: TaskSpec, ds: Any) -> list[Example]:
    mapping = _hub_label_map(spec, ds)
    examples: list[Example] = []
    for row in ds:
        texts = tuple(str(row[f]) for f in spec.text_fields)
        raw = row["label"]
        if spec.is_regression:
            label: int | float = float(raw)
        else:
            idx = int(raw)
            label = mapping[idx] if mapping is not None and idx in mapping else idx
            if not 0 <= label < spec.num_labels:
                raise ValueError(f"glue/{spec.name}: label {raw!r} outside 0..{spec.num_labels - 1}")
        examples.append(Example(texts=texts, label=label))
    return examples


def load_split(task: TaskSpec | str, split: str, data_dir: str | os.PathLike | None = None) -> list[Example]:
    """Load one split ("train", "dev", "dev_matched", "dev_mismatched") of a GLUE task.

    ``data_dir`` (or ``$AUTOSQUEEZE_GLUE_DIR`` when it is None) is the folder that contains
    ``SST-2/``, ``RTE/`` ..., or a task folder itself. With neither, the hub's ``glue``
    dataset is used through ``datasets``; its labels map to the same indices as local files.
    """
    spec = get_task(task)
    root = resolve_data_dir(data_dir)
    if root is not None:
        return _load_local(spec, split, Path(root))
    return _load_hub(spec, split)


def subset(examples: Sequence[Example], n: int | None, seed: int = 0) -> list[Example]:
    """A deterministic random ``n``-example subset, in original order (all when n is None or >= len)."""
    if n is None or n >= len(examples):
        return list(examples)
    if n < 0:
        raise ValueError(f"subset size must be >= 0, got {n}")
    idx = np.sort(np.random.default_rng(seed).choice(len(examples), size=n, replace=False))
    return [examples[i] for i in idx]
