"""The study driver: storage, sampler, resume, workers, and the loop of trials.

The study lives in SQLite next to the study file unless ``storage`` says otherwise (a
``postgresql://`` URL lets workers on several machines share it). Every finished trial is
committed by Optuna as it ends, so killing the process loses at most the trial in flight,
which the next start marks failed (storage.py); running the same command again continues
up to the trial target. Several workers on one study stop together at the target: before
each trial a worker counts the finished trials plus those running elsewhere.
"""
from __future__ import annotations

import logging
import os
import socket
import warnings
import zlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import optuna
from optuna.trial import TrialState

from ..data import load_task_data
from ..errors import TrialsKeepFailing
from ..measure.latency import HardwareProfile, fixed_threads
from ..measure.metrics import majority_reference
from ..methods import StudyInputs, get_method, method_specs
from ..models import DEFAULT_MODEL
from ..runtimes.fingerprint import hardware_fingerprint, library_versions
from ..study_config import ConfigError, StudyConfig, check_machine, check_name
from ..tasks import get_task
from ..teacher import get_teacher
from ..train import Progress
from .coverage import enqueue_untried_choices
from .deploy_choice import study_variant
from .early_stop import EarlyStopSettings
from .machine import drop_slow_steps, int8_not_faster, probe_machine
from .objective import SearchContext, make_objective, measure_baseline, reference_points, steps_key
from .space import SearchSpace, load_space
from .storage import (
    check_writable,
    fail_dead_local_trials,
    fail_stale_trials,
    is_sqlite,
    make_storage,
    redact,
    storage_exists,
)
from .study_record import StudyRecord
from .trial_record import TrialRecord
from .validate import validate_for_model

log = logging.getLogger(__name__)
STUDY_PACKAGES = ("autosqueeze", "torch", "transformers", "optuna")  # the study's recorded versions
DONE_STATES = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
RESULT_STATES = (TrialState.COMPLETE, TrialState.PRUNED)  # complete, over budget, stopped early: not failures
MAX_FAILURES_IN_A_ROW = 5
SETTINGS = ("task", "main_metric", "profile", "runtimes", "latency_budget_ms", "search_space", "early_stop")  # each run
MAX_REPEATS_IN_A_ROW = 30  # proposals in a row that repeat an earlier recipe: the space is exhausted
STARTUP_TRIALS = 5  # TPE's random start; after it, a categorical value it never drew is tried once (coverage.py)


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        with warnings.catch_warnings():  # multivariate/group/constant_liar are "experimental" but stable for years
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=STARTUP_TRIALS,
                                              constant_liar=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; choose tpe, nsga2 or random")


def open_study(config: StudyConfig, storage: str | None = None, seed_offset: int = 0,
               create: bool = True) -> optuna.Study:
    """The study named in ``config`` (created if absent and ``create``)."""
    url = storage or config.storage_url
    rdb = make_storage(url, create=create)
    sampler = make_sampler(config.sampler, config.seed + seed_offset)
    if not create:
        try:
            return optuna.load_study(study_name=config.name, storage=rdb, sampler=sampler)
        except KeyError:
            raise FileNotFoundError(
                f"no study {config.name!r} in {redact(url)}: run `autosqueeze search {config.path}` first"
            ) from None
    study = optuna.create_study(study_name=config.name, storage=rdb, sampler=sampler,
                                directions=["maximize", "minimize"], load_if_exists=True)
    set_metric_names(study, get_task(config.task).main_metric)
    return study


def set_metric_names(study: optuna.Study, main_metric: str) -> None:
    """Name the two objectives (optuna-dashboard shows e.g. "accuracy" and "latency_ms", not 0 and 1)."""
    names = [main_metric, "latency_ms"]
    with warnings.catch_warnings():  # "experimental" in Optuna 4/5, stable in use
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if study.metric_names != names:  # written once per study, not by every worker on every start
            study.set_metric_names(names)


def finished_trials(study: optuna.Study) -> int:
    """Trials with a result of their own (complete, over budget, stopped early); failed ones do not
    count, nor does a repeated recipe (a trial that reuses an earlier one's result, ``duplicate_of``)."""
    return sum("duplicate_of" not in t.user_attrs for t in study.get_trials(deepcopy=False, states=RESULT_STATES))


def running_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


@dataclass
class SearchSummary:
    done: int
    target: int
    ran: int
    stale_failed: list[int] = field(default_factory=list)  # trials a killed process left RUNNING
    exhausted: int | None = None  # the space proposed only repeats: the number of distinct recipes it gave


