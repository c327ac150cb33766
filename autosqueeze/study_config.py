"""StudyConfig: the YAML study file, validated at the edge.

Relative paths (search space, storage) are resolved against the study file's folder.
Every error names the file and the key, and says what is allowed.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from . import safe_yaml
from .builtin_spaces import resolve_space
from .elastic.train import ElasticSettings
from .errors import ConfigError, ModelFolderError
from .measure.latency import HardwareProfile, LatencySettings
from .tasks import get_task
from .train import TrainSettings
from .typecheck import seed_problem, type_problems

SAMPLERS = ("tpe", "nsga2", "random")
log = logging.getLogger(__name__)
RUNTIMES = ("torch", "onnxruntime")  # as in autosqueeze.runtimes (not imported: it loads torch)
__all__ = ["ConfigError", "EvalSettings", "StudyConfig", "load_study_config"]


@dataclass(frozen=True)
class EvalSettings:
    dev_subset: int | None = None  # None: the whole dev set
    batch_size: int = 64


@dataclass(frozen=True)
class FinalizeSettings:
    """The second fidelity: the front's candidates distilled from the teacher for ``steps`` steps."""

    steps: int = 300
    lr: float = 5e-5
    temperature: float = 1.0
    alpha_hidden: float = 1.0
    top_k: int = 8  # at most this many candidates (front points spread over latency, plus the best in budget)
    bf16: bool = False  # the distillation's forward passes under bf16 autocast (the recipe's distill step says so)

    def __post_init__(self) -> None:
        for name in ("steps", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "steps" else 1):
                raise ValueError(f"finalize.{name} must be an integer >= {0 if name == 'steps' else 1}, got {value!r}")
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"finalize.{name} must be a number > 0, got {value!r}")
        if not isinstance(self.bf16, bool):
            raise ValueError(f"finalize.bf16 must be true or false, got {self.bf16!r}")
        if isinstance(self.alpha_hidden, bool) or not isinstance(self.alpha_hidden, (int, float)) or \
                self.alpha_hidden < 0:
            raise ValueError(f"finalize.alpha_hidden must be a number >= 0, got {self.alpha_hidden!r}")


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
    elastic: ElasticSettings = field(default_factory=ElasticSettings)  # used when the space slices an elastic student
    finalize: FinalizeSettings = field(default_factory=FinalizeSettings)  # the full-fidelity pass over the front
    runtimes: tuple[str, ...] = ()  # hardware.runtimes: those a trial may deploy with (empty: hardware.runtime)
    deploy: Any = "measure"  # the ONNX Runtime graph: measure | default | plain | legacy | a variant mapping

    @property
    def search_runtimes(self) -> tuple[str, ...]:
        """The runtimes the search chooses among (``hardware.runtimes``, else ``hardware.runtime`` alone)."""
        return self.runtimes or (self.hardware.runtime,)

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

    def method_settings(self, method: str) -> Any:
        """The settings section of the study file named after a method (``elastic:``, what its study
        hook reads), or None for a method without one."""
        return getattr(self, method) if method in METHOD_SECTIONS else None

    def with_method_settings(self, method: str, settings: Any) -> StudyConfig:
        """This study with a method's settings section replaced (see :meth:`method_settings`)."""
        if method not in METHOD_SECTIONS:
            raise ValueError(f"the study file has no settings section for method {method!r}")
        return dataclasses.replace(self, **{method: settings})


def _section(raw: dict[str, Any], key: str, cls: type, src: str, defaults: dict[str, Any] | None = None) -> Any:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{src}: '{key}' must be a mapping, got {type(value).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"{src}: unknown key(s) {unknown} in '{key}'; allowed: {sorted(known)}")
    wrong = type_problems(cls, value)
    if wrong:
        raise ConfigError(f"{src}: in '{key}': {'; '.join(wrong)}")
    try:
        return cls(**{**(defaults or {}), **value})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{src}: invalid '{key}': {err}") from None


def _hardware(raw: dict[str, Any], src: str) -> tuple[HardwareProfile, tuple[str, ...]]:
    """The ``hardware`` section: the profile, and ``runtimes`` (the runtimes a trial may pick;
    ``runtime``, when also given, must be one of them and is the profile's default)."""
    section = raw.get("hardware") or {}
    if not isinstance(section, dict) or "runtimes" not in section:
        return _section(raw, "hardware", HardwareProfile, src), ()
    value = section["runtimes"]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{src}: 'hardware.runtimes' must be a non-empty list of runtimes from {list(RUNTIMES)}, "
                          f"got {value!r}")
    bad = [v for v in value if v not in RUNTIMES]
    if bad or len(set(value)) != len(value):
        what = f"unknown runtime(s) {bad}" if bad else f"repeated runtimes in {value}"
        raise ConfigError(f"{src}: 'hardware.runtimes': {what}; choose among {list(RUNTIMES)}, each once")
    rest = {k: v for k, v in section.items() if k != "runtimes"}
    if "runtime" in rest and rest["runtime"] not in value:
        raise ConfigError(f"{src}: 'hardware.runtime' {rest['runtime']!r} is not one of 'hardware.runtimes' {value}")
    profile = _section({"hardware": rest}, "hardware", HardwareProfile, src, {"runtime": value[0]})
    return profile, tuple(value)


