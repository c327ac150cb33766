"""Search spaces: declarative YAML → ``trial.suggest_*`` → :class:`Recipe`.

This is the only module that calls ``trial.suggest_*``. A space lists candidate steps in
recipe order; each step names a method and its params (a fixed value or a distribution),
and says when it is on::

    steps:
      - method: drop_layers
        optional: true                  # method choice: suggested on/off (``drop_layers.on``)
        params:
          keep: {type: int, low: 2, high: 5}
      - method: distill
        requires_any: [drop_layers]     # on only when one of these steps is on
        excludes: [qat]                 # off whenever one of these is on
        params:
          steps: {type: categorical, choices: [100, 200]}
      - method: qat
        optional: true
        requires_any: [quantize_dynamic]   # may name a later step: on/off is decided first
      - method: quantize_dynamic
        choice: quantize                # steps sharing a ``choice`` group: at most one is on
        optional: true                  # (``choice.quantize`` ∈ members [+ "none" when optional])
      - method: cast_precision
        choice: quantize
        optional: true

Conditional parameters: a step's knobs are suggested only when the step is on. On/off is
decided for every step first (in an order where every ``requires_any`` / ``excludes``
target is decided before the steps that name it; a cycle is an error), then the knobs of
the steps that are on, in file order. Parameter names are namespaced ``<id>.<param>``
(``id`` defaults to the method name; give ``id`` when one method appears twice). A
categorical whose choices are lists (e.g. ``parts``) is suggested by its JSON text.

Knobs relative to the model: ``of: layers | heads | ffn | hidden`` makes an int range (or
numeric categorical choices) fractions of the model's own depth, heads per layer, FFN width
or hidden size, so one space fits any model::

    keep: {type: int, low: 0.33, high: 0.84, of: layers, min: 2}   # whole layers in 33%..84% of the depth
    rank: {type: int, low: 0.17, high: 0.5, step: 0.083, of: hidden}
    embedding_rank: {type: categorical, choices: [0.17, 0.33], of: hidden}

:meth:`SearchSpace.for_model` turns them into absolute values when the study starts: an int
range keeps the whole numbers inside ``low·n .. high·n`` (``step`` a fraction too, at least 1),
at least ``min`` (default 1) and at most ``n``; a choice is ``round(c·n)``. Absolute values
(no ``of``) work as before.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from .. import safe_yaml
from ..errors import UserError
from ..methods import MethodError, get_method
from ..recipe import Recipe, RecipeError, Step

DIST_TYPES = ("int", "float", "categorical")
NONE_CHOICE = "none"
ONLY_STEP = "choice.only_step"  # the step switched on when the sampler switched every step off (SearchSpace.decide)
SIZES = ("layers", "heads", "ffn", "hidden")  # what ``of:`` may name (see model_sizes)
NOMINAL_SIZES = {"layers": 12, "heads": 12, "ffn": 3072, "hidden": 768}  # load-time knob check only


class SpaceError(UserError, ValueError):
    """The search space file is invalid (or cannot be applied to the study's model)."""


def _plain(value: Any) -> Any:
    """Tuples back to lists, so params stay JSON/YAML-safe."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _frozen(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


@dataclass(frozen=True)
class Dist:
    type: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    of: str | None = None  # relative to this size of the model (one of SIZES) until resolved
    min: int = 1  # relative knobs: the smallest absolute value

    def resolve(self, sizes: dict[str, int]) -> Dist:
        """This knob in absolute units of a model of ``sizes`` (itself when not relative)."""
        if self.of is None:
            return self
        n = sizes[self.of]

        def count(x: float, how: Any = round) -> int:
            return min(n, max(self.min, int(how(round(x * n, 9)))))

        if self.type == "categorical":
            return Dist("categorical", choices=tuple(dict.fromkeys(count(c) for c in self.choices)))
        low, high = count(self.low, math.ceil), count(self.high, math.floor)  # type: ignore[arg-type]
        high = max(low, high)
        step = max(1, round((self.step or 0) * n))
        return Dist("int", low, low + (high - low) // step * step, step if self.step else None, self.log)

    @property
    def labelled(self) -> bool:
        """Categorical with list choices: suggested by label (the choice's JSON)."""
        return any(isinstance(c, tuple) for c in self.choices)

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.of is not None:
            raise SpaceError(f"{name} is relative to the model's {self.of}; resolve the space with "
                             f"SearchSpace.for_model(model) before suggesting")
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)  # type: ignore[arg-type]
        if self.type == "float":
            return trial.suggest_float(name, float(self.low), float(self.high), step=self.step, log=self.log)  # type: ignore[arg-type]
        if self.labelled:
            labels = [json.dumps(_plain(c)) for c in self.choices]
            return json.loads(trial.suggest_categorical(name, labels))
        return trial.suggest_categorical(name, list(self.choices))

    def extremes(self) -> list[Any]:
        """Values that span the range, used to validate the knob before any trial runs."""
        if self.type == "categorical":
            return [_plain(c) for c in self.choices]
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]  # type: ignore[arg-type]  # set for int/float knobs


