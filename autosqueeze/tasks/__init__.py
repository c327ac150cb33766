"""GLUE tasks: specs, loaders (local glue_data folder or hub) and official metrics."""

from .loaders import ENV_VAR, load_split, resolve_data_dir, subset
from .metrics import compute_metrics
from .specs import TASKS, Example, TaskSpec, get_task

__all__ = [
    "ENV_VAR",
    "TASKS",
    "Example",
    "TaskSpec",
    "compute_metrics",
    "get_task",
    "load_split",
    "resolve_data_dir",
    "subset",
]
