"""The two training stages of a headline study on their own, and where a study stands.

    python studies/headline_base/stages.py --data-dir ../shared/data/glue --stage status
    python studies/headline_base/stages.py --data-dir ../shared/data/glue --stage teacher
    python studies/headline_base/stages.py --data-dir ../shared/data/glue --stage elastic

``studies/headline/run.py --stage search`` trains the teacher and the elastic student itself
before its first trial; each is cached only when it is complete (a killed run starts that stage
again). On a 12-layer model each takes hours, so this script runs them one per sitting, through
the same library calls the search makes (same cache keys: the search then finds them):
``teacher`` fine-tunes the study's model (``$AUTOSQUEEZE_CACHE/teachers/<key>``), ``elastic``
trains the elastic student of that teacher (``$AUTOSQUEEZE_CACHE/elastic/<key>``). ``status``
(cheap: nothing is trained, no model is loaded) prints what is done and the next command.
``--study`` defaults to ``studies/headline_base/study.yaml``; run from the repository root
(the study's ``model:`` folder is relative to it).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RUN = "python studies/headline/run.py"


def _progress() -> Callable[[str, int, int, dict[str, float]], None]:
    last = {"t": 0.0}
    first: dict[str, tuple[int, float]] = {}  # per run: the first step reported and when (a resumed run starts late)

    def report(what: str, done: int, total: int, stats: dict[str, float]) -> None:
        d0, t0 = first.setdefault(what, (done, time.time()))
        if done > d0 and (time.time() - last["t"] > 60 or done == total):
            last["t"] = time.time()
            rate = (time.time() - t0) / (done - d0)
            print(f"  {what} {done}/{total} ({rate:.2f} s a step, ~{rate * (total - done) / 60:.0f} min left) "
                  + " ".join(f"{k}={v:.4f}" for k, v in stats.items()), flush=True)

    return report


def teacher_folder(config: Any, data_dir: str) -> Path | None:
    """The cached teacher's folder if it is complete (no model loaded)."""
    from autosqueeze import cache_root, get_task, teacher_key, train_data_id

    if config.teacher.steps == 0:  # a fine-tuned folder used as it is (teacher: {path: DIR}): nothing to train
        return Path(config.model)
    task = get_task(config.task)
    path = cache_root() / "teachers" / teacher_key(config.model, task, config.teacher, train_data_id(task, data_dir))
    return path if (path / "teacher.json").is_file() else None


def elastic_folder(teacher_hash: str | None, config: Any) -> Path | None:
    """A complete cached elastic student of this teacher trained with the study's settings."""
    from autosqueeze import cache_root

    want = config.elastic.to_dict()
    for info_file in sorted((cache_root() / "elastic").glob("*/elastic.json")):
        try:
            info = json.loads(info_file.read_text())
        except (OSError, ValueError):
            continue
        if info.get("teacher_weights_hash") == teacher_hash and info.get("settings") == want and \
                (info.get("data") or {}).get("batch_size") == config.recovery.batch_size and \
                (info.get("data") or {}).get("max_seq_len") == config.recovery.max_seq_len:
            return info_file.parent
    return None