@dataclass(frozen=True)
class StepSpace:
    id: str
    method: str
    optional: bool = False
    requires_any: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    choice: str | None = None
    fixed: dict[str, Any] = field(default_factory=dict)
    dists: dict[str, Dist] = field(default_factory=dict)

    def fixed_params(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in self.fixed.items()}

    def may_take(self, param: str) -> tuple[Any, ...]:
        """The values ``param`` may take in this step: its fixed value, or its knob's choices (a numeric
        range gives none)."""
        fixed = self.fixed_params()
        return ((fixed[param],) if param in fixed else ()) + tuple(getattr(self.dists.get(param), "choices", ()))

    def resolve(self, sizes: dict[str, int]) -> StepSpace:
        return dataclasses.replace(self, dists={k: d.resolve(sizes) for k, d in self.dists.items()})


@dataclass(frozen=True)
class SearchSpace:
    path: Path
    steps: tuple[StepSpace, ...]
    order: tuple[str, ...] = ()  # on/off decision order: step ids and "choice:<group>" nodes
    skipped: tuple[tuple[str, str], ...] = ()  # (step id, why) left out for the model (see for_model)

    def without(self, gone: set[str]) -> SearchSpace:
        """This space less the steps ``gone``, and less the steps that require only gone ones
        (they could never be on); references to gone steps are dropped."""
        gone = set(gone)
        while True:
            more = {s.id for s in self.steps if s.id not in gone and s.requires_any and set(s.requires_any) <= gone}
            if not more:
                break
            gone |= more
        if not gone:
            return self
        steps = [dataclasses.replace(s, requires_any=tuple(r for r in s.requires_any if r not in gone),
                                     excludes=tuple(r for r in s.excludes if r not in gone))
                 for s in self.steps if s.id not in gone]
        return dataclasses.replace(self, steps=tuple(steps), order=_decision_order(str(self.path), steps))

    def for_runtime(self, runtime: str) -> SearchSpace:
        """This space less the steps that cannot deploy in ``runtime`` whatever their knobs say: a
        method that only deploys in another runtime (``quantize_static`` in a torch study, from the
        registry) or a step every choice of whose params ``runtime`` refuses (bf16 ``cast_precision``
        in an onnxruntime study; :func:`autosqueeze.runtimes.step_refusal`); references to them are
        dropped too. A step with some deployable choices stays (the trial's runtime check refuses the rest)."""
        from ..runtimes import step_refusal

        return self.without({s.id for s in self.steps
                             if all(step_refusal(s.method, params, runtime) for params in param_choices(s))})

    def resolve(self, sizes: dict[str, int]) -> SearchSpace:
        """Relative knobs (``of:``) in absolute units for a model of ``sizes`` (see :func:`model_sizes`)."""
        return dataclasses.replace(self, steps=tuple(s.resolve(sizes) for s in self.steps))

    def for_model(self, model: Any) -> SearchSpace:
        """This space for ``model`` (the study's teacher): relative knobs (``of:``) resolved, and
        the optional steps (or choice members) whose method the model's architecture refuses left
        out, recorded in ``skipped``. A step every trial needs that the architecture refuses is a
        one-line SpaceError (the space cannot serve this model)."""
        from ..arch import get_adapter

        adapter = get_adapter(model)
        refused = {s.id: why for s in self.steps for why in [get_method(s.method).refusal(model, adapter)] if why}
        for s in self.steps:
            needed = not s.optional and (not s.choice or all(m.id in refused for m in self.groups()[s.choice]))
            if s.id in refused and needed:
                raise SpaceError(
                    f"{self.path}: step {s.id!r} ({s.method}) cannot run on this {adapter.family} model: "
                    f"{refused[s.id]}; use a space without it, or make the step optional to skip it on such models")
        space = self.without(set(refused)).resolve(model_sizes(model))
        return dataclasses.replace(space, skipped=self.skipped + tuple(
            (sid, f"{self.step(sid).method} is not supported for {adapter.family} models: {why}")
            for sid, why in refused.items()))

    def relative_knobs(self) -> list[str]:
        return [f"{s.id}.{k}" for s in self.steps for k, d in s.dists.items() if d.of is not None]

    def groups(self) -> dict[str, list[StepSpace]]:
        out: dict[str, list[StepSpace]] = {}
        for s in self.steps:
            if s.choice:
                out.setdefault(s.choice, []).append(s)
        return out

    def decide(self, trial: optuna.Trial) -> set[str]:
        """Which steps are on in this trial (method choice, requires_any, excludes).

        Never none: a trial with every step off would be the uncompressed teacher, which the study
        already measures as a reference. When the sampler switches everything off, the categorical
        ``choice.only_step`` (over the steps that can be on by themselves) picks one step to switch on,
        and the steps that require it are decided as usual.
        """
        on = self._decide(trial)
        alone = [s.id for s in self.steps if not s.requires_any]
        if on or not alone:
            return on
        return self._decide(trial, str(trial.suggest_categorical(ONLY_STEP, alone)))

    def _decide(self, trial: optuna.Trial, forced: str | None = None) -> set[str]:
        """:meth:`decide`'s pass over the nodes; ``forced`` is on without asking (its own decision, made
        in a first pass, is asked again and left as it was)."""
        by_id = {s.id: s for s in self.steps}
        groups = self.groups()
        on: set[str] = set()

        def eligible(s: StepSpace) -> bool:
            return (not s.requires_any or bool(on.intersection(s.requires_any))) and not on.intersection(s.excludes)

        for node in self.order or tuple(by_id):
            if node.startswith("choice:"):
                name = node[len("choice:"):]
                members = groups[name]
                if not any(eligible(m) for m in members):
                    continue
                options = [m.id for m in members] + ([NONE_CHOICE] if members[0].optional else [])
                picked = trial.suggest_categorical(f"choice.{name}", options)
                if forced in options:
                    on.add(forced)
                elif picked != NONE_CHOICE and eligible(by_id[picked]):
                    on.add(picked)
                continue
            s = by_id[node]
            if not eligible(s):
                continue
            if s.id == forced:
                on.add(s.id)
                continue
            if s.optional and not trial.suggest_categorical(f"{s.id}.on", [True, False]):
                continue
            on.add(s.id)
        return on

    def suggest(self, trial: optuna.Trial) -> Recipe:
        """The recipe of one trial (only the steps switched on, knobs of those only)."""
        on = self.decide(trial)
        steps: list[Step] = []
        for s in self.steps:
            if s.id not in on:
                continue
            params = s.fixed_params()
            params.update({k: d.suggest(trial, f"{s.id}.{k}") for k, d in s.dists.items()})
            steps.append(Step(s.method, params, get_method(s.method).version))
        return Recipe(steps=steps)

    def method_names(self) -> list[str]:
        return sorted({s.method for s in self.steps})

    def step(self, sid: str) -> StepSpace:
        return next(s for s in self.steps if s.id == sid)


