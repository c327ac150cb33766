"""``autosqueeze apply``: rebuild a recipe's model, measure it, save it for deployment.

The rebuild is deterministic: the same teacher (checked by weights hash, and the base model
by the hash of its weight files when the recipe records one), the same data, seed and thread
count give the same weights, hence the same dev metric. Latency is measured again on this
machine in the recipe's runtime (PyTorch or ONNX Runtime) beside a teacher baseline
measured in the same process, so speedups compare across machines better than milliseconds.
The saved folder loads with ``autosqueeze.load``; it also holds ``model.onnx`` when the model
can be exported, and says whether a plain ``from_pretrained`` works.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .arch import get_adapter
from .artifact import CorruptModelError, read_manifest, save_compressed
from .atomic import clean_leftovers, temp_beside
from .builder import build
from .data import load_task_data
from .errors import ModelFolderError, UserError
from .measure import HardwareProfile, LatencySettings
from .measure.assessment import Measurement, assess
from .measure.latency import fixed_threads
from .measure.paired import Timing, baseline_settings, timing_inputs
from .methods import MethodContext, StudyInputs, get_method
from .models import (
    base_model_hash,
    check_seq_len,
    load_classifier,
    load_tokenizer,
    quiet_transformers,
    weights_hash,
)
from .recipe import Recipe, RecipeError, load_recipe
from .runtimes import Deployment, RuntimeRefused, deploy
from .runtimes.variants import RECIPE_KEY as VARIANT_KEY
from .runtimes.variants import variant_of_recipe
from .tasks import TaskSpec, get_task
from .teacher import Teacher, cached_teacher_path, get_teacher, load_teacher, read_teacher_info
from .train import Progress, TrainSettings
from .typecheck import type_problems

log = logging.getLogger(__name__)


class BaseModelMismatch(UserError, RuntimeError):
    """The teacher or base model found for a recipe is not the one it was produced from."""


@dataclass
class Rebuilt:
    out: Path
    recipe: Recipe
    measurement: Measurement  # the numbers reproduced here (metric, latency, speedup, size, runtime)
    onnx: dict[str, Any] = field(default_factory=dict)  # OnnxInfo as a dict, or {"file": None, "reason": ...}
    plain: dict[str, Any] = field(default_factory=dict)  # can a plain from_pretrained load it
    warnings: list[str] = field(default_factory=list)
    comparison: dict[str, Any] = field(default_factory=dict)  # recorded vs reproduced (see compare)

    @property
    def reproduced(self) -> dict[str, Any]:
        """The reproduced numbers as the manifest stores them (``measured.reproduced``)."""
        return self.measurement.to_dict()


def read_recipe(path: str | Path) -> Recipe:
    """A recipe file, or the recipe inside a model folder saved by ``apply``."""
    path = Path(path)
    if path.is_dir():
        return read_manifest(path, verify_weights=True)["recipe"]
    return load_recipe(path)


def _settings(cls: type, values: dict[str, Any] | None, what: str, drop: tuple[str, ...] = ()) -> Any:
    """A settings dataclass from a recipe section (a hand-edited bad value → RecipeError)."""
    known = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in (values or {}).items() if k not in drop}
    unknown = sorted(set(values) - known)
    if unknown:
        raise RecipeError(f"recipe {what}: unknown key(s) {unknown}; known: {sorted(known)}")
    wrong = type_problems(cls, values)
    if wrong:
        raise RecipeError(f"recipe {what}: {'; '.join(wrong)}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise RecipeError(f"recipe {what}: {err}") from None


def check_base_model(recipe: Recipe, force: bool) -> None:
    """Refuse (unless ``force``) a base model whose weight files differ from the recorded hash.

    Checked before any teacher training, so a wrong base model fails in a second.
    """
    want = recipe.teacher.get("base_weights_hash")
    if not want:
        return
    have = base_model_hash(recipe.base_model)
    if have is None:
        log.info("cannot hash base model %s here: relying on the teacher's weights hash", recipe.base_model)
    elif have != want:
        msg = (f"the base model {recipe.base_model!r} here (weights {have}) is not the one this recipe was made "
               f"from (weights {want})")
        if not force:
            raise BaseModelMismatch(msg + "; pass --force to apply it anyway (its numbers will differ)")
        log.warning("%s; continuing because of --force", msg)


def check_teacher_task(recipe: Recipe, teacher_dir: str | None, where: str | Path) -> None:
    """The teacher a recipe will use (``--teacher``, else the cached teacher with the weights the recipe
    records) was fine-tuned on the recipe's task, read from its teacher.json before any weights are loaded
    or a teacher trained: a recipe edited to another task is refused now (its base model is checked by
    :func:`check_base_model`)."""
    folder = Path(teacher_dir) if teacher_dir else cached_teacher_path(recipe.teacher.get("weights_hash"))
    if folder is None or not (folder / "teacher.json").is_file():
        return
    info = read_teacher_info(folder)
    task = info.get("task")
    if isinstance(task, str) and task != get_task(recipe.task).name:
        raise RecipeError(f"{where}: the recipe is for task {recipe.task!r} but its teacher {folder} was fine-tuned on "
                          f"{task!r}: give the teacher of the recipe's own study (--teacher), or a recipe for {task!r}")


def check_recipe_fits(recipe: Recipe, task: TaskSpec, where: str | Path) -> None:
    """Apply the recipe's steps in probe mode (structure only: no training, random tokens where a
    step's choice needs batches) to the untrained base model, so that a recipe the model cannot
    take (more layers or heads kept than it has, a wrong ``unk_token_id`` ...) fails in seconds,
    before a teacher is trained for it. Skipped for a recipe with a step that needs what its study
    made from the teacher (a study hook: the elastic student) or whose base model cannot be loaded here
    (the teacher step says why)."""
    if any(get_method(s.method).study is not None for s in recipe.steps):
        return
    try:
        with quiet_transformers():  # a refusal after loading stays one line
            model = load_classifier(recipe.base_model, task.num_labels)
            tokenizer = load_tokenizer(recipe.base_model)
    except (UserError, OSError) as err:
        log.debug("recipe not checked against its base model before the teacher: %s", err)
        return
    vocab = int(getattr(model.config, "vocab_size", 0)) or len(tokenizer)

    def random_batches(n: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed)
        for _ in range(n):
            yield {"input_ids": torch.randint(vocab, (2, 16), generator=g),
                   "attention_mask": torch.ones(2, 16, dtype=torch.long),
                   "labels": torch.zeros(2, dtype=torch.float if task.is_regression else torch.long)}

    ctx = MethodContext(adapter=get_adapter(model), seed=recipe.seed, teacher=model, train_batches=random_batches,
                        num_labels=task.num_labels, is_regression=task.is_regression, probe=True,
                        tokenizer=tokenizer)
    try:
        build(Recipe(steps=recipe.steps), model, ctx)
    except (UserError, ValueError, RuntimeError, IndexError) as err:
        detail = " ".join(str(err).split())[:300]
        raise RecipeError(f"{where}: the recipe cannot be applied to its base model {recipe.base_model}: "
                          f"{detail}") from None


def ensure_prepared(recipe: Recipe, inputs: StudyInputs) -> None:
    """What the recipe's steps need that their study made (the methods' study hooks: the elastic student),
    made here when this machine lacks it, from the recipe's record of it (``teacher.<method>``)."""
    for name in dict.fromkeys(s.method for s in recipe.steps):
        hook = get_method(name).study
        if hook is not None:
            hook.ensure([s.params for s in recipe.steps if s.method == name], recipe.teacher.get(name), inputs)


