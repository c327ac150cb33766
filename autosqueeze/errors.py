"""The errors that mean bad input (reported in one line by the CLI), gathered in one place."""
from __future__ import annotations

from .arch import UnsupportedArchitectureError
from .deploy import CorruptModelError
from .methods import MethodError
from .rebuild import BaseModelMismatch
from .recipe import RecipeError
from .report.pareto import NoTrialWithinBudget
from .runtimes.onnx_export import OnnxUnavailable
from .search.space import SpaceError
from .study_config import ConfigError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, SpaceError, RecipeError, MethodError, UnsupportedArchitectureError, CorruptModelError,
    BaseModelMismatch, NoTrialWithinBudget, FileNotFoundError, FileExistsError, OnnxUnavailable,
)