def param_choices(step: StepSpace, limit: int = 64) -> list[dict[str, Any]]:
    """The params a step may take as far as its categorical knobs go: its fixed params with every
    combination of their choices (numeric ranges at their low end; at most ``limit``). What a
    runtime or a machine refuses is named by such choices (a dtype, a kernel), not by a range."""
    names = [k for k, d in step.dists.items() if d.type == "categorical"]
    ranged = {k: d.extremes()[0] for k, d in step.dists.items() if d.type != "categorical"}
    combos = itertools.product(*(step.dists[k].extremes() for k in names))
    return [{**step.fixed_params(), **ranged, **dict(zip(names, values))} for values in itertools.islice(combos, limit)]


def model_sizes(model: Any) -> dict[str, int]:
    """Depth, heads per layer, FFN width and hidden size of a supported model, from its config."""
    from ..arch import get_adapter

    adapter, cfg = get_adapter(model), model.config
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "dim", None)
    return {"layers": int(getattr(cfg, adapter.config_layers)), "heads": int(getattr(cfg, adapter.config_heads)),
            "ffn": int(getattr(cfg, adapter.config_ffn)), "hidden": int(hidden)}  # type: ignore[arg-type]


def _parse_relative(src: str, key: str, spec: dict[str, Any]) -> tuple[str | None, int]:
    """``of`` and ``min`` of a knob (``(None, 1)`` for an absolute one)."""
    of, least = spec.get("of"), spec.get("min", 1)
    if of is None:
        if "min" in spec:
            raise SpaceError(f"{src}: {key}: 'min' only goes with 'of' (a knob relative to the model)")
        return None, 1
    if of not in SIZES:
        raise SpaceError(f"{src}: {key}: 'of' must be one of {list(SIZES)}, got {of!r}")
    if spec["type"] == "float":
        raise SpaceError(f"{src}: {key}: 'of: {of}' turns fractions into counts: use type: int (or a categorical); "
                         f"a float knob of a method is already a fraction")
    if isinstance(least, bool) or not isinstance(least, int) or least < 1:
        raise SpaceError(f"{src}: {key}: 'min' must be an int >= 1, got {least!r}")
    values = spec.get("choices") if spec["type"] == "categorical" else [spec.get("low"), spec.get("high")]
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                                               for v in values):
        raise SpaceError(f"{src}: {key}: with 'of: {of}' the values are fractions of the model's {of}: "
                         f"positive numbers, got {values!r}")
    return of, least