def stage_status(config: Any, data_dir: str, study_arg: str) -> int:
    import optuna

    study = Path(study_arg).resolve()
    shown = study.relative_to(Path.cwd()) if study.is_relative_to(Path.cwd()) else study
    common = f"--data-dir {data_dir} --study {shown}"
    if not Path(config.model).is_dir() and config.model.startswith((".", "/")):
        print(f"model: {config.model} missing (run from the repository root?); next: python "
              f"studies/headline_base/get_model.py")
        return 0
    teacher = teacher_folder(config, data_dir)
    if teacher is None:
        print(f"teacher: not trained ({config.teacher.steps} steps); next: python "
              f"studies/headline_base/{Path(__file__).name} {common} --stage teacher")
        return 0
    if config.teacher.steps == 0:
        print(f"teacher: {teacher}, used as it is (teacher.path); the elastic student is not looked up here")
    else:
        info = json.loads((teacher / "teacher.json").read_text())
        metrics = json.loads((teacher / "metrics.json").read_text()) if (teacher / "metrics.json").is_file() else {}
        print(f"teacher: {teacher} ({', '.join(f'{k} {v:.4f}' for k, v in metrics.items() if isinstance(v, float))})")
        student = elastic_folder(info.get("weights_hash"), config)
        if student is None:
            print(f"elastic student: not trained ({config.elastic.steps} steps); next: python "
                  f"studies/headline_base/{Path(__file__).name} {common} --stage elastic")
            return 0
        train_s = json.loads((student / "elastic.json").read_text()).get("train_s") or 0
        print(f"elastic student: {student} (trained in {train_s / 3600:.2f} h)")
    from autosqueeze import StudyRecord, finished_trials, make_storage

    db = Path(config.storage_url.removeprefix("sqlite:///"))
    if config.storage_url.startswith("sqlite:///") and not db.is_file():
        print(f"search: not started; next: {RUN} {common} --stage search")
        return 0
    try:
        search = optuna.load_study(study_name=config.name, storage=make_storage(config.storage_url, create=False))
    except KeyError:
        print(f"search: not started; next: {RUN} {common} --stage search")
        return 0
    done = finished_trials(search)
    print(f"search: {done}/{config.trials} trials")
    if done < config.trials:
        print(f"next: {RUN} {common} --stage search")
        return 0
    from dataclasses import asdict

    record = StudyRecord.from_study(search)
    summary = record.finalize or {}
    finalized = summary.get("settings") == asdict(config.finalize)
    saved = sorted((Path(config.path).parent / "work" / "final").glob("trial-*"))
    print(f"finalize: {'done' if finalized else 'not finished'} ({len(record.final or {})} "
          f"candidates stored, {len(saved)} final models saved under work/final)")
    if not finalized:
        print(f"next: {RUN} {common} --stage finalize")
        return 0
    result = Path(config.path).parent / "results" / f"{config.name}.json"
    print(f"references: {'written: ' + str(result) if result.is_file() else 'not timed'}")
    if not result.is_file():
        print(f"next: {RUN} {common} --stage references")
    return 0


def stage_teacher(config: Any, data_dir: str) -> int:
    from autosqueeze import get_task, get_teacher

    t0 = time.time()
    teacher = get_teacher(config.model, get_task(config.task), data_dir, config.teacher, _progress())
    print(f"teacher: {teacher.path}: " + ", ".join(f"{k} {v:.4f}" for k, v in teacher.metrics.items()
                                                   if isinstance(v, float)) + f" ({time.time() - t0:.0f} s)")
    return 0


def stage_elastic(config: Any, data_dir: str) -> int:
    """What ``autosqueeze.search.study.prepare`` + ``prepare_elastic`` do before the first trial, less the
    timing: the same teacher, data and settings, so the same student key."""
    from autosqueeze import fixed_threads, get_elastic_student, get_task, get_teacher, load_task_data

    task = get_task(config.task)
    if teacher_folder(config, data_dir) is None:
        print(f"stages: no cached teacher for {config.path}: run --stage teacher first", file=sys.stderr)
        return 1
    teacher = get_teacher(config.model, task, data_dir, config.teacher)
    data, _ = load_task_data(task, teacher.tokenizer, data_dir, config.recovery, config.eval.dev_subset)
    t0 = time.time()
    with fixed_threads(config.recovery.threads or os.cpu_count() or 1):
        student = get_elastic_student(teacher.model, str(teacher.info.get("weights_hash")), data, config.elastic,
                                      config.recovery.train_subset, _progress())
    print(f"elastic student: {student.path} (this run {time.time() - t0:.0f} s; trained in "
          f"{(student.info.get('train_s') or 0):.0f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="GLUE folder (glue_data layout)")
    p.add_argument("--study", default=str(HERE / "study.yaml"))
    p.add_argument("--stage", choices=("status", "teacher", "elastic"), required=True)
    args = p.parse_args(argv)
    from autosqueeze import UserError, check_machine, load_study_config

    try:
        config = load_study_config(args.study)
        check_machine(config)
        if args.stage == "status":
            return stage_status(config, args.data_dir, args.study)
        return (stage_teacher if args.stage == "teacher" else stage_elastic)(config, args.data_dir)
    except (UserError, FileNotFoundError) as err:
        print(f"stages: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
