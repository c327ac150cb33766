"""StudyConfig: the YAML study file, validated at the edge.

Relative paths (search space, storage) are resolved against the study file's folder.
Every error names the file and the key, and says what is allowed.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .measure.latency import HardwareProfile, LatencySettings
from .tasks import get_task
from .train import TrainSettings

SAMPLERS = ("tpe", "nsga2", "random")


class ConfigError(ValueError):
    """The study file is invalid."""


@dataclass(frozen=True)
class EvalSettings:
    dev_subset: int | None = None  # None: the whole dev set
    batch_size: int = 64


@dataclass
class StudyConfig:
    path: Path
    name: str
    task: str
    search_space: Path
    model: str = "default"
    teacher: TrainSettings = field(default_factory=TrainSettings)
    recovery: TrainSettings = field(default_factory=lambda: TrainSettings(steps=0))  # data settings of recovery
    hardware: HardwareProfile = field(default_factory=HardwareProfile)
    eval: EvalSettings = field(default_factory=EvalSettings)
    latency: LatencySettings = field(default_factory=LatencySettings)
    trials: int = 20
    sampler: str = "tpe"
    seed: int = 0
    latency_budget_ms: float | None = None
    storage: str | None = None
    data_dir: str | None = None

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def storage_url(self) -> str:
        if self.storage and "://" in self.storage:
            return self.storage
        db = Path(self.storage) if self.storage else Path(f"{self.name}.db")
        return f"sqlite:///{(db if db.is_absolute() else self.folder / db).resolve()}"

    @property
    def report_dir(self) -> Path:
        return self.folder / "report"


def _section(raw: dict[str, Any], key: str, cls: type, src: str, defaults: dict[str, Any] | None = None) -> Any:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{src}: '{key}' must be a mapping, got {type(value).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"{src}: unknown key(s) {unknown} in '{key}'; allowed: {sorted(known)}")
    try:
        return cls(**{**(defaults or {}), **value})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{src}: invalid '{key}': {err}") from None


TOP_KEYS = {"name", "task", "model", "search_space", "teacher", "recovery", "hardware", "eval", "latency", "trials",
            "sampler", "seed", "latency_budget_ms", "storage", "data_dir"}


def load_study_config(path: str | Path) -> StudyConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file {path} does not exist")
    src = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{src}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: expected a mapping of study settings at the top level")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"{src}: unknown key(s) {unknown}; allowed: {sorted(TOP_KEYS)}")
    for key in ("task", "search_space"):
        if key not in raw:
            raise ConfigError(f"{src}: missing required key '{key}'")
    try:
        task = get_task(str(raw["task"])).name
    except ValueError as err:
        raise ConfigError(f"{src}: 'task': {err}") from None
    space = Path(str(raw["search_space"]))
    space = space if space.is_absolute() else (path.parent / space)
    if not space.is_file():
        raise ConfigError(f"{src}: search_space {space} does not exist")
    teacher = _section(raw, "teacher", TrainSettings, src)
    recovery = _section(raw, "recovery", TrainSettings, src,
                        {"steps": 0, "batch_size": teacher.batch_size, "max_seq_len": teacher.max_seq_len,
                         "seed": teacher.seed, "train_subset": teacher.train_subset})
    cfg = StudyConfig(
        path=path.resolve(), name=str(raw.get("name") or path.parent.name), task=task, search_space=space.resolve(),
        model=str(raw.get("model", "default")), teacher=teacher, recovery=recovery,
        hardware=_section(raw, "hardware", HardwareProfile, src), eval=_section(raw, "eval", EvalSettings, src),
        latency=_section(raw, "latency", LatencySettings, src),
        trials=raw.get("trials", 20), sampler=str(raw.get("sampler", "tpe")), seed=raw.get("seed", 0),
        latency_budget_ms=raw.get("latency_budget_ms"), storage=raw.get("storage"), data_dir=raw.get("data_dir"),
    )
    if not isinstance(cfg.trials, int) or cfg.trials < 1:
        raise ConfigError(f"{src}: 'trials' must be a positive integer, got {cfg.trials!r}")
    if not isinstance(cfg.seed, int):
        raise ConfigError(f"{src}: 'seed' must be an integer, got {cfg.seed!r}")
    if cfg.sampler not in SAMPLERS:
        raise ConfigError(f"{src}: 'sampler' must be one of {SAMPLERS}, got {cfg.sampler!r}")
    if cfg.latency_budget_ms is not None and not (isinstance(cfg.latency_budget_ms, (int, float))
                                                  and cfg.latency_budget_ms > 0):
        raise ConfigError(f"{src}: 'latency_budget_ms' must be a positive number, got {cfg.latency_budget_ms!r}")
    return cfg