def _parse_dist(src: str, key: str, spec: Any) -> Dist | None:
    """None for a fixed value; a Dist for a mapping with 'type'."""
    if not (isinstance(spec, dict) and "type" in spec):
        return None
    if spec["type"] not in DIST_TYPES:
        raise SpaceError(f"{src}: {key}: type must be one of {DIST_TYPES}, got {spec['type']!r}")
    allowed = {"type", "choices", "of", "min"} if spec["type"] == "categorical" else \
        {"type", "low", "high", "step", "log", "of", "min"}
    extra = sorted(set(spec) - allowed)
    if extra:
        raise SpaceError(f"{src}: {key}: unknown key(s) {extra} for a {spec['type']} distribution; "
                         f"allowed {sorted(allowed)}")
    if spec["type"] == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{src}: {key}: a categorical needs a non-empty 'choices' list")
        if len(choices) > MAX_CHOICES:
            raise SpaceError(f"{src}: {key}: {len(choices)} choices, more than the {MAX_CHOICES} a knob may have; "
                             f"use an int or float range")
        if any(isinstance(c, dict) for c in choices):
            raise SpaceError(f"{src}: {key}: categorical choices must be values or lists, not mappings")
        frozen = tuple(_frozen(c) for c in choices)
        if len(set(map(repr, frozen))) != len(frozen):
            raise SpaceError(f"{src}: {key}: repeated choices {choices}; list each once")
        of, least = _parse_relative(src, key, spec)
        return Dist("categorical", choices=frozen, of=of, min=least)
    low, high = spec.get("low"), spec.get("high")
    if isinstance(low, bool) or isinstance(high, bool) or not isinstance(low, (int, float)) \
            or not isinstance(high, (int, float)):
        raise SpaceError(f"{src}: {key}: needs numeric 'low' and 'high'")
    if not (math.isfinite(low) and math.isfinite(high)):
        raise SpaceError(f"{src}: {key}: 'low' and 'high' must be finite numbers, got {low}..{high}")
    of, least = _parse_relative(src, key, spec)
    if spec["type"] == "int" and of is None and not (float(low).is_integer() and float(high).is_integer()):
        raise SpaceError(f"{src}: {key}: an int range needs whole 'low' and 'high', got {low}..{high}; "
                         f"use type: float for fractions")
    if low > high:
        raise SpaceError(f"{src}: {key}: empty range, low {low} > high {high}; swap them")
    step = spec.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise SpaceError(f"{src}: {key}: 'step' must be a positive number, got {step!r}")
    if step is not None and spec["type"] == "int" and of is None and not float(step).is_integer():
        raise SpaceError(f"{src}: {key}: the 'step' of an int range must be a whole number, got {step!r}; "
                         f"use type: float for fractions")
    if step is not None and not math.isfinite(step):
        raise SpaceError(f"{src}: {key}: 'step' must be a finite number, got {step!r}")
    if spec.get("log") and low <= 0:
        raise SpaceError(f"{src}: {key}: a log range needs low > 0")
    if spec.get("log") and step is not None:
        raise SpaceError(f"{src}: {key}: give 'step' or 'log: true', not both")
    return Dist(spec["type"], low, high, step, bool(spec.get("log", False)), of=of, min=least)