def prepare(config: StudyConfig, data_dir: str | None, budget_ms: float | None,
            progress: Progress | None = None, space: SearchSpace | None = None,
            early_stop: EarlyStopSettings | None = None) -> SearchContext:
    """Teacher (trained once, cached), data, the baseline measured in this process, and — with
    ``space`` — the check that every knob range fits the teacher (before any trial)."""
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
        "profile": profile.to_dict(), "versions": library_versions(STUDY_PACKAGES),
    }
    sc = SearchContext(teacher=teacher, data=data, extra_dev=extra, profile=profile, main_metric=task.main_metric,
                       provenance=provenance, budget_ms=budget_ms,
                       train_threads=train_threads, progress=progress, latency_settings=config.latency,
                       eval_batch_size=config.eval.batch_size, early_stop=early_stop or EarlyStopSettings(),
                       runtimes=config.search_runtimes)
    if space is not None:
        space = space.for_model(teacher.model)  # relative knobs (``of: layers``) in this model's units
        validate_for_model(space, teacher.model, lambda: sc.method_context(config.seed, probe=True))
        prepare_methods(sc, space, config, progress)
    measure_baseline(sc)
    return sc


def settle_for_space(space: SearchSpace, config: StudyConfig) -> StudyConfig:
    """The study with the settings its space's steps need settled by the methods' study hooks
    (``StudyHook.settle``), or a one-line ConfigError before any work: e.g. a space whose
    ``early_exit`` step takes the elastic student's exit heads turns ``elastic.exits`` on (left
    out of the study file), and refuses ``false`` or a space without an ``elastic`` step. A study
    that needs nothing settled is returned as it is."""
    for spec in method_specs():
        if spec.study is None or spec.study.settle is None:
            continue
        settings = config.method_settings(spec.name)
        settled = spec.study.settle(space.steps, settings, str(config.search_space), str(config.path))
        if settled is not settings:
            config = config.with_method_settings(spec.name, settled)
    return config


def prepare_methods(sc: SearchContext, space: SearchSpace, config: StudyConfig, progress: Progress | None) -> None:
    """What the space's methods need made once per study (their study hooks: the elastic student, cached
    and trained once on first use), into ``sc.prepared`` for the trials and recorded in the provenance
    under ``teacher.<method>``."""
    inputs = StudyInputs(teacher=sc.teacher.model, teacher_hash=str(sc.teacher.info.get("weights_hash")), data=sc.data,
                         train_subset=config.recovery.train_subset, progress=progress)
    for spec in [get_method(name) for name in space.method_names()]:
        if spec.study is None:
            continue
        with fixed_threads(sc.train_threads):
            made = spec.study.prepare(inputs, config.method_settings(spec.name))
        sc.prepared[spec.name] = made.params
        sc.provenance["teacher"][spec.name] = made.record


def _seed_offset(study: optuna.Study, url: str) -> int:
    """Sampler seed offset: the trials so far (a resumed run samples afresh), plus, when other
    workers may share the study (a server storage, or trials running now), this worker's salt
    so that workers started together do not propose the same trials."""
    offset = len(study.get_trials(deepcopy=False))
    if not is_sqlite(url) or running_trials(study):
        offset += zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % 1_000_003
    return offset


def _check_teacher(study: optuna.Study, sc: SearchContext, url: str) -> None:
    known = StudyRecord.from_study(study).teacher_weights_hash
    mine = sc.teacher.info.get("weights_hash")
    if known and mine and known != mine:
        raise ConfigError(
            f"this worker's teacher ({sc.teacher.path}, weights {mine}) differs from the one the study in "
            f"{redact(url)} was run with (weights {known}); a study compresses one teacher: copy that teacher's "
            f"folder into this machine's cache ($AUTOSQUEEZE_CACHE/teachers), or give the study a new 'name'")


