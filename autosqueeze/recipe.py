"""Recipe: the portable artifact — ordered method steps plus where they come from.

A recipe is ``{method, version, params}`` steps in order, plus the base model, the task,
the teacher's training settings, the seed, the library versions and the values measured
when it was produced. ``load(save(r)) == r``. :func:`apply_recipe` turns a teacher into the
compressed model; applying the same recipe to the same teacher twice gives the same model.
"""
from __future__ import annotations

import copy
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from . import safe_yaml
from .atomic import write_text_atomic
from .errors import OutputError, UserError
from .methods import MethodContext, MethodError, get_method
from .methods.registry import config_to_params
from .typecheck import seed_problem, type_problems

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


class RecipeError(UserError, ValueError):
    """A recipe file or recipe value is invalid."""


@dataclass(frozen=True)
class Step:
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    version: int = 1

    def config(self) -> Any:
        """The validated Config of this step (unknown method/params raise MethodError)."""
        spec = get_method(self.method)
        if self.version != spec.version:
            raise MethodError(
                f"step {self.method!r} was written for version {self.version}, this autosqueeze has "
                f"version {spec.version}"
            )
        return spec.make_config(self.params)

    def normalized(self) -> Step:
        """The same step with params completed by the Config's defaults."""
        return Step(self.method, config_to_params(self.config()), self.version)


@dataclass
class Recipe:
    steps: list[Step]
    base_model: str = "default"
    task: str = "sst2"
    seed: int = 0
    teacher: dict[str, Any] = field(default_factory=dict)  # training settings + weights hash
    data: dict[str, Any] = field(default_factory=dict)  # max_seq_len, batch_size, train_subset
    profile: dict[str, Any] = field(default_factory=dict)  # hardware profile + fingerprint
    measured: dict[str, Any] = field(default_factory=dict)  # metric, latency, size of the trial
    versions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def validate(self) -> Recipe:
        """Check every step's method and params, and the stage order; returns self."""
        if not isinstance(self.steps, list):
            raise RecipeError("'steps' must be a list (empty: the uncompressed teacher)")
        last = None
        for i, step in enumerate(self.steps):
            try:
                step.config()
            except MethodError as err:
                raise RecipeError(f"step {i + 1} ({step.method}): {err}") from None
            spec = get_method(step.method)
            if last is not None and spec.stage < last[1]:
                raise RecipeError(
                    f"step {i + 1} ({step.method}, stage {spec.stage.name}) comes after {last[0]} "
                    f"(stage {last[1].name}): steps must go depth → width → decompose → sparsify → "
                    f"train → exit → quantize, e.g. a quantized layer cannot be pruned or trained"
                )
            last = (step.method, spec.stage)
        return self

    # --- serialization --------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = [{"method": s.method, "version": s.version, "params": dict(s.params)} for s in self.steps]
        return {"format": FORMAT_VERSION, **d}

    @classmethod
    def from_dict(cls, d: Any, source: str = "recipe") -> Recipe:
        if not isinstance(d, dict):
            raise RecipeError(f"{source}: expected a mapping at the top level, got {type(d).__name__}")
        d = dict(d)
        fmt = d.pop("format", FORMAT_VERSION)
        if fmt != FORMAT_VERSION:
            raise RecipeError(
                f"{source}: recipe format {fmt} is not supported (this autosqueeze reads {FORMAT_VERSION})")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise RecipeError(f"{source}: unknown key(s) {unknown}; known: {sorted(known)}")
        raw_steps = d.pop("steps", None)
        if not isinstance(raw_steps, list):
            raise RecipeError(f"{source}: 'steps' must be a list of {{method, version, params}}")
        steps = []
        for i, s in enumerate(raw_steps):
            if not isinstance(s, dict) or "method" not in s or not isinstance(s.get("params", {}), dict):
                raise RecipeError(f"{source}: step {i + 1} must be a mapping with 'method' and a 'params' mapping")
            version = s.get("version", 1)
            if not isinstance(version, int) or isinstance(version, bool) or version < 1:
                raise RecipeError(f"{source}: step {i + 1} 'version' must be a whole number >= 1, got {version!r}")
            steps.append(Step(str(s["method"]), dict(s.get("params") or {}), version))
        wrong = [w for w in type_problems(cls, d) if not w.startswith("'steps'")]
        if not any(w.startswith("'seed'") for w in wrong) and "seed" in d and seed_problem(d["seed"]):
            wrong.append(f"'seed' {seed_problem(d['seed'])}")
        for key in ("teacher", "data", "profile", "measured", "versions"):
            if key in d and not isinstance(d[key], dict):
                wrong.append(f"'{key}' must be a mapping, got {d[key]!r}")
        if "notes" in d and not isinstance(d["notes"], list):
            wrong.append(f"'notes' must be a list, got {d['notes']!r}")
        if wrong:
            raise RecipeError(f"{source}: {'; '.join(wrong)}")
        try:
            return cls(steps=steps, **d)
        except TypeError as err:
            raise RecipeError(f"{source}: {err}") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write YAML atomically (a crash never leaves half a recipe)."""
        return write_yaml_atomic(self.to_dict(), path)


def load_recipe(path: str | os.PathLike) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist")
    try:
        raw = safe_yaml.load_file(path)
    except safe_yaml.YamlTooLarge as err:
        raise RecipeError(f"{path}: refused: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
        raise RecipeError(f"{path}: not valid YAML: {what}{where}") from None
    except UnicodeDecodeError as err:
        raise RecipeError(f"{path}: not a UTF-8 text file (byte {err.start}): is it a recipe YAML?") from None
    recipe = Recipe.from_dict(raw, str(path))
    try:
        return recipe.validate()
    except RecipeError as err:
        raise RecipeError(f"{path}: {err}") from None


def write_yaml_atomic(data: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder: give the recipe file to write, e.g. {path / 'recipe.yaml'}")
    return write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))


def apply_recipe(
    recipe: Recipe, teacher: nn.Module, ctx: MethodContext, decisions: list[dict[str, Any]] | None = None,
    *, upto: int | None = None, copy_model: bool = True,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Apply ``recipe.steps[:upto]`` to a copy of ``teacher``; returns (model, per-step decisions).

    With ``decisions`` (from an earlier application) and ``ctx.replay`` the data-dependent
    choices are replayed instead of recomputed. With ``ctx.probe`` training steps are skipped
    (the structure, and hence the latency, is the final one).
    """
    recipe.validate()
    model = copy.deepcopy(teacher) if copy_model else teacher
    steps = recipe.steps if upto is None else recipe.steps[:upto]
    recorded: list[dict[str, Any]] = []
    ctx.kept_layers = None
    for i, step in enumerate(steps):
        spec = get_method(step.method)
        spec.check_model(model, ctx.adapter)  # a method the architecture cannot do: one line, why
        ctx.decisions = dict(decisions[i]) if decisions and i < len(decisions) else {}
        if (ctx.probe or ctx.replay) and spec.trains:
            recorded.append(ctx.decisions)
            continue
        log.info("step %d/%d: %s %s", i + 1, len(steps), step.method, step.params)
        model = spec.apply(model, step.config(), ctx)
        recorded.append(ctx.decisions)
    return model, recorded
