"""The nine GLUE tasks: what each one reads, predicts and is scored by."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["TaskSpec", "Example", "TASKS", "CLASS_NAMES", "get_task", "head_label_problem"]


@dataclass(frozen=True)
class TaskSpec:
    """Static description of one GLUE task.

    ``label_names`` are the label strings exactly as they appear in the original TSV files,
    in class-index order (so ``label_names.index(raw)`` is the class index). ``text_fields``
    are the text column names of the hub dataset ``glue/<name>``.
    """

    name: str
    glue_dir: str
    text_fields: tuple[str, ...]
    num_labels: int
    is_regression: bool
    label_names: tuple[str, ...]
    metric_names: tuple[str, ...]
    main_metric: str
    dev_splits: tuple[str, ...] = ("dev",)

    def __post_init__(self) -> None:
        if len(self.text_fields) not in (1, 2):
            raise ValueError(f"{self.name}: text_fields must hold 1 or 2 names")
        if self.main_metric not in self.metric_names:
            raise ValueError(f"{self.name}: main_metric {self.main_metric!r} not in metric_names")
        if self.is_regression != (self.num_labels == 1) or (
            not self.is_regression and len(self.label_names) != self.num_labels
        ):
            raise ValueError(f"{self.name}: num_labels / label_names / is_regression disagree")

    @property
    def splits(self) -> tuple[str, ...]:
        """Split names ``load_split`` accepts for this task (``dev`` is an alias of the first dev split)."""
        return ("train", "dev", *(s for s in self.dev_splits if s != "dev"))


@dataclass(frozen=True)
class Example:
    """One labelled example: 1 or 2 texts and a class index (or a float score for STS-B)."""

    texts: tuple[str, ...]
    label: float | int


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")

_SPECS = (
    TaskSpec("cola", "CoLA", ("sentence",), 2, False, _BINARY,
             ("matthews_correlation",), "matthews_correlation"),
    TaskSpec("sst2", "SST-2", ("sentence",), 2, False, _BINARY, ("accuracy",), "accuracy"),
    TaskSpec("mrpc", "MRPC", ("sentence1", "sentence2"), 2, False, _BINARY,
             ("f1", "accuracy"), "f1"),
    TaskSpec("qqp", "QQP", ("question1", "question2"), 2, False, _BINARY,
             ("f1", "accuracy"), "f1"),
    TaskSpec("stsb", "STS-B", ("sentence1", "sentence2"), 1, True, (),
             ("pearson", "spearmanr"), "pearson"),
    TaskSpec("mnli", "MNLI", ("premise", "hypothesis"), 3, False,
             ("entailment", "neutral", "contradiction"), ("accuracy",), "accuracy",
             ("dev_matched", "dev_mismatched")),
    TaskSpec("qnli", "QNLI", ("question", "sentence"), 2, False, _NLI2, ("accuracy",), "accuracy"),
    TaskSpec("rte", "RTE", ("sentence1", "sentence2"), 2, False, _NLI2, ("accuracy",), "accuracy"),
    TaskSpec("wnli", "WNLI", ("sentence1", "sentence2"), 2, False, _BINARY, ("accuracy",), "accuracy"),
)

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in _SPECS}

# What a fine-tuned head may call each class, in class-index order (the first is the name shown):
# the names of the hub's ``glue/<task>`` features, common spellings, and the raw TSV label.
CLASS_NAMES: dict[str, tuple[tuple[str, ...], ...]] = {
    "cola": (("unacceptable", "not_acceptable", "0"), ("acceptable", "1")),
    "sst2": (("negative", "neg", "0"), ("positive", "pos", "1")),
    "mrpc": (("not_equivalent", "0"), ("equivalent", "1")),
    "qqp": (("not_duplicate", "0"), ("duplicate", "1")),
    "mnli": (("entailment",), ("neutral",), ("contradiction",)),
    "qnli": (("entailment",), ("not_entailment",)),
    "rte": (("entailment",), ("not_entailment",)),
    "wnli": (("not_entailment", "0"), ("entailment", "1")),
}


def _label_key(name: object) -> str:
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


def head_label_problem(spec: TaskSpec, id2label: dict[int, str]) -> str | None:
    """Why a classification head's label names (``config.id2label``, class index -> name) do not
    fit ``spec``, or None when they do. Each class must be called ``LABEL_<i>`` (transformers'
    generic name) or one of :data:`CLASS_NAMES` for that same index (case, spaces, ``_`` and
    ``-`` ignored). The label *count* is checked by the caller; a regression task has no names."""
    if spec.is_regression or spec.name not in CLASS_NAMES:
        return None
    names = CLASS_NAMES[spec.name]
    theirs = [id2label.get(i, f"LABEL_{i}") for i in range(len(names))]
    fits = [_label_key(n) == f"label{i}" or _label_key(n) in {_label_key(a) for a in names[i]}
            for i, n in enumerate(theirs)]
    if all(fits):
        return None
    wanted = ", ".join(f"{i}: {n[0]}" for i, n in enumerate(names))
    shown = ", ".join(f"{i}: {n}" for i, n in enumerate(theirs))
    index_of = {_label_key(a): i for i, aliases in enumerate(names) for a in aliases}
    if sorted(index_of.get(_label_key(n), -1) for n in theirs) == list(range(len(names))):
        return (f"its labels ({shown}) are {spec.name}'s in another order ({wanted}), so its outputs would be "
                f"scored against the wrong classes; re-order the classifier's output rows (and id2label) to "
                f"{spec.name}'s order, or fine-tune a base model here instead (model: + teacher: {{steps: N}})")
    return (f"its labels ({shown}) are not {spec.name}'s ({wanted}); if its outputs already follow that "
            f"order, set id2label (and label2id) in its config.json to those names or to LABEL_0, LABEL_1, ...; "
            f"otherwise fine-tune a base model here instead (model: + teacher: {{steps: N}})")


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).lower()


def get_task(name: str | TaskSpec) -> TaskSpec:
    """Return the spec for ``name`` ("sst2", "SST-2", "sts-b", "MNLI" ...); a spec passes through."""
    if isinstance(name, TaskSpec):
        return name
    spec = TASKS.get(_normalise(str(name)))
    if spec is None:
        valid = ", ".join(TASKS)
        raise ValueError(f"unknown GLUE task {name!r}; valid names: {valid}")
    return spec