def use_study_reference(study: optuna.Study, sc: SearchContext) -> None:
    """One teacher reference latency per study: the first process's baseline is the study's
    ``teacher.latency_ms`` for good, and every later process (a resume, another worker, finalize)
    applies its paired speedups to it (``sc.reference_ms``), so all trials share one scale. Each
    process's own baseline is appended to ``teacher_latency_runs`` (how the teacher moved between runs)."""
    assert sc.baseline is not None, "call measure_baseline first"
    record = StudyRecord.from_study(study)
    first = record.teacher_latency_ms
    runs = list(record.teacher_latency_runs or ([{"latency_ms": first}] if first else []))
    b = sc.baseline
    runs.append({"latency_ms": b.median_ms, "p10_ms": b.p10_ms, "p90_ms": b.p90_ms,
                 "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "host": socket.gethostname(), "pid": os.getpid()})
    StudyRecord(teacher_latency_runs=tuple(runs)).write(study)
    sc.reference_ms = first


def distinct_recipes(study: optuna.Study) -> int:
    """How many different recipes (steps, seed, runtime) the study's completed trials hold."""
    keys = set()
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        r = TrialRecord.from_trial(t).recipe or {}
        keys.add((steps_key(r.get("steps", [])), r.get("seed"), (r.get("profile") or {}).get("runtime")))
    return len(keys)


def teacher_training(info: dict[str, Any]) -> dict[str, Any] | None:
    """How much the teacher was fine-tuned here (steps, batch size, passes over its training
    examples), from its ``teacher.json``; None for a folder used as it is (``teacher.path``)."""
    settings = info.get("settings") or {}
    steps, batch, n = settings.get("steps"), settings.get("batch_size"), info.get("num_train_examples")
    if not steps or not batch or not n:
        return None
    return {"steps": int(steps), "batch_size": int(batch), "train_examples": int(n),
            "passes": round(int(steps) * int(batch) / int(n), 4)}


INT8_PROBE_ENV = "AUTOSQUEEZE_INT8_PROBE"  # "0": a new study records no int8 speedups (its space stays as written)


def with_int8_speedups(study: optuna.Study) -> dict[str, Any] | None:
    """The study's machine probe (None for a study recorded before it existed) with the int8
    references' speedups over the fp32 teacher (``int8_speedup``: runtime -> x), added to the
    fingerprint once both are known. ``$AUTOSQUEEZE_INT8_PROBE=0`` leaves them out: the test
    suite sets it, because a tiny model's int8 speedup sits near 1.0 and would make its spaces
    depend on timing noise (``tests/test_int8_probe.py`` turns it back on)."""
    record = StudyRecord.from_study(study)
    fingerprint = dict(record.fingerprint or {})
    probe = fingerprint.get("probe")
    if not probe:
        return None
    if "int8_speedup" not in probe and os.environ.get(INT8_PROBE_ENV, "1") != "0":
        speedups = {ref.get("runtime", runtime): ref.get("speedup") for key, runtime in
                    (("int8_baseline", "torch"), ("ort_int8_baseline", "onnxruntime"))
                    for ref in [record.reference(key)] if ref.get("speedup")}
        probe = {**probe, "int8_speedup": speedups}
        StudyRecord(fingerprint={**fingerprint, "probe": probe}).write(study)
    return dict(probe)


def _failure_reason(trial: optuna.trial.FrozenTrial) -> str:
    reason = TrialRecord.from_trial(trial).error or (trial.system_attrs.get("fail_reason") or "unknown").strip()
    return " ".join(str(reason).split())[:300]


def run_search(config: StudyConfig, data_dir: str | None, *, trials: int | None = None,
               budget_ms: float | None = None, storage: str | None = None, progress: Progress | None = None,
               callbacks: list | None = None, early_stop: EarlyStopSettings | None = None,
               max_failures_in_a_row: int = MAX_FAILURES_IN_A_ROW,
               machine_probe: dict[str, Any] | None = None) -> SearchSummary:
    """Run trials until the study has ``trials`` results (the study file's count by default).

    Failed trials and repeated recipes do not count toward the target (``MAX_REPEATS_IN_A_ROW`` repeats
    in a row stop the search: the space looks exhausted); ``max_failures_in_a_row`` failures of this
    process's trials stop the search with the last reason (:class:`TrialsKeepFailing`). Safe to
    run in several processes on one storage: each stops when results + running trials reach
    the target. ``machine_probe`` (default: :func:`~autosqueeze.search.machine.probe_machine` of this
    machine) is recorded with a new study's fingerprint; the steps it says this machine cannot run faster
    are dropped from the space.
    """
    check_name(config.name, str(config.path))  # before the teacher: the name is the database's file name
    check_machine(config)
    space = load_space(config.search_space)  # validated before any work
    config = settle_for_space(space, config)  # e.g. the elastic student trains exit heads where the space uses them
    if len(config.search_runtimes) == 1:  # several: each trial is offered the runtimes its steps allow
        space = space.for_runtime(config.search_runtimes[0])
    budget = budget_ms if budget_ms is not None else config.latency_budget_ms
    target = trials or config.trials
    url = storage or config.storage_url
    check_writable(url)  # a read-only database fails now, not after the teacher
    sc = None
    if not storage_exists(url):  # a new study: its database is created only once the teacher and data load
        sc = prepare(config, data_dir, budget, progress, space=space, early_stop=early_stop)
    study = open_study(config, url)
    stale = fail_dead_local_trials(study)
    fail_stale_trials(study)
    if finished_trials(study) >= target:
        return SearchSummary(finished_trials(study), target, 0, stale)
    if sc is None:
        sc = prepare(config, data_dir, budget, progress, space=space, early_stop=early_stop)
    study = open_study(config, url, seed_offset=_seed_offset(study, url))
    _check_teacher(study, sc, url)
    recorded = StudyRecord.from_study(study)
    StudyRecord(task=config.task, main_metric=sc.main_metric, profile=sc.profile.to_dict(),
                runtimes=tuple(sc.runtimes or (sc.profile.runtime,)), latency_budget_ms=budget,
                search_space=str(space.path), early_stop=sc.early_stop.to_dict()).write(study, *SETTINGS)
    if recorded.fingerprint is None:  # the machine that measures the latencies, once per study
        StudyRecord(fingerprint={**hardware_fingerprint(sc.profile.threads, sc.profile.runtime),
                                 "probe": machine_probe or probe_machine(sc.profile.device)}).write(study)
    study_variant(study, sc, config.deploy)  # the ONNX Runtime graph: recorded once per study (measured if asked)
    use_study_reference(study, sc)  # before any timing of this process: the study's teacher latency
    known = recorded.teacher_info
    if recorded.majority_baseline is None:  # the floor: always the most frequent dev label (the mean for regression)
        StudyRecord(majority_baseline=majority_reference(sc.data, sc.extra_dev)).write(study)
    if recorded.int8_baseline is None or "search_metric" not in known:  # once per study
        refs = reference_points(sc)
        StudyRecord(int8_baseline=refs["int8_baseline"], ort_int8_baseline=refs.get("ort_int8_baseline")).write(study)
        known = {"search_metric": refs["teacher"]["metric"], "search_metrics": refs["teacher"]["metrics"],
                 "dev_examples": refs["teacher"]["dev_examples"]}
    probe = with_int8_speedups(study)  # the machine probe, with what the int8 references showed
    runtimes = sc.runtimes or (sc.profile.runtime,)
    space = drop_slow_steps(space, probe, runtimes)
    sc.int8_slow = tuple(r for r in int8_not_faster(probe) if r in runtimes)
    assert sc.baseline is not None and sc.teacher_size is not None  # measured by the SearchContext above
    StudyRecord(teacher={
        "metrics": sc.teacher.metrics, "latency_ms": sc.baseline_ms, "size": sc.teacher_size.to_dict(),
        "path": str(sc.teacher.path), "weights_hash": sc.teacher.info.get("weights_hash"),
        "training": teacher_training(sc.teacher.info),
        **{k: known.get(k) for k in ("search_metric", "search_metrics", "dev_examples")}}).write(study)
    objective = make_objective(space.for_model(sc.teacher.model), sc)
    ran = 0
    mine: list[optuna.trial.FrozenTrial] = []  # this process's trials, as they end
    failed_in_a_row: list[optuna.trial.FrozenTrial] = []
    repeats_in_a_row = 0
    while True:
        fail_stale_trials(study)  # a vanished worker's trial must not hold a place
        if finished_trials(study) + running_trials(study) >= target:
            break
        if finished_trials(study) >= STARTUP_TRIALS:  # TPE would hardly ever propose a value the start never drew
            enqueue_untried_choices(study)
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True,
                       callbacks=[lambda s, t: mine.append(t), *(callbacks or [])])
        ran += 1
        repeats_in_a_row = repeats_in_a_row + 1 if mine and TrialRecord.from_trial(mine[-1]).duplicate_of is not None \
            else 0
        if repeats_in_a_row >= MAX_REPEATS_IN_A_ROW:  # the sampler finds nothing new: more trials would only repeat
            return SearchSummary(finished_trials(study), target, ran, stale, exhausted=distinct_recipes(study))
        failed_in_a_row = [*failed_in_a_row, mine[-1]] if mine and mine[-1].state == TrialState.FAIL else []
        if failed_in_a_row and len(failed_in_a_row) >= max_failures_in_a_row:
            raise TrialsKeepFailing(
                f"study {config.name!r}: {len(failed_in_a_row)} trials in a row failed (trials "
                f"{', '.join(str(t.number) for t in failed_in_a_row)}); the last: "
                f"{_failure_reason(failed_in_a_row[-1])}. "
                f"Fix the cause and run the same command to continue")
    return SearchSummary(finished_trials(study), target, ran, stale)
