"""What one study stores, as one type: written by the search and finalize, read by report, export and CLI.

A study keeps its study-level results as Optuna study user attributes; :class:`StudyRecord` has
one field per attribute, under the attribute's own name (the names are those of the first
studies, so every study on disk still reads). :meth:`StudyRecord.write` stores the fields a
record holds on a study (the others are left as they are), :meth:`StudyRecord.from_study` reads
one back — tolerant of studies written before an attribute existed (it is then None) and of
attributes this version does not know (kept in ``extra``). The values themselves stay the JSON
the attributes hold (a reference is ``{"metric", "latency_ms", "speedup", ...}``); the record
names them, and the properties below read the few values several readers need.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna

from .trial_record import FINAL_ATTR

__all__ = ["REFERENCE_KEYS", "StudyRecord"]
REFERENCE_KEYS = ("teacher", "int8_baseline", "ort_int8_baseline")  # the study's timed reference points


@dataclass(frozen=True)
class StudyRecord:
    # --- the study's settings (written by every search process)
    task: str | None = None  # the task's name (sst2, mrpc, ...)
    main_metric: str | None = None  # the task's main metric (the first objective's name)
    profile: dict[str, Any] | None = None  # HardwareProfile.to_dict() of the search
    runtimes: tuple[str, ...] | None = None  # the runtimes trials deploy with
    latency_budget_ms: float | None = None  # None: no budget
    search_space: str | None = None  # the space's file
    early_stop: dict[str, Any] | None = None  # EarlyStopSettings.to_dict()
    # --- recorded once per study
    fingerprint: dict[str, Any] | None = None  # the machine (hardware_fingerprint), with the machine probe
    deploy_variant: dict[str, Any] | None = None  # the deployed ONNX Runtime graph: how, variant, label
    majority_baseline: dict[str, Any] | None = None  # the floor: always predicting the most frequent label
    int8_baseline: dict[str, Any] | None = None  # the teacher's PyTorch dynamic int8 (metric, latency, speedup)
    ort_int8_baseline: dict[str, Any] | None = None  # the teacher's ONNX Runtime dynamic int8
    teacher: dict[str, Any] | None = None  # metrics, latency_ms (the study's reference), size, path, weights_hash ...
    teacher_latency_runs: tuple[dict[str, Any], ...] | None = None  # each process's own teacher baseline
    # --- a finalized study
    final: dict[str, dict[str, Any]] | None = None  # trial number (str) -> the final record's attributes
    finalize: dict[str, Any] | None = None  # the last finalize: settings, candidates, kendall_tau ...
    extra: dict[str, Any] = field(default_factory=dict)  # attributes this version does not know

    # --- reading
    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> StudyRecord:
        """A record from stored attributes (missing ones None, unknown ones in ``extra``)."""
        known: dict[str, Any] = {k: v for k, v in attrs.items() if k in _ATTRS}
        for name in ("runtimes", "teacher_latency_runs"):
            if known.get(name) is not None:
                known[name] = tuple(known[name])
        return cls(**known, extra={k: v for k, v in attrs.items() if k not in _ATTRS})

    @classmethod
    def from_study(cls, study: optuna.Study) -> StudyRecord:
        """The record of a study (its user attributes as they are now)."""
        return cls.from_attrs(study.user_attrs)

    @classmethod
    def of(cls, record: StudyRecord | Mapping[str, Any]) -> StudyRecord:
        """``record`` itself, or the record of a study's user attributes."""
        return record if isinstance(record, StudyRecord) else cls.from_attrs(record)

    # --- writing
    def to_attrs(self) -> dict[str, Any]:
        """The stored attributes: every field the record holds (not None), then ``extra``."""
        out: dict[str, Any] = {}
        for name in _ATTRS:
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value) if isinstance(value, tuple) else value
        return {**out, **self.extra}

    def write(self, study: optuna.Study, *names: str) -> None:
        """Store the record's attributes on ``study``: those it holds (the others are left as they are),
        or exactly the fields ``names`` (None too: e.g. a search without a latency budget)."""
        if not names:
            for key, value in self.to_attrs().items():
                study.set_user_attr(key, value)
            return
        for name in names:
            if name not in _ATTRS:
                raise KeyError(f"{name!r} is not a study attribute ({', '.join(_ATTRS)})")
            value = getattr(self, name)
            study.set_user_attr(name, list(value) if isinstance(value, tuple) else value)

    def replace(self, **changes: Any) -> StudyRecord:
        return dataclasses.replace(self, **changes)

    # --- views
    @property
    def teacher_info(self) -> dict[str, Any]:
        """``teacher`` (empty when not recorded)."""
        return dict(self.teacher or {})

    @property
    def teacher_weights_hash(self) -> str | None:
        value = self.teacher_info.get("weights_hash")
        return None if value is None else str(value)

    @property
    def teacher_latency_ms(self) -> float | None:
        """The study's reference latency: the first process's teacher baseline."""
        value = self.teacher_info.get("latency_ms")
        return float(value) if value else None

    @property
    def teacher_search_metric(self) -> float | None:
        """The teacher's main metric on the search's dev data (None before the references were measured)."""
        value = self.teacher_info.get("search_metric")
        return None if value is None else float(value)

    def reference(self, key: str) -> dict[str, Any]:
        """One of the study's points by attribute name (``teacher``, ``int8_baseline``, ``ort_int8_baseline``,
        ``majority_baseline``); empty when not recorded."""
        if key not in _REFERENCES:
            raise KeyError(f"{key!r} is not a reference of a study ({', '.join(_REFERENCES)})")
        value = getattr(self, key)
        return dict(value) if isinstance(value, Mapping) else {}

    @property
    def final_entries(self) -> dict[int, dict[str, Any]]:
        """The finalized trials' complete final entries, by trial number."""
        return {int(k): v for k, v in (self.final or {}).items()
                if isinstance(v, dict) and v.get("status") == "complete"}


_ATTRS = tuple(f.name for f in dataclasses.fields(StudyRecord) if f.name != "extra")
_REFERENCES = (*REFERENCE_KEYS, "majority_baseline")
assert FINAL_ATTR in _ATTRS  # the attribute finalize writes is a field here