MAX_STEPS = 64  # steps in a space (there are about 20 methods; a step may repeat one with its own id)
MAX_CHOICES = 1000  # choices of one categorical knob
STEP_KEYS = {"method", "id", "optional", "requires_any", "excludes", "choice", "params"}


def _id_list(where: str, key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SpaceError(f"{where}: '{key}' must be a list of step ids, got {value!r}")
    return tuple(value)


def load_space(path: str | Path) -> SearchSpace:
    """Parse and validate a space file: unknown methods or knobs, empty ranges, bad order.

    Whether the ranges fit a particular model is checked later, by
    :func:`autosqueeze.search.validate.validate_for_model` (it needs the model).
    """
    path = Path(path)
    src = str(path)
    if not path.is_file():
        raise SpaceError(f"search space {path} does not exist")
    try:
        raw = safe_yaml.load_file(path)
    except safe_yaml.YamlTooLarge as err:
        raise SpaceError(f"{src}: refused: {err}") from None
    except yaml.YAMLError as err:
        raise SpaceError(f"{src}: not valid YAML: {str(err).splitlines()[0]}") from None
    except UnicodeDecodeError as err:
        raise SpaceError(f"{src}: not a UTF-8 text file (byte {err.start}); save it as UTF-8") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("steps"), list) or not raw["steps"]:
        raise SpaceError(f"{src}: expected a mapping with a non-empty 'steps' list")
    if len(raw["steps"]) > MAX_STEPS:
        raise SpaceError(f"{src}: {len(raw['steps'])} steps, more than the {MAX_STEPS} a space may list (every "
                         f"trial decides each step); keep the steps you mean to compare")
    extra_top = sorted(set(raw) - {"steps", "description"})
    if extra_top:
        raise SpaceError(f"{src}: unknown top-level key(s) {extra_top}; allowed: ['description', 'steps']")
    steps: list[StepSpace] = []
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
        if any(sid == t.id for t in steps):
            raise SpaceError(f"{where}: duplicate step id {sid!r}; give each repeated method its own 'id'")
        if not isinstance(s.get("optional", False), bool):
            raise SpaceError(f"{where}: 'optional' must be true or false")
        choice = s.get("choice")
        if choice is not None and not (isinstance(choice, str) and choice):
            raise SpaceError(f"{where}: 'choice' must be a group name (a string), got {choice!r}")
        params = s.get("params") or {}
        if not isinstance(params, dict):
            raise SpaceError(f"{where}: 'params' must be a mapping")
        fixed, dists = {}, {}
        for k, v in params.items():
            d = _parse_dist(src, f"{sid}.{k}", v)
            if d is None:
                fixed[k] = _frozen(v)
            else:
                dists[k] = d
        step = StepSpace(sid, spec.name, bool(s.get("optional", False)),
                         _id_list(where, "requires_any", s.get("requires_any")),
                         _id_list(where, "excludes", s.get("excludes")), choice, fixed, dists)
        _check_knobs(src, step)
        steps.append(step)
    order = _decision_order(src, steps)
    space = SearchSpace(path.resolve(), tuple(steps), order)
    try:  # every step on, in file order: the stage order must hold
        Recipe(steps=[Step(s.method, s.fixed_params(), get_method(s.method).version) for s in steps]).validate()
    except RecipeError as err:
        if "stage" in str(err):
            raise SpaceError(f"{src}: step order: {err}") from None
    return space