# beside ``teacher.path`` (a fine-tuned model used as it is) only the data settings: the length its dev
# metric is measured at, and the defaults of ``recovery``; the training settings would train it
OWN_TEACHER_KEYS = ("path", "max_seq_len", "batch_size", "seed")


def _teacher(raw: dict[str, Any], study: Path, src: str) -> tuple[TrainSettings, str]:
    """The ``teacher`` section and the model: ``model`` + training settings (a base model fine-tuned
    here), or ``teacher.path``, a classifier already fine-tuned on the task, used as it is: the
    model is that folder (relative to the study file) and the teacher's ``steps`` are 0."""
    section = raw.get("teacher")
    if not isinstance(section, dict) or "path" not in section:
        return _section(raw, "teacher", TrainSettings, src), str(raw.get("model", "default"))
    folder = section["path"]
    if not isinstance(folder, str) or not folder.strip():
        raise ConfigError(f"{src}: 'teacher.path' must be the path of a fine-tuned model folder, got {folder!r}")
    if "model" in raw:
        raise ConfigError(f"{src}: 'model' and 'teacher.path' both name the model; keep 'teacher.path' alone (a "
                          f"model already fine-tuned on the task, used as it is) or 'model' alone with "
                          f"'teacher: {{steps: N, ...}}' (a base model fine-tuned here)")
    training = sorted(k for k in set(section) - set(OWN_TEACHER_KEYS) if k in {f.name for f in fields(TrainSettings)})
    if training:
        raise ConfigError(f"{src}: 'teacher.path' uses your fine-tuned model as it is, nothing is trained, so "
                          f"'teacher' cannot also set {training}; drop them, or fine-tune a base model here with "
                          f"'model: NAME' and 'teacher: {{steps: N}}' instead of 'teacher.path'")
    unknown = sorted(set(section) - set(OWN_TEACHER_KEYS))
    if unknown:
        raise ConfigError(f"{src}: unknown key(s) {unknown} in 'teacher'; beside 'path' allowed: "
                          f"{list(OWN_TEACHER_KEYS[1:])}")
    where = Path(folder).expanduser()
    where = where if where.is_absolute() else study.parent / where
    if not (where / "config.json").is_file():
        what = "does not exist" if not where.exists() else "is not a model folder (no config.json)"
        raise ConfigError(f"{src}: 'teacher.path': {where} {what}; name the folder your fine-tuned model was "
                          f"saved to (save_pretrained)")
    rest = {k: v for k, v in section.items() if k != "path"}
    return _section({"teacher": rest}, "teacher", TrainSettings, src, {"steps": 0}), str(where.resolve())


def _deploy(raw: dict[str, Any], src: str) -> Any:
    """The ``deploy`` setting (how the ONNX Runtime graph is built), checked now, kept as written."""
    value = raw.get("deploy", "measure")
    from .runtimes.variants import parse_deploy_setting  # torch-free module

    try:
        parse_deploy_setting(value)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{src}: 'deploy': {err}") from None
    return value


TOP_KEYS = {"elastic", "finalize", "name", "task", "model", "search_space", "teacher", "recovery", "hardware", "eval",
            "latency", "trials", "sampler", "seed", "latency_budget_ms", "storage", "data_dir", "deploy"}


