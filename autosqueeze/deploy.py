"""Build a recipe's model for deployment, save it, and load it back.

A saved folder holds ``config.json`` (the compressed model's config), the tokenizer,
``model.safetensors`` (float weights after every step except the final quantization
steps), and ``autosqueeze.json`` (the recipe, each step's recorded decisions, the teacher's
config and the measured values). :func:`load_compressed` rebuilds the structure from the
teacher's config by replaying the decisions (no data, no training), loads the weights, and
re-applies the quantization steps, which are deterministic.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .arch import get_adapter
from .methods import MethodContext, Stage, get_method
from .recipe import Recipe, RecipeError, apply_recipe

MANIFEST = "autosqueeze.json"
WEIGHTS = "model.safetensors"


class CorruptModelError(RuntimeError):
    """A saved model folder is incomplete or does not match its manifest."""


def quantize_start(recipe: Recipe) -> int:
    """Index of the first quantization step (len(steps) when there is none)."""
    for i, step in enumerate(recipe.steps):
        if get_method(step.method).stage >= Stage.QUANTIZE:
            return i
    return len(recipe.steps)


@dataclass
class Built:
    model: nn.Module  # the deployed model
    float_model: nn.Module  # before the quantization steps (what is saved)
    decisions: list[dict[str, Any]]


def build(recipe: Recipe, teacher: nn.Module, ctx: MethodContext) -> Built:
    """Apply every step of ``recipe`` to a copy of ``teacher``."""
    q = quantize_start(recipe)
    float_model, dec = apply_recipe(recipe, teacher, ctx, upto=q)
    model = float_model
    if q < len(recipe.steps):
        rest = Recipe(steps=recipe.steps[q:])
        model, dec_q = apply_recipe(rest, float_model, ctx)
        dec = dec + dec_q
    return Built(model, float_model, dec)


def save_compressed(built: Built, recipe: Recipe, tokenizer: Any, teacher_config: Any, out: str | Path,
                    measured: dict[str, Any] | None = None) -> Path:
    """Write the deployable folder atomically (a failure leaves no half-written folder)."""
    from safetensors.torch import save_model

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        save_model(built.float_model, str(tmp / WEIGHTS))
        built.float_model.config.to_json_file(str(tmp / "config.json"))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        manifest = {
            "recipe": recipe.to_dict(),
            "decisions": built.decisions,
            "teacher_config": teacher_config.to_dict(),
            "measured": measured or {},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        if out.exists():
            if not (out / MANIFEST).is_file() and any(out.iterdir()):
                raise FileExistsError(f"{out} exists and is not an autosqueeze model folder: choose another -o")
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {path} does not exist")
    for name in (MANIFEST, WEIGHTS):
        if not (path / name).is_file():
            raise CorruptModelError(f"{path} is not a complete autosqueeze model folder: {name} is missing")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        recipe = Recipe.from_dict(manifest["recipe"], str(path / MANIFEST)).validate()
    except (json.JSONDecodeError, KeyError, RecipeError) as err:
        raise CorruptModelError(f"{path / MANIFEST} is corrupt: {err}") from None
    return {**manifest, "recipe": recipe}


def load_compressed(path: str | Path) -> nn.Module:
    """Rebuild and load a model saved by :func:`save_compressed` (eval mode, CPU)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = Path(path)
    manifest = read_manifest(path)
    recipe: Recipe = manifest["recipe"]
    tc = dict(manifest["teacher_config"])
    config = AutoConfig.for_model(tc.pop("model_type"), **tc)
    base = AutoModelForSequenceClassification.from_config(config).eval()
    ctx = MethodContext(adapter=get_adapter(base), seed=recipe.seed, replay=True,
                        num_labels=config.num_labels)
    q = quantize_start(recipe)
    decisions = manifest["decisions"]
    model, _ = apply_recipe(recipe, base, ctx, decisions, upto=q, copy_model=False)
    try:
        missing, unexpected = load_model(model, str(path / WEIGHTS), strict=True)
    except (SafetensorError, RuntimeError, OSError) as err:
        raise CorruptModelError(f"{path / WEIGHTS} does not match the recipe's structure: {err}") from None
    if q < len(recipe.steps):
        model, _ = apply_recipe(Recipe(steps=recipe.steps[q:]), model, ctx, decisions[q:], copy_model=False)
    return model.eval()
