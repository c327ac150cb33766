"""Search spaces: declarative YAML → ``trial.suggest_*`` → :class:`Recipe`.

This is the only module that calls ``trial.suggest_*``. A space lists candidate steps in
recipe order; each step names a method, whether it is optional (method choice), which
other steps it requires (conditional: a knob is suggested only when its method is on),
and its params, each either a fixed value or a distribution::

    steps:
      - method: drop_layers
        optional: true
        params:
          keep: {type: int, low: 2, high: 5}
      - method: distill
        requires_any: [drop_layers]
        params:
          steps: {type: categorical, choices: [60, 120]}
      - method: quantize_dynamic
        optional: true

Parameter names are namespaced ``<id>.<param>`` (``id`` defaults to the method name;
give ``id`` when one method appears twice) and ``<id>.on`` for optional steps.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from ..methods import MethodError, get_method
from ..recipe import Recipe, RecipeError, Step

DIST_TYPES = ("int", "float", "categorical")


class SpaceError(ValueError):
    """The search space file is invalid."""


@dataclass(frozen=True)
class Dist:
    type: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        if self.type == "float":
            return trial.suggest_float(name, float(self.low), float(self.high), step=self.step, log=self.log)
        return trial.suggest_categorical(name, list(self.choices))

    def extremes(self) -> list[Any]:
        """Values that span the range, used to validate the knob before any trial runs."""
        if self.type == "categorical":
            return list(self.choices)
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


@dataclass(frozen=True)
class StepSpace:
    id: str
    method: str
    optional: bool = False
    requires_any: tuple[str, ...] = ()
    fixed: dict[str, Any] = field(default_factory=dict)
    dists: dict[str, Dist] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchSpace:
    path: Path
    steps: tuple[StepSpace, ...]

    def suggest(self, trial: optuna.Trial) -> Recipe:
        """The recipe of one trial (only the steps switched on, knobs of those only)."""
        on: set[str] = set()
        steps: list[Step] = []
        for s in self.steps:
            if s.requires_any and not on.intersection(s.requires_any):
                continue
            if s.optional and not trial.suggest_categorical(f"{s.id}.on", [True, False]):
                continue
            params = dict(s.fixed)
            params.update({k: d.suggest(trial, f"{s.id}.{k}") for k, d in s.dists.items()})
            steps.append(Step(s.method, params, get_method(s.method).version))
            on.add(s.id)
        return Recipe(steps=steps)  # every optional step off: the uncompressed teacher

    def method_names(self) -> list[str]:
        return sorted({s.method for s in self.steps})


def _parse_dist(src: str, key: str, spec: Any) -> Dist | None:
    """None for a fixed value; a Dist for a mapping with 'type'."""
    if not (isinstance(spec, dict) and "type" in spec):
        return None
    if spec["type"] not in DIST_TYPES:
        raise SpaceError(f"{src}: {key}: type must be one of {DIST_TYPES}, got {spec['type']!r}")
    allowed = {"type", "choices"} if spec["type"] == "categorical" else {"type", "low", "high", "step", "log"}
    extra = sorted(set(spec) - allowed)
    if extra:
        raise SpaceError(f"{src}: {key}: unknown key(s) {extra} for a {spec['type']} distribution; allowed {sorted(allowed)}")
    if spec["type"] == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{src}: {key}: a categorical needs a non-empty 'choices' list")
        return Dist("categorical", choices=tuple(tuple(c) if isinstance(c, list) else c for c in choices))
    low, high = spec.get("low"), spec.get("high")
    if not isinstance(low, (int, float)) or not isinstance(high, (int, float)):
        raise SpaceError(f"{src}: {key}: needs numeric 'low' and 'high'")
    if low > high:
        raise SpaceError(f"{src}: {key}: empty range, low {low} > high {high}; swap them")
    if spec.get("log") and low <= 0:
        raise SpaceError(f"{src}: {key}: a log range needs low > 0")
    return Dist(spec["type"], low, high, spec.get("step"), bool(spec.get("log", False)))


STEP_KEYS = {"method", "id", "optional", "requires_any", "params"}


def load_space(path: str | Path) -> SearchSpace:
    """Parse and validate a space file: unknown methods or knobs, empty ranges, bad order."""
    path = Path(path)
    src = str(path)
    if not path.is_file():
        raise SpaceError(f"search space {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpaceError(f"{src}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("steps"), list) or not raw["steps"]:
        raise SpaceError(f"{src}: expected a mapping with a non-empty 'steps' list")
    steps: list[StepSpace] = []
    ids: set[str] = set()
    for i, s in enumerate(raw["steps"]):
        where = f"{src}: steps[{i}]"
        if not isinstance(s, dict) or "method" not in s:
            raise SpaceError(f"{where}: each step needs a 'method'")
        extra = sorted(set(s) - STEP_KEYS)
        if extra:
            raise SpaceError(f"{where}: unknown key(s) {extra}; allowed {sorted(STEP_KEYS)}")
        try:
            spec = get_method(str(s["method"]))
        except MethodError as err:
            raise SpaceError(f"{where}: {err}") from None
        sid = str(s.get("id", spec.name))
        if sid in ids:
            raise SpaceError(f"{where}: duplicate step id {sid!r}; give each repeated method its own 'id'")
        requires = tuple(s.get("requires_any") or ())
        missing = [r for r in requires if r not in ids]
        if missing:
            raise SpaceError(f"{where}: requires_any names {missing}, which are not earlier step ids")
        params = s.get("params") or {}
        if not isinstance(params, dict):
            raise SpaceError(f"{where}: 'params' must be a mapping")
        fixed, dists = {}, {}
        for k, v in params.items():
            d = _parse_dist(src, f"{sid}.{k}", v)
            if d is None:
                fixed[k] = tuple(v) if isinstance(v, list) else v
            else:
                dists[k] = d
        step = StepSpace(sid, spec.name, bool(s.get("optional", False)), requires, fixed, dists)
        _check_knobs(src, step)
        steps.append(step)
        ids.add(sid)
    space = SearchSpace(path.resolve(), tuple(steps))
    try:  # every step on, in file order: the stage order must hold
        Recipe(steps=[Step(s.method, dict(s.fixed), get_method(s.method).version) for s in steps]).validate()
    except RecipeError as err:
        if "stage" in str(err):
            raise SpaceError(f"{src}: step order: {err}") from None
    return space


def _check_knobs(src: str, step: StepSpace) -> None:
    """Every combination of range extremes must make a valid Config (catches unknown knobs too)."""
    spec = get_method(step.method)
    names = list(step.dists)
    for values in itertools.islice(itertools.product(*(step.dists[n].extremes() for n in names)), 64):
        params = {**step.fixed, **dict(zip(names, values))}
        try:
            spec.make_config(params)
        except MethodError as err:
            raise SpaceError(f"{src}: step {step.id!r}: {err} (with {params}); fix the range or value") from None
