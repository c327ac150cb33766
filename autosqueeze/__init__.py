"""autosqueeze: search the joint space of BERT compression methods on your hardware.

The public API, in the order of the flow (study file -> search -> report/export -> apply)::

    import autosqueeze as aq

    config = aq.load_study_config("study.yaml")       # search_space: quick | full | a path
    aq.run_search(config, data_dir=None)
    aq.write_report(config)
    aq.export_recipe(config, "recipe.yaml")
    aq.rebuild("recipe.yaml", "compressed/", data_dir=None)   # what `autosqueeze apply` does
    model = aq.load("compressed/")

Names are imported on first use (``import autosqueeze`` stays cheap: no torch until needed).
Anything not listed in ``__all__`` is internal and may change.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it ("module:name" where the module calls it otherwise)
_EXPORTS: dict[str, str] = {
    # study file and search spaces
    "StudyConfig": "study_config", "load_study_config": "study_config",
    "builtin_space_names": "builtin_spaces", "resolve_space": "builtin_spaces",
    "SearchSpace": "search.space", "load_space": "search.space",
    # recipes and methods
    "Recipe": "recipe", "Step": "recipe", "load_recipe": "recipe",
    "MethodContext": "methods", "get_method": "methods", "method_names": "methods", "register": "methods",
    # recipe -> model, saved folder -> model
    "Built": "builder", "build": "builder", "replay": "builder", "load_compressed": "artifact",
    # models, data and the teacher
    "load_classifier": "models", "load_tokenizer": "models", "weights_hash": "models",
    "base_model_hash": "models",
    "get_task": "tasks", "resolve_data_dir": "tasks",
    "TaskData": "data", "Teacher": "teacher", "get_teacher": "teacher", "load_task_data": "data",
    "TrainSettings": "train", "progress_printer": "train",
    # measurement
    "HardwareProfile": "measure", "LatencySettings": "measure", "LatencyStats": "measure",
    "SizeReport": "measure", "measure_latency": "measure", "model_size": "measure",
    "Timing": "measure.paired", "paired_latency": "measure.paired",
    "timing_against_teacher": "runtimes.timing", "evaluate": "measure.metrics",
    # search, report, export, apply
    "SearchSummary": "search.study", "open_study": "search.study", "run_search": "search.study",
    "TrialRecord": "search.trial_record", "trial_records": "search.trial_record",
    "open_study_for_reading": "search.storage", "pareto_front": "search.pareto",
    "write_report": "report.build", "export_recipe": "report.export",
    "Rebuilt": "apply", "rebuild": "apply",
    # errors every module raises for bad input
    "UserError": "errors", "ConfigError": "errors",
    # --- for study scripts (studies/*/*.py import only this package): research tools, closer to the machinery
    # a script's start and the study it prepares, as the search does
    "StudyScript": "scripting", "start_study_script": "scripting", "script_logging": "scripting",
    "StudyRecord": "search.study_record", "prepare_study": "search.study:prepare", "SearchContext": "search.objective",
    "evaluate_recipe": "search.objective", "TrialResult": "search.trial_result",
    "with_provenance": "search.objective", "make_objective": "search.objective",
    "reference_points": "search.objective", "make_sampler": "search.study", "finished_trials": "search.study",
    "run_finalize": "search.finalize", "final_recipe": "search.finalize", "make_storage": "search.storage",
    "fail_dead_local_trials": "search.storage", "storage_exists": "search.storage",
    "settle_for_space": "search.study", "TrialsKeepFailing": "errors",
    "validate_for_model": "search.validate", "Baselines": "search.pareto",
    "final_records": "report.fidelity", "check_machine": "study_config", "load_yaml_file": "safe_yaml:load_file",
    "read_manifest": "artifact",
    # teacher, student and models
    "load_teacher": "teacher", "cache_root": "teacher", "teacher_key": "teacher",
    "train_data_id": "teacher", "get_adapter": "arch", "ElasticConfig": "methods.elastic",
    "choose_subnet": "methods.elastic", "get_elastic_student": "elastic", "ElasticSettings": "elastic.train",
    "train_elastic": "elastic.train", "elastic_student_dir": "elastic.store:student_dir",
    "ELASTIC_INFO": "elastic.store:INFO",
    # timing, the machine and the runtimes
    "hardware_fingerprint": "runtimes.fingerprint", "cpu_info": "runtimes.fingerprint",
    "fixed_threads": "measure.latency", "synthetic_inputs": "measure.latency", "baseline_settings": "measure.paired",
    "majority_reference": "measure.metrics", "predict": "measure.metrics", "count_macs": "runtimes.macs",
    "time_references": "runtimes.references", "OrtDeployment": "runtimes.deployed",
    "deploy": "runtimes.deployment", "Deployment": "runtimes.deployment", "assess": "measure.assessment",
    "Measurement": "measure.assessment", "get_runtime": "runtimes.deployment",
    "OnnxUnavailable": "runtimes", "OnnxUnsupported": "runtimes",
    "OrtClassifier": "runtimes.ort", "make_session": "runtimes.ort", "ort_dynamic_int8_session": "runtimes.ort",
    "ort_feed": "runtimes.ort:_feed",
    "build_variant": "runtimes.deploy_variants", "candidate_variants": "runtimes.deploy_variants",
    "predictions": "runtimes.deploy_variants", "time_sessions": "runtimes.deploy_variants",
    "torch_predictions": "runtimes.deploy_variants:_torch_predictions",
    "DEFAULT_VARIANT": "runtimes.variants", "LEGACY_VARIANT": "runtimes.variants", "PLAIN_VARIANT": "runtimes.variants",
}

__all__ = [  # the same names as _EXPORTS, plus load and __version__ (tests/test_public_api.py checks)
    "__version__", "load", "Built", "ConfigError", "HardwareProfile", "LatencySettings", "LatencyStats",
    "MethodContext", "Rebuilt", "Recipe", "SearchSpace", "SearchSummary", "SizeReport", "Step", "StudyConfig",
    "TaskData", "Teacher", "Timing", "TrainSettings", "TrialRecord", "UserError", "base_model_hash", "build",
    "builtin_space_names", "evaluate", "export_recipe", "get_method", "get_task", "get_teacher", "load_classifier",
    "load_compressed", "load_recipe", "load_space", "load_study_config", "load_task_data", "load_tokenizer",
    "measure_latency", "method_names", "model_size", "open_study", "open_study_for_reading", "paired_latency",
    "pareto_front", "progress_printer", "rebuild", "register", "replay", "resolve_data_dir", "resolve_space",
    "run_search", "timing_against_teacher", "trial_records", "weights_hash", "write_report",
    # for study scripts
    "DEFAULT_VARIANT", "ELASTIC_INFO", "LEGACY_VARIANT", "PLAIN_VARIANT", "Baselines", "ElasticConfig",
    "ElasticSettings", "OnnxUnavailable", "OnnxUnsupported", "OrtClassifier", "OrtDeployment", "SearchContext",
    "StudyRecord", "StudyScript", "baseline_settings", "build_variant", "cache_root", "candidate_variants",
    "check_machine", "choose_subnet", "count_macs", "cpu_info", "elastic_student_dir", "evaluate_recipe",
    "fail_dead_local_trials", "final_recipe", "final_records", "finished_trials", "fixed_threads", "get_adapter",
    "get_elastic_student", "hardware_fingerprint", "load_teacher", "load_yaml_file", "majority_reference",
    "make_objective", "make_sampler", "make_session", "make_storage", "ort_dynamic_int8_session", "ort_feed",
    "predict", "predictions", "prepare_study", "read_manifest", "reference_points", "run_finalize", "script_logging",
    "start_study_script", "synthetic_inputs", "teacher_key", "time_references", "time_sessions",
    "torch_predictions", "train_data_id", "train_elastic", "validate_for_model", "with_provenance",
    "TrialResult", "TrialsKeepFailing", "settle_for_space", "storage_exists", "Deployment", "Measurement", "assess",
    "deploy", "get_runtime",
]


def load(path: Any) -> Any:
    """Load a model saved by ``autosqueeze apply`` (see :mod:`autosqueeze.artifact`)."""
    from .artifact import load_compressed

    return load_compressed(path)


def __getattr__(name: str) -> Any:
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module 'autosqueeze' has no attribute {name!r}")
    module, _, defined_as = where.partition(":")
    value = getattr(importlib.import_module(f".{module}", __name__), defined_as or name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on first use
    from .apply import Rebuilt, rebuild

    # for study scripts
    from .arch import get_adapter
    from .artifact import load_compressed, read_manifest
    from .builder import Built, build, replay
    from .builtin_spaces import builtin_space_names, resolve_space
    from .data import TaskData, load_task_data
    from .elastic import get_elastic_student
    from .elastic.store import INFO as ELASTIC_INFO
    from .elastic.store import student_dir as elastic_student_dir
    from .elastic.train import ElasticSettings, train_elastic
    from .errors import ConfigError, TrialsKeepFailing, UserError
    from .measure import HardwareProfile, LatencySettings, LatencyStats, SizeReport, measure_latency, model_size
    from .measure.assessment import Measurement, assess
    from .measure.latency import fixed_threads, synthetic_inputs
    from .measure.metrics import evaluate, majority_reference, predict
    from .measure.paired import Timing, baseline_settings, paired_latency
    from .methods import MethodContext, get_method, method_names, register
    from .methods.elastic import ElasticConfig, choose_subnet
    from .models import base_model_hash, load_classifier, load_tokenizer, weights_hash
    from .recipe import Recipe, Step, load_recipe
    from .report.build import write_report
    from .report.export import export_recipe
    from .report.fidelity import final_records
    from .runtimes import OnnxUnavailable, OnnxUnsupported
    from .runtimes.deploy_variants import _torch_predictions as torch_predictions
    from .runtimes.deploy_variants import build_variant, candidate_variants, predictions, time_sessions
    from .runtimes.deployed import OrtDeployment
    from .runtimes.deployment import Deployment, deploy, get_runtime
    from .runtimes.fingerprint import cpu_info, hardware_fingerprint
    from .runtimes.macs import count_macs
    from .runtimes.ort import OrtClassifier, make_session, ort_dynamic_int8_session
    from .runtimes.ort import _feed as ort_feed
    from .runtimes.references import time_references
    from .runtimes.timing import timing_against_teacher
    from .runtimes.variants import DEFAULT_VARIANT, LEGACY_VARIANT, PLAIN_VARIANT
    from .safe_yaml import load_file as load_yaml_file
    from .scripting import StudyScript, script_logging, start_study_script
    from .search.finalize import final_recipe, run_finalize
    from .search.objective import SearchContext, evaluate_recipe, make_objective, reference_points, with_provenance
    from .search.pareto import Baselines, pareto_front
    from .search.space import SearchSpace, load_space
    from .search.storage import fail_dead_local_trials, make_storage, open_study_for_reading, storage_exists
    from .search.study import (
        SearchSummary,
        finished_trials,
        make_sampler,
        open_study,
        run_search,
        settle_for_space,
    )
    from .search.study import prepare as prepare_study
    from .search.study_record import StudyRecord
    from .search.trial_record import TrialRecord, trial_records
    from .search.trial_result import TrialResult
    from .search.validate import validate_for_model
    from .study_config import StudyConfig, check_machine, load_study_config
    from .tasks import get_task, resolve_data_dir
    from .teacher import Teacher, cache_root, get_teacher, load_teacher, teacher_key, train_data_id
    from .train import TrainSettings, progress_printer
