"""One trial: suggest a recipe, probe its latency, recover it, measure it.

The latency of the final structure is measured first, right after the structural steps and
before any training: a trial over the latency budget stops there (seconds), recorded as
infeasible through Optuna's constraints (``latency_budget_ms`` > 0), never dropped. A recipe
that trains nothing (:func:`trains_nothing`: a joint elastic slice with static int8 or a pruned
vocabulary) is built once, final, and timed as it is. A trial
whose cost depends on the input (early exit: the probe runs the full depth, its worst case)
skips both shortcuts, this one and early stopping: it trains, and its real latency on dev
sentences decides whether it is within the budget. A trial within budget recovers by its
recipe's training steps; while it trains, the early-stopping rule (early_stop.py) may stop
it when it cannot reach the front at its latency. Latency is timed paired with the teacher
(measure/paired.py), so machine-load changes do not move speedups; identical architectures
reuse a cached timing; teacher outputs for distillation are cached across the trials of one
process. Everything a report or export needs is stored on the trial as user attributes, one
:class:`~autosqueeze.search.trial_record.TrialRecord` (trial_record.py): the recipe, latency
stats, speedup, size, all metrics, and
``status`` — complete | over_budget | stopped_early | failed (with ``error``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
from torch import nn

from ..arch import get_adapter
from ..builder import build
from ..data import TaskData
from ..measure import HardwareProfile, LatencySettings, LatencyStats, SizeReport, model_size
from ..measure.assessment import Measurement, assess
from ..measure.latency import fixed_threads
from ..measure.metrics import evaluate
from ..measure.paired import Timing, baseline_settings, needs_real_inputs, timing_inputs
from ..methods import MethodContext, get_method, int8_reference
from ..methods.context import TeacherOutputCache
from ..recipe import Recipe, Step
from ..runtimes import OnnxUnavailable
from ..runtimes.deployment import Deployment, deploy, runtime_of
from ..runtimes.variants import PLAIN_VARIANT
from ..runtimes.variants import RECIPE_KEY as VARIANT_KEY
from ..tasks import compute_metrics
from ..teacher import Teacher
from ..train import Progress
from .early_stop import EarlyStopper, EarlyStopSettings, TrialStoppedEarly, total_training_steps
from .pareto import Baselines
from .space import suggest_runtime
from .trial_record import TrialRecord
from .trial_result import TrialResult

log = logging.getLogger(__name__)
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
    baseline: LatencyStats | None = None  # the teacher timed in this process
    reference_ms: float | None = None  # the study's one teacher reference, when it has one (study.use_study_reference)
    teacher_size: SizeReport | None = None
    progress: Progress | None = None
    early_stop: EarlyStopSettings = field(default_factory=EarlyStopSettings)
    teacher_outputs: TeacherOutputCache = field(default_factory=TeacherOutputCache)  # shared by every trial
    paired_baseline: bool = True  # time each new candidate alternately with the teacher (measure/paired.py)
    timing_cache: dict[str, Timing] = field(default_factory=dict)
    # method -> the params its study hook prepared for its steps (the elastic student's {"student": key}; study.prepare)
    prepared: dict[str, dict[str, Any]] = field(default_factory=dict)
    runtimes: tuple[str, ...] = ()  # those a trial may deploy with (empty: profile.runtime alone)
    deploy_variant: dict[str, Any] | None = None  # the study's ONNX Runtime graph (search.deploy_choice)
    int8_slow: tuple[str, ...] = ()  # runtimes whose int8 reference is not faster than fp32 here (search.machine)
    train_ids: list[torch.Tensor] | None = None  # every training example's input ids (train_token_ids), once filled

    @property
    def baseline_ms(self) -> float:
        """The teacher latency every speedup is applied to (``latency_ms = baseline_ms / speedup``): the
        study's reference, recorded once, else this process's baseline."""
        if self.reference_ms is not None:
            return self.reference_ms
        assert self.baseline is not None, "call measure_baseline first"
        return self.baseline.median_ms

    def profile_for(self, recipe: Recipe | None) -> HardwareProfile:
        """The profile a recipe is timed and evaluated on: the study's, in the recipe's runtime."""
        return dataclasses.replace(self.profile, runtime=runtime_of(recipe, self.profile))

    def train_token_ids(self) -> Iterator[torch.Tensor]:
        """Every training example's input ids once (what vocabulary pruning counts), tokenized on first
        use and kept for the process's later trials: a trial that prunes the vocabulary then counts in
        milliseconds instead of tokenizing the training set again (SST-2's 67k sentences: ~10 s here)."""
        if self.train_ids is None:
            self.train_ids = [ids.to(torch.int32) for ids in self.data.train_token_ids()]
        return iter(self.train_ids)

    def method_context(self, seed: int, probe: bool) -> MethodContext:
        ctx = MethodContext(
            adapter=get_adapter(self.teacher.model), seed=seed, teacher=self.teacher.model,
            train_batches=self.data.train_batches, num_labels=self.data.task.num_labels,
            is_regression=self.data.task.is_regression, probe=probe, progress=None if probe else self.progress,
            device=self.profile.device, tokenizer=self.teacher.tokenizer, train_token_ids=self.train_token_ids,
            teacher_outputs=self.teacher_outputs,  # the same object: what a trial adds, the next one finds
        )
        return ctx

    def timing(self, deployment: Deployment, key: str | None) -> Timing:
        """The deployed candidate and the teacher timed alternately on the same inputs (measure/paired.py
        says why), in the deployment's runtime: an ONNX Runtime candidate is its exported graph (exported
        only if the timing is not cached), paired with the same PyTorch teacher.

        Cached per runtime and architecture unless the cost depends on the data (early exit: timed on
        real dev batches, and so is its paired teacher).
        """
        model = deployment.model
        real = needs_real_inputs(model)
        if key is not None:
            key = f"{deployment.runtime}:{key}"
        if not real and key is not None and key in self.timing_cache:
            return self.timing_cache[key]
        inputs = timing_inputs(model, self.data, self.profile.batch_size)
        timing = deployment.timing(self.teacher.model, self.latency_settings, self.baseline_ms, inputs,
                                   paired=self.paired_baseline)
        if not real and key is not None:
            self.timing_cache[key] = timing
        return timing

    def slice_metric(self, model: nn.Module) -> float:
        """Main metric on the first ``early_stop.dev_examples`` dev examples (early stopping)."""
        import numpy as np

        from ..measure.metrics import predict

        examples = self.data.dev[: self.early_stop.dev_examples]
        pred = predict(model, self.data, examples, self.eval_batch_size)
        return float(compute_metrics(self.data.task, pred, np.asarray([e.label for e in examples]))[self.main_metric])


def is_data_free(recipe: Recipe) -> bool:
    """Whether building in probe mode already gives the final model (no training, no data-dependent choice)."""
    return all(get_method(s.method).is_data_free(s.params) for s in recipe.steps)


def trains_nothing(recipe: Recipe) -> bool:
    """Whether no step of the recipe trains (no recovery method, and no method with training steps, as
    early exit's joint training): its final model costs seconds to build even where a step reads data
    (a vocabulary pruned to the training tokens, static int8's calibration ranges)."""
    return not any(get_method(s.method).trains for s in recipe.steps) and \
        total_training_steps([(s.method, s.params) for s in recipe.steps]) == 0


def bind_prepared(recipe: Recipe, prepared: dict[str, dict[str, Any]]) -> Recipe:
    """Fill what the study prepared into the recipe's steps whose method has a study hook (the elastic
    student's key into the ``elastic`` step: a space leaves it open)."""
    hooked = {s.method for s in recipe.steps if get_method(s.method).study is not None}
    if not hooked:
        return recipe
    missing = sorted(hooked - set(prepared))
    if missing:
        raise RuntimeError(f"the space has {', '.join(missing)} steps but the study prepared nothing for them")
    steps = [Step(s.method, {**s.params, **prepared[s.method]}, s.version) if s.method in hooked else s
             for s in recipe.steps]
    return Recipe(steps=steps, base_model=recipe.base_model, task=recipe.task, seed=recipe.seed,
                  teacher=recipe.teacher, data=recipe.data, profile=recipe.profile, measured=recipe.measured,
                  versions=recipe.versions, notes=recipe.notes)


def architecture_key(recipe: Recipe) -> str:
    """Steps that shape the deployed model (training steps left out): same key, same latency."""
    return json.dumps([(s.method, s.params) for s in recipe.steps if not get_method(s.method).trains],
                      sort_keys=True, default=str)


def measure_baseline(sc: SearchContext) -> None:
    """Teacher latency (fp32 PyTorch, whatever runtime the trials deploy with) and size, measured
    in this process (speedups are ratios to it)."""
    teacher = deploy(sc.teacher.model, None, sc.profile, runtime="torch")  # fp32 PyTorch, whatever the trials use
    sc.baseline = teacher.latency(baseline_settings(sc.latency_settings))  # every speedup divides by it
    sc.teacher_size = model_size(sc.teacher.model)


def reference_points(sc: SearchContext) -> dict[str, dict[str, Any]]:
    """The teacher and its plain dynamic int8 copies — PyTorch's ``quantize_dynamic`` and ONNX
    Runtime's (``ort_int8_baseline``, when onnxruntime is installed; a plain export, as a user
    deploys without autosqueeze, whatever graph the study's trials use) — measured like a trial
    (same dev data, same profile, paired with the fp32 PyTorch teacher): the points every
    compressed model should beat. Seconds; once per study."""
    assert sc.baseline is not None
    with fixed_threads(sc.train_threads):
        teacher_metrics = evaluate(sc.teacher.model, sc.data, sc.extra_dev, sc.eval_batch_size)
    out: dict[str, dict[str, Any]] = {"teacher": {"metric": teacher_metrics[sc.main_metric],
                                                  "metrics": teacher_metrics, "dev_examples": len(sc.data.dev)}}
    int8 = int8_reference()  # quantize_dynamic
    for name, runtime in (("int8_baseline", "torch"), ("ort_int8_baseline", "onnxruntime")):
        recipe = Recipe(steps=[Step(int8.name, {}, int8.version)],
                        profile={"runtime": runtime, VARIANT_KEY: PLAIN_VARIANT.to_dict()})  # a plain export
        try:
            built = build(recipe, sc.teacher.model, sc.method_context(recipe.seed, probe=True))
            with deploy(built, recipe, sc.profile) as deployment:  # ONNX Runtime: one export, timed and evaluated
                timing = sc.timing(deployment, architecture_key(recipe))
                with fixed_threads(sc.train_threads):
                    metrics = deployment.evaluate(sc.data, sc.extra_dev, sc.eval_batch_size)
        except OnnxUnavailable as err:  # the onnx extra is optional: the study goes on without that point
            log.warning("no ONNX Runtime int8 reference: %s", err)
            continue
        measured = Measurement.of(runtime=deployment.runtime, timing=timing, metrics=metrics,
                                  main_metric=sc.main_metric, baseline_ms=sc.baseline_ms)
        out[name] = {**measured.to_dict(), "recipe": recipe.to_dict()["steps"], "dev_examples": len(sc.data.dev)}
    return out


def evaluate_recipe(recipe: Recipe, sc: SearchContext, reference: Callable[[float], float | None] | None = None,
                    keep: dict[str, Any] | None = None) -> TrialResult:
    """Build, probe, recover and measure one recipe: how it ended and what was measured
    (``TrialResult.to_dict()``: the values a trial stores).

    ``reference(latency_ms)`` (the best feasible metric at that latency or faster) turns on
    early stopping; without it every trial within budget trains to the end. With ``keep`` (a
    dict) the built model is left in ``keep["built"]`` (finalize saves it).
    """
    with contextlib.ExitStack() as cleanup:  # removes the exported graph of an ONNX Runtime trial
        return _evaluate_recipe(recipe, sc, cleanup, reference, keep)


def _evaluate_recipe(recipe: Recipe, sc: SearchContext, cleanup: contextlib.ExitStack,
                     reference: Callable[[float], float | None] | None, keep: dict[str, Any] | None) -> TrialResult:
    assert sc.baseline is not None and sc.teacher_size is not None, "call measure_baseline first"
    t0 = time.perf_counter()
    # a recipe that trains nothing but reads data (a joint elastic slice with a pruned vocabulary or static
    # int8) is built once, final, and timed as it is: no probe first, one ONNX Runtime export
    final_first = not is_data_free(recipe) and trains_nothing(recipe)
    probe_built = build(recipe, sc.teacher.model, sc.method_context(recipe.seed, probe=not final_first))
    reuse = probe_built if final_first or is_data_free(recipe) else None  # the probe already is the final model
    deployment: Deployment | None = None
    if reuse is not None:  # its deployment serves the metric too (ONNX Runtime: one export, timed and evaluated)
        deployment = cleanup.enter_context(deploy(probe_built, recipe, sc.profile))
        lat = sc.timing(deployment, architecture_key(recipe))
    else:
        with deploy(probe_built, recipe, sc.profile) as probe:
            lat = sc.timing(probe, architecture_key(recipe))
    runtime = runtime_of(recipe, sc.profile)
    data_dependent = needs_real_inputs(probe_built.model)
    del probe_built
    probed = Measurement.of(runtime=runtime, timing=lat, baseline_ms=sc.baseline_ms)
    probe_s = time.perf_counter() - t0
    # a data-dependent cost (early exit) was probed at full depth, its worst case: judged on its real latency
    # (unless the probe is the final model, exits on: early_exit with the elastic student's heads)
    if sc.budget_ms is not None and lat.latency_ms > sc.budget_ms and (not data_dependent or reuse is not None):
        return TrialResult("over_budget", probed, probe_s=probe_s, trial_s=time.perf_counter() - t0)
    ctx = sc.method_context(recipe.seed, probe=False)
    stopper = None
    total = total_training_steps([(s.method, s.params) for s in recipe.steps])
    if reference is not None and sc.early_stop.enabled and total > 0 and not data_dependent:
        n = min(sc.early_stop.dev_examples, len(sc.data.dev))
        stopper = EarlyStopper(sc.early_stop, total, lat.latency_ms, reference, sc.slice_metric, n)
        ctx.should_stop = stopper.step
    try:
        with fixed_threads(sc.train_threads):
            built = reuse or build(recipe, sc.teacher.model, ctx)
    except TrialStoppedEarly as stop:
        assert stopper is not None  # only the stopper raises TrialStoppedEarly
        return TrialResult("stopped_early", dataclasses.replace(probed, metric=stop.record["metric"], metrics={}),
                           probe_s=probe_s, trial_s=time.perf_counter() - t0, early_stop=stopper.history,
                           stopped_at=stop.record)
    if deployment is None:
        deployment = cleanup.enter_context(deploy(built, recipe, sc.profile))
    final = deployment
    # the dev metric of the runtime's own model (e.g. the ORT int8 graph's predictions); a data-dependent
    # model is timed again as it is, on real inputs (a reused probe was timed as the final model already)
    measured = assess(final, data=sc.data, extra=sc.extra_dev, main_metric=sc.main_metric,
                      batch_size=sc.eval_batch_size, eval_threads=sc.train_threads,
                      timing=(lambda: sc.timing(final, None)) if data_dependent and reuse is None else lat,
                      baseline_ms=sc.baseline_ms, teacher_size=sc.teacher_size)
    if keep is not None:
        keep["built"] = built
    return TrialResult("complete", measured, probe_s=probe_s, trial_s=time.perf_counter() - t0,
                       early_stop=None if stopper is None else stopper.history)


def with_provenance(recipe: Recipe, sc: SearchContext) -> Recipe:
    p = sc.provenance
    return Recipe(steps=recipe.steps, base_model=p["base_model"], task=p["task"], seed=p["seed"],
                  teacher=dict(p["teacher"]), data=dict(p["data"]), profile=dict(p["profile"]),
                  versions=dict(p["versions"]))


def front_reference(study: optuna.Study) -> Callable[[float], float | None]:
    """``ref(L)``: best metric of the study's feasible completed trials with latency <= L
    (read fresh at each call, so other workers' trials count)."""
    def reference(latency_ms: float) -> float | None:
        best = None
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            r = TrialRecord.from_trial(t)
            if not r.feasible or r.metric is None or r.latency_ms is None:
                continue
            if r.latency_ms <= latency_ms and (best is None or r.metric > best):
                best = float(r.metric)
        return best

    return reference


def worker_identity() -> dict[str, Any]:
    """Who runs a trial (host and process): lets a restarted worker fail its killed trials."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def steps_key(steps: list[dict[str, Any]]) -> str:
    return json.dumps(steps, sort_keys=True, default=str)


def earlier_result(study: optuna.Study, recipe: Recipe) -> tuple[int, TrialResult] | None:
    """(number, stored result) of a completed trial of ``study`` with the same steps and seed.

    A recipe is deterministic (seeded training on the same teacher and data), so a sampler that
    proposes it again gets the stored result at no cost instead of a second training run. The
    values a trial stores are its attributes (:class:`TrialRecord`) minus who ran it and its own bookkeeping.
    """
    key = steps_key(recipe.to_dict()["steps"])
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        record = TrialRecord.from_trial(t)
        r = record.recipe or {}
        if record.status == "complete" and r.get("seed") == recipe.seed and steps_key(r.get("steps", [])) == key \
                and (r.get("profile") or {}).get("runtime") == (recipe.profile or {}).get("runtime"):
            own = ("worker", "recipe", "methods", "duplicate_of", "dominated_by", "below_floor")
            return t.number, TrialResult.from_dict({k: v for k, v in record.to_attrs().items() if k not in own})
    return None


def make_objective(space, sc: SearchContext) -> Callable[[optuna.Trial], tuple[float, float]]:
    def objective(trial: optuna.Trial) -> tuple[float, float]:
        # the record is written as it grows (each write stores the attributes it holds): a trial
        # that fails or is killed still says who ran it and what it was
        TrialRecord(worker=worker_identity()).write(trial)
        recipe = with_provenance(bind_prepared(space.suggest(trial), sc.prepared), sc)
        TrialRecord(methods=tuple(s.method for s in recipe.steps), recipe=recipe.to_dict()).write(trial)
        try:
            recipe.profile["runtime"] = suggest_runtime(trial, recipe, sc.runtimes or (sc.profile.runtime,),
                                                        sc.int8_slow)
            if sc.deploy_variant is not None:  # the graph the study measured is the one apply deploys
                recipe.profile["deploy_variant"] = dict(sc.deploy_variant)
            TrialRecord(runtime=recipe.profile["runtime"], recipe=recipe.to_dict()).write(trial)
            t0 = time.perf_counter()
            earlier = earlier_result(trial.study, recipe)
            if earlier is not None and (sc.budget_ms is None or (earlier[1].latency_ms or 0.0) <= sc.budget_ms):
                TrialRecord(duplicate_of=earlier[0]).write(trial)
                result = dataclasses.replace(earlier[1], trial_s=time.perf_counter() - t0)
            else:
                result = evaluate_recipe(recipe, sc, front_reference(trial.study))
            metric = INFEASIBLE_METRIC if result.metric is None else result.metric
            if metric != metric:  # NaN metric (e.g. degenerate correlation): a failure, with its reason
                raise FloatingPointError("task metric is NaN")
        except Exception as err:
            TrialRecord(status="failed", error=f"{type(err).__name__}: {err}"[:2000]).write(trial)
            raise
        assert result.latency_ms is not None  # every trial is timed (the probe) before anything else
        over = 0.0 if sc.budget_ms is None else result.latency_ms - sc.budget_ms
        trial.set_constraint("latency_budget_ms", over)
        recipe.measured = result.measurement.recorded()
        record = TrialRecord(recipe=recipe.to_dict()).with_result(result.to_dict())
        if record.status == "complete":  # the dashboard shows what the report says: off the front, and why
            baselines = Baselines.from_attrs(trial.study.user_attrs)
            ref = baselines.dominating(record)
            record = dataclasses.replace(record, dominated_by=None if ref is None else ref.key,
                                         below_floor=baselines.below_floor(record))
        record.write(trial)
        return float(metric), float(result.latency_ms)

    return objective
