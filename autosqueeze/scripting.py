"""What a study script (``studies/*/*.py``) starts with, once: logging, the study file, the GLUE folder,
the prepared study (teacher, data, the baseline timed in this process) and the machine it runs on.

A script's ``main()`` is then::

    script = aq.start_study_script(args.study, args.data_dir)   # logging set, study file read
    sc = script.prepare()                                       # the teacher (cached), data, baseline
    machine = script.machine(sc)                                # every result says where it was timed

Above the search in the flow (it prepares a study as ``autosqueeze search`` does); nothing in the
package imports it.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .study_config import StudyConfig, load_study_config
from .tasks import resolve_data_dir

if TYPE_CHECKING:
    from .search.early_stop import EarlyStopSettings
    from .search.objective import SearchContext
    from .search.space import SearchSpace
    from .train import Progress

__all__ = ["LOG_FORMAT", "StudyScript", "script_logging", "start_study_script"]
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def script_logging(*, quiet: bool = False) -> None:
    """Warnings and above on stderr, one line each; ``quiet``: errors only (Python warnings, the
    libraries' notices and Optuna's per-trial lines silenced), for scripts whose own output is a table."""
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    if quiet:
        warnings.simplefilter("ignore")
        logging.getLogger().setLevel(logging.ERROR)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)


@dataclass
class StudyScript:
    """A study file read for a script; the GLUE folder and the prepared study on first use."""

    config: StudyConfig
    data_dir_given: str | None = None  # the script's --data-dir (None: the study file's, then $AUTOSQUEEZE_GLUE_DIR)

    @cached_property
    def data_dir(self) -> str | None:
        """The GLUE folder: ``--data-dir``, else the study file's ``data_dir``, else ``$AUTOSQUEEZE_GLUE_DIR``."""
        return resolve_data_dir(self.data_dir_given or self.config.data_dir)

    def prepare(self, budget_ms: float | None = None, progress: Progress | None = None,
                space: SearchSpace | None = None, early_stop: EarlyStopSettings | None = None) -> SearchContext:
        """The study prepared as the search prepares it: the teacher (trained once, cached), the data, the
        baseline timed in this process (and, with ``space``, what its steps need: the elastic student)."""
        from .search.study import prepare

        return prepare(self.config, self.data_dir, budget_ms, progress, space=space, early_stop=early_stop)

    @staticmethod
    def machine(sc: SearchContext | None = None, threads: int | None = None,
                runtime: str | None = None) -> dict[str, Any]:
        """The machine's fingerprint (CPU, threads, library versions), with the prepared study's threads
        and runtime unless given."""
        from .runtimes.fingerprint import hardware_fingerprint

        if sc is not None:
            threads = sc.profile.threads if threads is None else threads
            runtime = sc.profile.runtime if runtime is None else runtime
        return hardware_fingerprint(threads, runtime)


def start_study_script(study: str | Path, data_dir: str | None = None, *, quiet: bool = False) -> StudyScript:
    """Set the script's logging (:func:`script_logging`) and read its study file."""
    script_logging(quiet=quiet)
    return StudyScript(load_study_config(study), data_dir)
