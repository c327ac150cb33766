"""One trial: suggest a recipe, probe its latency, recover it, measure it.

The latency of the final structure is measured first, right after the structural steps and
before any training: a trial over the latency budget stops there (seconds), recorded as
infeasible through Optuna's constraints. Everything a report or export needs is stored on
the trial as user attributes: the recipe, latency stats, speedup, size, all metrics.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
import torch
from torch import nn

from ..arch import get_adapter
from ..data import TaskData
from ..deploy import build
from ..measure import HardwareProfile, LatencySettings, LatencyStats, SizeReport, measure_latency, model_size
from ..measure.latency import fixed_threads
from ..measure.metrics import evaluate
from ..methods import MethodContext, get_method
from ..recipe import Recipe
from ..teacher import Teacher

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int, dict[str, float]], None]
INFEASIBLE_METRIC = 0.0  # objective value reported for trials stopped by the budget


@dataclass
class SearchContext:
    """What every trial of one process shares: teacher, data, baseline, caches."""

    teacher: Teacher
    data: TaskData
    extra_dev: dict[str, list]
    profile: HardwareProfile
    main_metric: str
    provenance: dict[str, Any]  # base_model, task, seed, teacher, data, profile, versions
    budget_ms: float | None = None
    train_threads: int = 1
    latency_settings: LatencySettings = field(default_factory=LatencySettings)
    eval_batch_size: int = 64
    baseline: LatencyStats | None = None
    teacher_size: SizeReport | None = None
    latency_cache: dict[str, LatencyStats] = field(default_factory=dict)
    progress: Progress | None = None

    def method_context(self, seed: int, probe: bool) -> MethodContext:
        return MethodContext(
            adapter=get_adapter(self.teacher.model), seed=seed, teacher=self.teacher.model,
            train_batches=self.data.train_batches, num_labels=self.data.task.num_labels,
            is_regression=self.data.task.is_regression, probe=probe, progress=None if probe else self.progress,
            device=self.profile.device,
        )

    def latency(self, model: nn.Module, key: str | None) -> LatencyStats:
        """Latency on the profile; cached per architecture unless the cost depends on the data."""
        if getattr(model, "autosqueeze_needs_real_inputs", False):
            batches = [{k: v for k, v in b.items() if k != "labels"}
                       for b in self.data.eval_batches(batch_size=self.profile.batch_size)]
            return measure_latency(model, self.profile, batches[:200], settings=self.latency_settings)
        if key is not None and key in self.latency_cache:
            return self.latency_cache[key]
        stats = measure_latency(model, self.profile, settings=self.latency_settings)
        if key is not None:
            self.latency_cache[key] = stats
        return stats


def architecture_key(recipe: Recipe) -> str:
    """Steps that shape the deployed model (training steps left out): same key, same latency."""
    return json.dumps([(s.method, s.params) for s in recipe.steps if not get_method(s.method).trains],
                      sort_keys=True, default=str)


def measure_baseline(sc: SearchContext) -> None:
    """Teacher latency and size, measured in this process (speedups are ratios to it)."""
    st = sc.latency_settings  # the baseline gets twice the repeats: every speedup divides by it
    sc.baseline = measure_latency(sc.teacher.model, sc.profile, settings=LatencySettings(
        st.warmup, 2 * st.repeats, 2 * st.min_time_s, st.idle_wait_s))
    sc.teacher_size = model_size(sc.teacher.model)


def evaluate_recipe(recipe: Recipe, sc: SearchContext, trial: optuna.Trial | None = None) -> dict[str, Any]:
    """Build, probe, recover and measure one recipe. Returns the values a trial stores."""
    assert sc.baseline is not None and sc.teacher_size is not None, "call measure_baseline first"
    t0 = time.perf_counter()
    probe = build(recipe, sc.teacher.model, sc.method_context(recipe.seed, probe=True)).model
    lat = sc.latency(probe, architecture_key(recipe))
    del probe
    result: dict[str, Any] = {"latency": lat.to_dict(), "latency_ms": lat.median_ms,
                              "baseline_ms": sc.baseline.median_ms, "speedup": sc.baseline.median_ms / lat.median_ms,
                              "probe_s": time.perf_counter() - t0}
    if sc.budget_ms is not None and lat.median_ms > sc.budget_ms:
        result["status"] = "over_budget"
        return result
    with fixed_threads(sc.train_threads):
        built = build(recipe, sc.teacher.model, sc.method_context(recipe.seed, probe=False))
        metrics = evaluate(built.model, sc.data, sc.extra_dev, sc.eval_batch_size)
    if getattr(built.model, "autosqueeze_needs_real_inputs", False):
        lat = sc.latency(built.model, None)
        result.update(latency=lat.to_dict(), latency_ms=lat.median_ms, speedup=sc.baseline.median_ms / lat.median_ms)
    if hasattr(built.model, "autosqueeze_exit_stats"):
        result["exit_stats"] = built.model.autosqueeze_exit_stats()
    size = model_size(built.model)
    result.update(
        status="complete", metrics=metrics, metric=metrics[sc.main_metric], size=size.to_dict(),
        size_pct={"total": 100 * size.total_bytes / sc.teacher_size.total_bytes,
                  "non_embedding": 100 * size.non_embedding_bytes / sc.teacher_size.non_embedding_bytes},
        trial_s=time.perf_counter() - t0,
    )
    return result


def with_provenance(recipe: Recipe, sc: SearchContext) -> Recipe:
    p = sc.provenance
    return Recipe(steps=recipe.steps, base_model=p["base_model"], task=p["task"], seed=p["seed"],
                  teacher=dict(p["teacher"]), data=dict(p["data"]), profile=dict(p["profile"]),
                  versions=dict(p["versions"]))


def make_objective(space, sc: SearchContext) -> Callable[[optuna.Trial], tuple[float, float]]:
    def objective(trial: optuna.Trial) -> tuple[float, float]:
        recipe = with_provenance(space.suggest(trial), sc)
        trial.set_user_attr("methods", [s.method for s in recipe.steps])
        result = evaluate_recipe(recipe, sc, trial)
        over = 0.0 if sc.budget_ms is None else result["latency_ms"] - sc.budget_ms
        trial.set_constraint("latency_budget_ms", over)
        recipe.measured = {k: result[k] for k in ("metric", "metrics", "latency_ms", "speedup", "size") if k in result}
        trial.set_user_attr("recipe", recipe.to_dict())
        for key, value in result.items():
            trial.set_user_attr(key, value)
        metric = result.get("metric", INFEASIBLE_METRIC)
        if metric != metric:  # NaN metric (e.g. degenerate correlation): a failure, with its reason
            raise FloatingPointError("task metric is NaN")
        return float(metric), float(result["latency_ms"])

    return objective