def load_study_config(path: str | Path) -> StudyConfig:
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a study YAML file" if path.is_dir() else "does not exist"
        raise ConfigError(f"study file {path} {what}")
    src = str(path)
    try:
        raw = safe_yaml.load_file(path)
    except safe_yaml.YamlTooLarge as err:
        raise ConfigError(f"{src}: refused: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{src}: not valid YAML: {yaml_error_line(err)}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{src}: not a UTF-8 text file (byte {err.start}); save it as UTF-8") from None
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
    try:  # a path relative to the study file, or the name of a built-in space (quick, full, ...)
        space = resolve_space(str(raw["search_space"]), path.parent)
    except FileNotFoundError as err:
        raise ConfigError(f"{src}: {err}") from None
    if "model" in raw and (not isinstance(raw["model"], str) or not raw["model"].strip()):
        raise ConfigError(f"{src}: 'model' must be a model folder, a hub name or 'default', got {raw['model']!r}")
    teacher, model = _teacher(raw, path, src)
    recovery = _section(raw, "recovery", TrainSettings, src,
                        {"steps": 0, "batch_size": teacher.batch_size, "max_seq_len": teacher.max_seq_len,
                         "seed": teacher.seed, "train_subset": teacher.train_subset})
    hardware, runtimes = _hardware(raw, src)
    cfg = StudyConfig(
        path=path.resolve(), name=str(raw.get("name") or path.parent.name), task=task, search_space=space.resolve(),
        model=model, teacher=teacher, recovery=recovery,
        hardware=hardware, runtimes=runtimes, eval=_section(raw, "eval", EvalSettings, src),
        latency=_section(raw, "latency", LatencySettings, src),
        elastic=_section(raw, "elastic", ElasticSettings, src),
        finalize=_section(raw, "finalize", FinalizeSettings, src),
        trials=raw.get("trials", 20), sampler=str(raw.get("sampler", "tpe")), seed=raw.get("seed", 0),
        latency_budget_ms=raw.get("latency_budget_ms"), storage=raw.get("storage"), data_dir=raw.get("data_dir"),
        deploy=_deploy(raw, src),
    )
    if not is_int(cfg.trials) or cfg.trials < 1:
        raise ConfigError(f"{src}: 'trials' must be a positive integer, got {cfg.trials!r}")
    if seed_problem(cfg.seed):
        raise ConfigError(f"{src}: 'seed' {seed_problem(cfg.seed)}")
    if cfg.sampler not in SAMPLERS:
        raise ConfigError(f"{src}: 'sampler' must be one of {SAMPLERS}, got {cfg.sampler!r}")
    if cfg.latency_budget_ms is not None and not is_positive_number(cfg.latency_budget_ms):
        raise ConfigError(f"{src}: 'latency_budget_ms' must be a positive number, got {cfg.latency_budget_ms!r}")
    for key in ("storage", "data_dir"):
        if getattr(cfg, key) is not None and not isinstance(getattr(cfg, key), str):
            raise ConfigError(f"{src}: '{key}' must be a string, got {getattr(cfg, key)!r}")
    _check_values(cfg, src)
    return cfg


NAME_MAX = 100  # the study database is NAME.db; file systems allow 255 bytes
MINIMUMS = {("teacher", "threads"): 1, ("recovery", "threads"): 1, ("eval", "batch_size"): 1,
            ("eval", "dev_subset"): 1}
SECTIONS = ("teacher", "recovery", "hardware", "eval", "latency", "elastic", "finalize")
METHOD_SECTIONS = ("elastic",)  # sections holding a method's study-level settings (StudyConfig.method_settings)


def check_name(name: str, src: str) -> None:
    """A study name is a safe file name (it names the database beside the study file)."""
    if not name.strip() or len(name) > NAME_MAX or name in (".", "..") or name != name.strip() or \
            any(c in name for c in "/\\\0") or not name.isprintable():
        raise ConfigError(f"{src}: 'name' must be a file name of 1 to {NAME_MAX} printable characters without "
                          f"'/' or '\\' (the study database is NAME.db beside the study file), got {name!r}")


def _check_values(cfg: StudyConfig, src: str) -> None:
    """What the schema's types let through: the name, numbers that are not finite, sizes below 1,
    sequence lengths beyond the model's position table."""
    from .models import check_seq_len

    check_name(cfg.name, src)
    for section in SECTIONS:
        values = getattr(cfg, section)
        for f in fields(values):
            value = getattr(values, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{src}: '{section}.{f.name}' must be a finite number, got {value!r}")
            low = MINIMUMS.get((section, f.name))
            if low is not None and value is not None and value < low:
                raise ConfigError(f"{src}: '{section}.{f.name}' must be a whole number >= {low}, got {value!r}")
    try:
        for key, value in (("hardware.seq_len", cfg.hardware.seq_len), ("teacher.max_seq_len", cfg.teacher.max_seq_len),
                           ("recovery.max_seq_len", cfg.recovery.max_seq_len)):
            check_seq_len(value, cfg.model, f"'{key}'")
    except (ModelFolderError, FileNotFoundError) as err:
        raise ConfigError(f"{src}: {err}") from None


def check_machine(cfg: StudyConfig) -> None:
    """The study's ``hardware.device`` exists on this machine (before a teacher is trained on it)."""
    import torch

    if cfg.hardware.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{cfg.path}: 'hardware.device' is cuda but this machine has no CUDA device "
                          f"(torch.cuda.is_available() is false): set hardware.device: cpu, or run on a GPU machine")
    bf16 = [name for name, on in (("teacher.bf16", cfg.teacher.bf16), ("elastic.bf16", cfg.elastic.bf16),
                                  ("finalize.bf16", cfg.finalize.bf16)) if on]
    if bf16:
        from .runtimes.fingerprint import cpu_has_bf16

        if cpu_has_bf16() is False:
            log.warning("%s: %s on a CPU without bf16 units: training steps run slower than in fp32 (0.2-0.7x "
                        "measured on an AVX2-only CPU); set %s false on this machine", cfg.path, ", ".join(bf16),
                        " and ".join(bf16))


def is_int(value: Any) -> bool:
    """A whole number that is not a bool (YAML's ``true`` is an int to Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_positive_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value > 0)


def yaml_error_line(err: yaml.YAMLError) -> str:
    """A YAML parse error in one line: what is wrong and where (line, column)."""
    mark = getattr(err, "problem_mark", None)
    what = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{what}{where}"
