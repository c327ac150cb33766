"""The typed hooks a registry entry may declare: what a method can do beyond ``apply``.

Code outside ``methods/`` asks the entry (``get_method(name)``), never the method's name:
which runtimes refuse a config (:data:`RuntimeLimits`), which model of an architecture it cannot
take (:data:`ModelRefusal`), how finalize retrains the recovery step (:data:`RecoveryParams`,
given a :class:`FinalBudget`), and what a study makes once before its first trial
(:class:`StudyHook`: the elastic student), fed with :class:`StudyInputs` and giving
:class:`Prepared`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from torch import nn

from ..arch import ArchAdapter
from ..data import TaskData
from ..train import Progress

__all__ = ["FinalBudget", "GraphInt8", "ModelRefusal", "PlannedStep", "Prepared", "RecoveryParams", "RuntimeLimits",
           "StudyHook", "StudyInputs"]

# config -> {runtime: why that runtime cannot deploy a step with this config} (beyond MethodSpec.runtime and units)
RuntimeLimits = Callable[[Any], Mapping[str, str]]
# (the model's adapter, the model) -> why this model cannot take the method though its family may (None: it can)
ModelRefusal = Callable[[ArchAdapter, nn.Module], str | None]
# how ONNX Runtime redoes a step's int8 on the float graph: its dynamic quantizer, or QDQ with the calibrated ranges
GraphInt8 = Literal["dynamic", "static"]


class FinalBudget(Protocol):
    """The second fidelity's training (``study_config.FinalizeSettings`` is one)."""

    @property
    def steps(self) -> int: ...

    @property
    def lr(self) -> float: ...

    @property
    def temperature(self) -> float: ...

    @property
    def alpha_hidden(self) -> float: ...

    @property
    def bf16(self) -> bool: ...


# (the params of the recipe's own step of the method, None where finalize inserts one; the final budget)
# -> that step's params at the final fidelity
RecoveryParams = Callable[[Mapping[str, Any] | None, FinalBudget], dict[str, Any]]


class PlannedStep(Protocol):
    """A search space's step as a study hook sees it (``search.space.StepSpace`` is one)."""

    @property
    def id(self) -> str: ...

    @property
    def method(self) -> str: ...

    def may_take(self, param: str) -> tuple[Any, ...]:
        """The values ``param`` may take in the step (its fixed value, or a categorical's choices)."""
        ...


@dataclass(frozen=True)
class StudyInputs:
    """What a study hook is given: the teacher and the task data of the study (or of ``apply``)."""

    teacher: nn.Module
    teacher_hash: str
    data: TaskData
    train_subset: int | None = None  # the study's recovery.train_subset
    progress: Progress | None = None


@dataclass(frozen=True)
class Prepared:
    """What a study hook made: the params it fills into every step of its method in a trial's recipe
    (``{"student": key}``), and its record in the study's provenance (``teacher.<method>``, so a
    recipe carries it: what ``apply`` needs to make it again)."""

    params: dict[str, Any]
    record: dict[str, Any]


@dataclass(frozen=True)
class StudyHook:
    """Something a method's steps need that a study makes once, before its first trial (the elastic
    student, trained from the teacher or found in the cache).

    ``settle(steps, settings, space, study)``: the method's study-file settings as the space's
    steps need them (``space`` and ``study`` name the files for a one-line refusal); run on every
    study, whether or not its space has the method. ``prepare(inputs, settings)``: make (or find)
    it. ``ensure(params, record, inputs)``: in ``apply``, make sure what the recipe's steps of the
    method name (``params``: theirs) exists here, from the recipe's ``record`` of it (None: none).
    """

    prepare: Callable[[StudyInputs, Any], Prepared]
    ensure: Callable[[Sequence[Mapping[str, Any]], Mapping[str, Any] | None, StudyInputs], None]
    settle: Callable[[Sequence[PlannedStep], Any, str, str], Any] | None = None
