"""The nine GLUE tasks: what each one reads, predicts and is scored by."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["TaskSpec", "Example", "TASKS", "get_task"]


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
