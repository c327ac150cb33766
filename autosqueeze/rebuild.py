"""``autosqueeze apply``: rebuild a recipe's model, measure it, save it for deployment."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .arch import get_adapter
from .deploy import build, save_compressed
from .measure import HardwareProfile, LatencySettings, measure_latency, model_size
from .measure.latency import fixed_threads
from .measure.metrics import evaluate
from .methods import MethodContext
from .models import weights_hash
from .recipe import Recipe, load_recipe
from .tasks import get_task
from .teacher import Teacher, get_teacher, load_task_data, load_teacher
from .train import TrainSettings

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int, dict[str, float]], None]


class BaseModelMismatch(RuntimeError):
    """The teacher found for a recipe is not the one it was produced from."""


@dataclass
class Rebuilt:
    out: Path
    recipe: Recipe
    reproduced: dict[str, Any]


def find_teacher(recipe: Recipe, data_dir: str | None, teacher_dir: str | None, force: bool,
                 progress: Progress | None) -> Teacher:
    if teacher_dir:
        teacher = load_teacher(teacher_dir)
    else:
        settings = TrainSettings(**recipe.teacher.get("settings", {}))
        teacher = get_teacher(recipe.base_model, recipe.task, data_dir, settings, progress)
    want = recipe.teacher.get("weights_hash")
    have = weights_hash(teacher.model)
    if want and want != have:
        msg = (f"the teacher at {teacher.path} (weights {have}) is not the one this recipe was made from "
               f"(weights {want})")
        if not force:
            raise BaseModelMismatch(msg + "; pass --force to apply it anyway (its numbers will differ)")
        log.warning("%s; continuing because of --force", msg)
    return teacher


def rebuild(recipe_path: str | Path, out: str | Path, data_dir: str | None, *, teacher_dir: str | None = None,
            force: bool = False, progress: Progress | None = None) -> Rebuilt:
    recipe = load_recipe(recipe_path)
    task = get_task(recipe.task)
    teacher = find_teacher(recipe, data_dir, teacher_dir, force, progress)
    rec = recipe.data.get("recovery", {})
    settings = TrainSettings(**rec) if rec else TrainSettings(steps=0)
    data, extra = load_task_data(task, teacher.tokenizer, data_dir, settings, recipe.data.get("dev_subset"))
    ctx = MethodContext(adapter=get_adapter(teacher.model), seed=recipe.seed, teacher=teacher.model,
                        train_batches=data.train_batches, num_labels=task.num_labels,
                        is_regression=task.is_regression, progress=progress)
    with fixed_threads(int(recipe.data.get("train_threads") or torch.get_num_threads())):
        built = build(recipe, teacher.model, ctx)
        metrics = evaluate(built.model, data, extra, int(recipe.data.get("eval_batch_size", 64)))
    profile = HardwareProfile(**recipe.profile) if recipe.profile else HardwareProfile()
    ls = LatencySettings(**recipe.data["latency"]) if "latency" in recipe.data else LatencySettings()
    ls = LatencySettings(ls.warmup, 2 * ls.repeats, 2 * ls.min_time_s, ls.idle_wait_s)
    base = measure_latency(teacher.model, profile, settings=ls)
    inputs = None
    if getattr(built.model, "autosqueeze_needs_real_inputs", False):
        inputs = [{k: v for k, v in b.items() if k != "labels"}
                  for b in data.eval_batches(batch_size=profile.batch_size)][:200]
    lat = measure_latency(built.model, profile, inputs, settings=ls)
    size = model_size(built.model)
    reproduced = {"metric": metrics[task.main_metric], "metrics": metrics, "latency_ms": lat.median_ms,
                  "latency": lat.to_dict(), "baseline_ms": base.median_ms, "speedup": base.median_ms / lat.median_ms,
                  "size": size.to_dict()}
    path = save_compressed(built, recipe, teacher.tokenizer, teacher.model.config, out,
                           {"recorded": recipe.measured, "reproduced": reproduced})
    return Rebuilt(path, recipe, reproduced)