def find_teacher(recipe: Recipe, data_dir: str | None, teacher_dir: str | None, force: bool,
                 progress: Progress | None) -> Teacher:
    if teacher_dir:
        try:
            teacher = load_teacher(teacher_dir)
        except FileNotFoundError:
            raise
        except Exception as err:  # unreadable weights or config (safetensors, JSON, transformers errors)
            detail = " ".join(str(err).split())[:200]
            raise CorruptModelError(f"teacher folder {teacher_dir} is corrupt: {type(err).__name__}: {detail}") \
                from None
    else:
        settings = _settings(TrainSettings, recipe.teacher.get("settings"), "teacher.settings")
        teacher = get_teacher(recipe.base_model, recipe.task, data_dir, settings, progress)
    want = recipe.teacher.get("weights_hash")
    have = weights_hash(teacher.model)
    if want and want != have:
        msg = (f"the teacher at {teacher.path} (weights {have}) is not the one this recipe was made from "
               f"(weights {want})")
        if not force:
            raise BaseModelMismatch(msg + "; pass --force to apply it anyway (its numbers will differ)")
        log.warning("%s; continuing because of --force", msg)
    return teacher


def _export(graph: Deployment | None) -> tuple[Path | None, dict[str, Any]]:
    """The deployment's ``model.onnx`` (exported now) when the model can be exported, else (None, the reason)."""
    from .runtimes import OnnxUnavailable, OnnxUnsupported

    if graph is None:
        return None, {"file": None, "reason": "not asked"}
    try:
        files = graph.files
        info = graph.export_info or {}
    except (OnnxUnsupported, OnnxUnavailable) as err:
        log.warning("no ONNX export: %s", err)
        return None, {"file": None, "reason": str(err)}
    name, path = next(iter(files.items()))
    return path, {**info, "file": name, "path": None}


