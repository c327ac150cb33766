"""The errors that mean bad input: the CLI reports each in one line on stderr and exits 2.

A leaf module: it imports nothing of the package, so any module can raise these. Every
message names the file (and row or key) and says what to do. Errors defined elsewhere that
also mean bad input (``RecipeError``, ``SpaceError``, ``MethodError`` ...) subclass
:class:`UserError`; anything else reaching the CLI is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a file, a value, a data row, a model folder, a storage."""


class UnsupportedArchitectureError(UserError, ValueError):
    """The model's architecture has no adapter, or the adapter refuses a method for it."""


class ConfigError(UserError, ValueError):
    """The study file, a command-line value or a setting is invalid."""


class DataError(UserError, ValueError):
    """A task data file (GLUE TSV) is malformed: names the file and the row."""


class ModelFolderError(UserError, ValueError):
    """A model folder is unusable: missing tokenizer, truncated weights, bad config.json."""


class StorageError(ConfigError):
    """The study storage cannot be opened or is not a study database."""


class OutputError(UserError, ValueError):
    """An output path is unusable, or writing it would destroy what the user did not ask to."""


class TrialsKeepFailing(UserError, RuntimeError):
    """Trial after trial of a search fails: the search stops and says why, instead of looping."""


# what the CLI turns into one line: our errors, and the OS saying a path is wrong
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError,
)