def _decision_order(src: str, steps: list[StepSpace]) -> tuple[str, ...]:
    """Nodes (step ids, ``choice:<group>``) ordered so every referenced step is decided first."""
    ids = [s.id for s in steps]
    node_of = {s.id: (f"choice:{s.choice}" if s.choice else s.id) for s in steps}
    deps: dict[str, set[str]] = {}
    for s in steps:
        for key, refs in (("requires_any", s.requires_any), ("excludes", s.excludes)):
            unknown = [r for r in refs if r not in ids]
            if unknown:
                raise SpaceError(f"{src}: step {s.id!r}: {key} names {unknown}, which are not step ids; "
                                 f"known ids: {ids}")
            if s.id in refs:
                raise SpaceError(f"{src}: step {s.id!r}: {key} names the step itself")
        node = node_of[s.id]
        deps.setdefault(node, set()).update(node_of[r] for r in s.requires_any + s.excludes)
    groups: dict[str, list[StepSpace]] = {}
    for s in steps:
        if s.choice:
            groups.setdefault(s.choice, []).append(s)
    for name, members in groups.items():
        if len({m.optional for m in members}) > 1:
            raise SpaceError(f"{src}: choice group {name!r}: members disagree on 'optional' "
                             f"({ {m.id: m.optional for m in members} }); set it the same on every member")
        if f"choice:{name}" in deps[f"choice:{name}"]:
            raise SpaceError(f"{src}: choice group {name!r}: a member's requires_any/excludes names another member; "
                             f"members of one group already exclude each other")
    order: list[str] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, chain: list[str]) -> None:
        if state.get(node) == 2:
            return
        if state.get(node) == 1:
            raise SpaceError(f"{src}: requires_any/excludes form a cycle: {' -> '.join(chain + [node])}; "
                             f"remove one of these references")
        state[node] = 1
        for dep in sorted(deps.get(node, ()), key=lambda n: min(i for i, s in enumerate(ids) if node_of[s] == n)):
            visit(dep, chain + [node])
        state[node] = 2
        order.append(node)

    for sid in ids:
        visit(node_of[sid], [])
    return tuple(order)


def knob_variants(step: StepSpace, limit: int = 64) -> list[tuple[str | None, dict[str, Any]]]:
    """``(knob, params)`` pairs spanning each knob's extremes (others at their first extreme).

    The first pair (knob ``None``) has every knob at its first extreme; each later one moves
    one knob. Used to check configs (here) and to apply them to the model (validate.py).
    """
    base = {**step.fixed_params(), **{k: d.extremes()[0] for k, d in step.dists.items()}}
    out: list[tuple[str | None, dict[str, Any]]] = [(None, base)]
    for name, d in step.dists.items():
        for value in d.extremes()[1:]:
            out.append((name, {**base, name: value}))
    return out[:limit]


def _check_knobs(src: str, step: StepSpace) -> None:
    """Every combination of range extremes must make a valid Config (catches unknown knobs too);
    relative knobs are checked as for a BERT-base here, against the real model by validate.py."""
    spec = get_method(step.method)
    step = step.resolve(NOMINAL_SIZES)
    names = list(step.dists)
    combos = itertools.product(*(step.dists[n].extremes() for n in names))
    for values in itertools.islice(combos, 64):
        params = {**step.fixed_params(), **dict(zip(names, values))}
        try:
            spec.make_config(params)
        except MethodError as err:
            raise SpaceError(f"{src}: step {step.id!r}: {err} (with {params}); fix the range or value") from None


RUNTIME_PARAM = "runtime"


def suggest_runtime(trial: optuna.Trial, recipe: Recipe, runtimes: tuple[str, ...] | list[str],
                    int8_slow: Collection[str] = ()) -> str:
    """The runtime a trial deploys its recipe with: an Optuna categorical over the study's
    ``runtimes`` that can run every step (:func:`autosqueeze.runtimes.offered_runtimes`).

    A categorical's choices must stay the same for one parameter name across a study, so the
    parameter is ``runtime`` when every listed runtime is offered, and ``runtime.<a>+<b>`` for a
    smaller set; a single offered runtime is not suggested at all. None offered: a SpaceError
    that names the step each runtime refuses.
    A recipe with a step of the int8 reference's method (``MethodSpec.int8_reference``: dynamic int8) is
    not offered the runtimes in ``int8_slow`` (whose int8 reference runs no faster than the fp32 teacher
    here) while another runtime can run it.
    """
    from ..runtimes import offered_runtimes, step_refusal

    runtimes = tuple(runtimes)
    offered = offered_runtimes(recipe.steps, runtimes)
    fast = [r for r in offered if r not in int8_slow]
    if fast and len(fast) < len(offered) and any(get_method(s.method).int8_reference for s in recipe.steps):
        offered = fast
    if not offered:
        why = "; ".join(f"{r}: {reason}" for r in runtimes for s in recipe.steps
                        for reason in [step_refusal(s.method, s.params, r)] if reason)
        raise SpaceError(f"no runtime of {list(runtimes)} can deploy this recipe ({why})")
    if len(offered) == 1:
        return offered[0]
    name = RUNTIME_PARAM if len(offered) == len(runtimes) else f"{RUNTIME_PARAM}.{'+'.join(offered)}"
    return str(trial.suggest_categorical(name, offered))
