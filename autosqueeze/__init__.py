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

# public name -> the module that defines it
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
]


def load(path: Any) -> Any:
    """Load a model saved by ``autosqueeze apply`` (see :mod:`autosqueeze.artifact`)."""
    from .artifact import load_compressed

    return load_compressed(path)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'autosqueeze' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on first use
    from .apply import Rebuilt, rebuild
    from .artifact import load_compressed
    from .builder import Built, build, replay
    from .builtin_spaces import builtin_space_names, resolve_space
    from .data import TaskData, load_task_data
    from .errors import ConfigError, UserError
    from .measure import HardwareProfile, LatencySettings, LatencyStats, SizeReport, measure_latency, model_size
    from .measure.metrics import evaluate
    from .measure.paired import Timing, paired_latency
    from .methods import MethodContext, get_method, method_names, register
    from .models import base_model_hash, load_classifier, load_tokenizer, weights_hash
    from .recipe import Recipe, Step, load_recipe
    from .report.build import write_report
    from .report.export import export_recipe
    from .runtimes.timing import timing_against_teacher
    from .search.pareto import pareto_front
    from .search.space import SearchSpace, load_space
    from .search.storage import open_study_for_reading
    from .search.study import SearchSummary, open_study, run_search
    from .search.trial_record import TrialRecord, trial_records
    from .study_config import StudyConfig, load_study_config
    from .tasks import get_task, resolve_data_dir
    from .teacher import Teacher, get_teacher
    from .train import TrainSettings, progress_printer