def compare(recorded: Measurement, reproduced: Measurement) -> dict[str, Any]:
    """How close the rebuild came: metric equality, latency ratio and the recorded spread."""
    out: dict[str, Any] = {}
    if recorded.metric is not None and reproduced.metric is not None:
        out["metric_equal"] = recorded.metric == reproduced.metric
        out["metric_diff"] = reproduced.metric - recorded.metric
    if recorded.latency_ms and reproduced.latency_ms is not None:
        out["latency_ratio"] = reproduced.latency_ms / recorded.latency_ms
        lat = recorded.latency or {}
        if "p10_ms" in lat and "p90_ms" in lat:
            out["within_recorded_p10_p90"] = lat["p10_ms"] <= reproduced.latency_ms <= lat["p90_ms"]
    if recorded.speedup is not None and recorded.speedup.median and reproduced.speedup is not None:
        out["speedup_ratio"] = reproduced.speedup.median / recorded.speedup.median
    if recorded.size is not None and recorded.size.total_bytes and reproduced.size is not None:
        out["size_equal"] = recorded.size.total_bytes == reproduced.size.total_bytes
    return out


def rebuild(recipe_path: str | Path, out: str | Path, data_dir: str | None, *, teacher_dir: str | None = None,
            force: bool = False, progress: Progress | None = None, onnx: bool = True,
            exporter: str | None = None) -> Rebuilt:
    """Rebuild, measure and save the model of a recipe (or of a saved model folder's recipe)."""
    from .runtimes.fingerprint import hardware_fingerprint, same_machine

    recipe = read_recipe(recipe_path)
    try:
        task = get_task(recipe.task)
    except ValueError as err:
        raise RecipeError(f"recipe task: {err}") from None
    try:
        profile = _settings(HardwareProfile, recipe.profile, "profile", drop=("fingerprint", VARIANT_KEY))
        try:  # the study's ONNX Runtime graph (export_for_deployment reads it from the recipe)
            variant_of_recipe(recipe)
        except (ValueError, TypeError) as err:
            raise RecipeError(f"recipe profile.{VARIANT_KEY}: {err}") from None
        ls = _settings(LatencySettings, recipe.data.get("latency"), "data.latency")
        rec = recipe.data.get("recovery")
        settings = _settings(TrainSettings, rec, "data.recovery") if rec else TrainSettings(steps=0)
    except RecipeError as err:
        raise RecipeError(f"{recipe_path}: {err}") from None
    ls = baseline_settings(ls)
    for key in ("eval_batch_size", "train_threads", "dev_subset"):
        value = recipe.data.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise RecipeError(f"{recipe_path}: data.{key} must be a whole number >= 1, got {value!r}")
    try:  # the recipe's shapes against its model's position table, before a teacher is trained or loaded
        check_seq_len(profile.seq_len, recipe.base_model, "profile.seq_len")
        check_seq_len(settings.max_seq_len, recipe.base_model, "data.recovery.max_seq_len")
    except (ModelFolderError, FileNotFoundError) as err:
        raise RecipeError(f"{recipe_path}: {err}") from None
    check_teacher_task(recipe, teacher_dir, recipe_path)
    check_base_model(recipe, force)
    if teacher_dir is None:  # the teacher may have to be trained first: a recipe that cannot fit fails now
        check_recipe_fits(recipe, task, recipe_path)
    teacher = find_teacher(recipe, data_dir, teacher_dir, force, progress)
    data, extra = load_task_data(task, teacher.tokenizer, data_dir, settings, recipe.data.get("dev_subset"))
    ctx = MethodContext(adapter=get_adapter(teacher.model), seed=recipe.seed, teacher=teacher.model,
                        train_batches=data.train_batches, num_labels=task.num_labels,
                        is_regression=task.is_regression, progress=progress, device=profile.device,
                        tokenizer=teacher.tokenizer, train_token_ids=data.train_token_ids)
    batch_size = int(recipe.data.get("eval_batch_size", 64))
    train_threads = int(recipe.data.get("train_threads") or torch.get_num_threads())
    with fixed_threads(train_threads):
        ensure_prepared(recipe, StudyInputs(teacher=teacher.model, teacher_hash=weights_hash(teacher.model), data=data,
                                            train_subset=settings.train_subset, progress=progress))
        built = build(recipe, teacher.model, ctx)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out)  # what a killed apply left beside it
    workdir = temp_beside(out)
    try:
        # the recipe's runtime; its graph (model.onnx) is always written when that runtime deploys one
        deployment = deploy(built, recipe, profile, path=workdir / "model.onnx", exporter=exporter)
        graph = deployment if deployment.graph_file else \
            deploy(built, recipe, profile, runtime="onnxruntime", path=workdir / "model.onnx", exporter=exporter) \
            if onnx else None
        exported = [_export(graph)] if graph is deployment else []  # what deploys is exported first (or refused)
        if exported and exported[0][0] is None:
            raise RuntimeRefused(f"the recipe deploys with {deployment.runtime} but its model does not export: "
                                 f"{exported[0][1]['reason']}")
        inputs = timing_inputs(built.model, data, profile.batch_size)

        def timed() -> Timing:  # after the metric: the folder's extra graph, then the fp32 PyTorch teacher's baseline
            if not exported:
                exported.append(_export(graph))
            base = deploy(teacher.model, None, profile, runtime="torch").latency(ls)
            return deployment.timing(teacher.model, ls, base.median_ms, inputs)

        measured = assess(deployment, data=data, extra=extra, main_metric=task.main_metric, batch_size=batch_size,
                          eval_threads=train_threads, timing=timed)
        measured = dataclasses.replace(measured, exit_stats=None, onnx=None)  # the manifest says those apart
        onnx_file, onnx_info = exported[0]
        if graph is not None and onnx_file is not None:  # the graph's own metric, from its session
            onnx_info["metrics"] = measured.metrics if graph is deployment else graph.evaluate(data, extra, batch_size)
            onnx_info["metric"] = onnx_info["metrics"][task.main_metric]
        reproduced = measured.to_dict()
        comparison = compare(Measurement.from_dict(recipe.measured), measured)
        here = hardware_fingerprint(profile.threads, profile.runtime)
        notes = [f"this machine differs from the one that measured the recipe: {', '.join(diffs)}"
                 for diffs in [same_machine((recipe.profile or {}).get("fingerprint") or {}, here)] if diffs]
        path = save_compressed(
            built, recipe, teacher.tokenizer, teacher.model.config, out,
            {"recorded": recipe.measured, "reproduced": reproduced, "comparison": comparison},
            extra_files={"model.onnx": onnx_file} if onnx_file is not None else None,
            manifest_extra={"onnx": onnx_info, "rebuilt_on": here, "notes": notes})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    manifest = read_manifest(path)
    return Rebuilt(path, recipe, measured, onnx_info, manifest.get("plain_from_pretrained", {}), notes, comparison)
