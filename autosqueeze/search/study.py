"""The study driver: storage, sampler, resume, and the loop of trials.

The study lives in SQLite next to the study file unless ``storage`` says otherwise; every
finished trial is committed by Optuna as it ends, so killing the process loses at most the
trial in flight, and running the same command again continues up to the trial target.
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import asdict, dataclass
from typing import Callable

import optuna

from ..measure.latency import HardwareProfile
from ..models import DEFAULT_MODEL
from ..recipe import library_versions
from ..study_config import StudyConfig
from ..tasks import get_task
from ..teacher import get_teacher, load_task_data
from .objective import SearchContext, make_objective, measure_baseline
from .space import load_space

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int, dict[str, float]], None]
DONE_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED)


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        with warnings.catch_warnings():  # multivariate/group are "experimental" but stable for years
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=5)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; choose tpe, nsga2 or random")


def open_study(config: StudyConfig, storage: str | None = None, seed_offset: int = 0,
               create: bool = True) -> optuna.Study:
    """The study named in ``config`` (created if absent and ``create``)."""
    url = storage or config.storage_url
    sampler = make_sampler(config.sampler, config.seed + seed_offset)
    if not create:
        try:
            return optuna.load_study(study_name=config.name, storage=url, sampler=sampler)
        except KeyError:
            raise FileNotFoundError(
                f"no study {config.name!r} in {url}: run `autosqueeze search {config.path}` first"
            ) from None
    return optuna.create_study(study_name=config.name, storage=url, sampler=sampler,
                               directions=["maximize", "minimize"], load_if_exists=True)


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=DONE_STATES))


@dataclass
class SearchSummary:
    done: int
    target: int
    ran: int


def prepare(config: StudyConfig, data_dir: str | None, budget_ms: float | None,
            progress: Progress | None = None) -> SearchContext:
    """Teacher (trained once, cached), data, and the baseline measured in this process."""
    task = get_task(config.task)
    teacher = get_teacher(config.model, task, data_dir, config.teacher, progress)
    data, extra = load_task_data(task, teacher.tokenizer, data_dir, config.recovery, config.eval.dev_subset)
    profile: HardwareProfile = config.hardware
    train_threads = config.recovery.threads or os.cpu_count() or 1
    provenance = {
        "base_model": config.model or DEFAULT_MODEL, "task": task.name, "seed": config.seed,
        "teacher": {"settings": config.teacher.to_dict(), "weights_hash": teacher.info.get("weights_hash"),
                    "metrics": teacher.metrics},
        "data": {"recovery": config.recovery.to_dict(), "dev_subset": config.eval.dev_subset,
                 "eval_batch_size": config.eval.batch_size, "train_threads": train_threads,
                 "latency": asdict(config.latency)},
        "profile": profile.to_dict(), "versions": library_versions(),
    }
    sc = SearchContext(teacher=teacher, data=data, extra_dev=extra, profile=profile, main_metric=task.main_metric,
                       provenance=provenance, budget_ms=budget_ms,
                       train_threads=train_threads, progress=progress, latency_settings=config.latency,
                       eval_batch_size=config.eval.batch_size)
    measure_baseline(sc)
    return sc


def run_search(config: StudyConfig, data_dir: str | None, *, trials: int | None = None,
               budget_ms: float | None = None, storage: str | None = None, progress: Progress | None = None,
               callbacks: list | None = None) -> SearchSummary:
    """Run trials until the study has ``trials`` finished ones (the study file's count by default)."""
    space = load_space(config.search_space)  # validate before any expensive work
    budget = budget_ms if budget_ms is not None else config.latency_budget_ms
    target = trials or config.trials
    study = open_study(config, storage)
    done = finished_trials(study)
    if done >= target:
        return SearchSummary(done, target, 0)
    sc = prepare(config, data_dir, budget, progress)
    study = open_study(config, storage, seed_offset=done)  # fresh sampler seed when resuming
    study.set_user_attr("task", config.task)
    study.set_user_attr("main_metric", sc.main_metric)
    study.set_user_attr("profile", sc.profile.to_dict())
    study.set_user_attr("latency_budget_ms", budget)
    study.set_user_attr("teacher", {"metrics": sc.teacher.metrics, "latency_ms": sc.baseline.median_ms,
                                    "size": sc.teacher_size.to_dict(), "path": str(sc.teacher.path)})
    study.optimize(make_objective(space, sc), n_trials=target - done, catch=(Exception,),
                   callbacks=callbacks or [], gc_after_trial=True)
    return SearchSummary(finished_trials(study), target, target - done)
