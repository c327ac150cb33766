"""Command line: finetune | search | report | export | apply.

Thin: parses arguments, owns the terminal (progress bars, summaries), and turns known errors
into one line on stderr with a non-zero exit. The work is done by the library modules.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .cli_args import (
    OneLineParser,
    check_not_owned,
    check_output_file,
    check_output_folder,
    positive_number,
    seed_number,
    task_name,
    trial_numbers,
    whole_number,
)

log = logging.getLogger("autosqueeze")
EXIT_BUG, EXIT_ERROR, EXIT_INTERRUPTED = 1, 2, 130
USER_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.ENAMETOOLONG, errno.ELOOP}


class Progress:
    """A tqdm bar per training run (teacher fine-tuning, recovery distillation)."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.what: str | None = None

    def __call__(self, what: str, done: int, total: int, stats: dict[str, float]) -> None:
        from tqdm.auto import tqdm

        if self.bar is None or self.what != what or done == 1:
            self.close()
            self.bar = tqdm(total=total, desc=f"  {what}", leave=False, dynamic_ncols=True, file=sys.stderr)
            self.what = what
        self.bar.n = done
        self.bar.set_postfix({k: f"{v:.4f}" for k, v in stats.items()}, refresh=False)
        self.bar.refresh()
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a batch scheduler's stop, a ``timeout``) ends a command as Ctrl-C does: the
    trial in flight recorded as failed, where the study stands said, exit 130 — not a silent death."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _data_dir(args: argparse.Namespace, config_dir: str | None = None) -> str | None:
    from .tasks import resolve_data_dir

    return resolve_data_dir(getattr(args, "data_dir", None) or config_dir)


def _teacher_cache() -> Path:
    from .teacher import cache_root

    return cache_root() / "teachers"


def _task_data(task: str | None, data_dir: str | None) -> Path | None:
    """The folder of ``task``'s TSV files in the GLUE folder ``data_dir`` (None: the hub, or no such files)."""
    from .errors import UserError
    from .tasks.loaders import split_path

    try:
        train = split_path(task, "train", data_dir) if task and data_dir else None
    except (UserError, OSError, ValueError):  # no such files (the command says so where it reads them)
        return None
    return train.parent if train is not None else None


def _owned_by_study(config: Any, args: argparse.Namespace) -> dict[str, str | Path | None]:
    """What a study reads and keeps: no output of report, export ... may land on, in or around these."""
    from .search.storage import sqlite_file

    db = sqlite_file(getattr(args, "storage", None) or config.storage_url)
    owned: dict[str, str | Path | None] = {
        "the study file": config.path, "the study's search space": config.search_space, "the study database": db,
        "the teacher cache": _teacher_cache(), "the study's model folder": config.model if Path(config.model).is_dir()
        else None, "the study's data": _task_data(config.task, _data_dir(args, config.data_dir))}
    if db is not None:  # SQLite's journal files beside it
        owned.update({f"the study database's {end} file": db.with_name(f"{db.name}-{end}")
                      for end in ("journal", "wal", "shm")})
    return owned


def cmd_finetune(args: argparse.Namespace) -> int:
    from .models import check_model_folder, resolve_model
    from .tasks.loaders import split_path
    from .teacher import train_teacher
    from .train import TrainSettings

    check_output_folder(args.out, "--out", overwrite=args.overwrite)
    source = Path(resolve_model(args.model))
    check_not_owned(args.out, "--out", {"the model folder": source if source.is_dir() else None,
                                        "the task's data": _task_data(args.task, _data_dir(args)),
                                        "the teacher cache": _teacher_cache()})
    if source.is_dir():
        check_model_folder(source)
    data_dir = _data_dir(args)
    for split in ("train", "dev"):
        split_path(args.task, split, data_dir)  # the files exist (their rows are read before training)
    settings = TrainSettings(steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                             max_seq_len=args.max_seq_len, seed=args.seed, train_subset=args.train_subset)
    progress = Progress()
    teacher = train_teacher(args.model, args.task, data_dir, settings, args.out, progress)
    progress.close()
    print(json.dumps(teacher.metrics, indent=2))
    print(f"teacher saved to {teacher.path}")
    return 0


def _study_counts(study: Any) -> dict[str, Any]:
    """Where a study stands: trials by status and its front (report.pareto.front_summary)."""
    from .report.pareto import front_summary, trial_records
    from .search.study_record import StudyRecord

    records = trial_records(study)
    feasible = [r for r in records if r.feasible]
    counts = {s: sum(r.status == s for r in records) for s in ("over_budget", "stopped_early", "failed", "running")}
    counts["pruned"] = sum(r.state == "PRUNED" for r in records)
    counts["repeats"] = sum(r.duplicate_of is not None for r in records)
    return {"done": len(records) - counts["running"], "feasible": len(feasible),
            "front": front_summary(records, StudyRecord.from_study(study)), **counts}


def _standing(c: dict[str, Any]) -> str:
    running = f", running {c['running']}" if c["running"] else ""
    repeats = f", repeats {c['repeats']} (not counted)" if c["repeats"] else ""
    return (f"done {c['done']}: feasible {c['feasible']}, over budget {c['over_budget']}, "
            f"pruned/stopped {c['pruned'] + c['stopped_early']}, failed {c['failed']}{repeats}{running} | "
            f"{c['front']}")


def _trial_line(study: Any, trial: Any) -> None:
    from .search.trial_record import TrialRecord

    r = TrialRecord.from_trial(trial)
    metric = r.metric if r.metric is not None else float("nan")
    if trial.state.name == "FAIL":
        reason = r.error or (trial.system_attrs.get("fail_reason") or "?").strip().splitlines()[-1]
        what = f"failed: {reason[:160]}"
    elif r.status == "over_budget":
        what = f"over budget ({r.latency_ms:.2f} ms)"
    elif r.status == "stopped_early":
        at = r.stopped_at or {}
        what = (f"stopped early at {100 * at.get('progress', 0):.0f}% of training: {metric:.4f} on the "
                f"dev slice, cannot reach {at.get('reference', float('nan')):.4f} at {r.latency_ms:.2f} ms")
    else:
        what = f"metric {metric:.4f}, {r.latency_ms or 0:.2f} ms ({r.speedup or 0:.2f}x)"
        if r.duplicate_of is not None:
            what += f", a repeat of trial {r.duplicate_of} (not counted)"
    secs = f" {r.trial_s:.0f}s" if isinstance(r.trial_s, (int, float)) else ""
    print(f"trial {trial.number:3d} [{r.label if r.methods else 'teacher'}] {what}{secs} | "
          f"{_standing(_study_counts(study))}", flush=True)


def cmd_search(args: argparse.Namespace) -> int:
    from .errors import USER_ERRORS
    from .search.storage import open_study_for_reading, redact
    from .search.study import run_search
    from .study_config import load_study_config

    config = load_study_config(args.study)
    where = redact(args.storage or config.storage_url)
    if not args.verbose:  # our trial lines say why a trial failed; Optuna's would add tracebacks
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
    progress = Progress()
    try:
        summary = run_search(config, _data_dir(args, config.data_dir), trials=args.trials,
                             budget_ms=args.latency_budget, storage=args.storage, progress=progress,
                             callbacks=[lambda s, t: (progress.close(), _trial_line(s, t))])  # type: ignore[func-returns-value]
    except KeyboardInterrupt:
        progress.close()
        try:
            standing = _standing(_study_counts(open_study_for_reading(args.storage or config.storage_url,
                                                                      config.name, config.path)))
        except USER_ERRORS:  # nothing stored yet (interrupted while preparing)
            standing = "no trial stored yet"
        print(f"\ninterrupted: study {config.name!r} in {where}: {standing}; the trial in flight is recorded as "
              f"failed. Run the same command to continue.", file=sys.stderr)
        return EXIT_INTERRUPTED
    if summary.stale_failed:
        print(f"trials {summary.stale_failed} were left running by a process that ended; recorded as failed")
    if summary.exhausted is not None:
        print(f"space exhausted: {summary.exhausted} distinct recipes; the last trials only repeated them, so the "
              f"study stops at {summary.done} trials (a larger --trials finds nothing new: widen the space)")
    elif summary.ran == 0:
        print(f"study {config.name!r} already has {summary.done} finished trials (target {summary.target}); "
              f"pass --trials N to run more")
    else:
        print(f"study {config.name!r}: {summary.done}/{summary.target} trials in {where}")
    return 0


def cmd_finalize(args: argparse.Namespace) -> int:
    from .search.finalize import run_finalize
    from .study_config import check_machine, load_study_config

    config = load_study_config(args.study)
    check_machine(config)
    progress = Progress()
    summary = run_finalize(config, _data_dir(args, config.data_dir), storage=args.storage, top_k=args.top_k,
                           steps=args.steps, progress=progress, trials=args.trials)
    progress.close()
    tau = summary["kendall_tau"]
    print(f"finalized {summary['finalized']} of {len(summary['candidates'])} candidates "
          f"({summary['settings']['steps']} distillation steps each) in {summary['finalize_s']:.0f} s; "
          f"Kendall tau search vs final metric: {'n/a' if tau is None else f'{tau:.2f}'}")
    return 0


def _check_report_folder(out: Path, flag: str, study_file: str, overwrite: bool) -> None:
    """The report rewrites its three files, never anything else; without ``--overwrite`` it writes only
    into an empty folder or over this same study's earlier report (its effectiveness.md names the study file),
    the default report/ beside the study included (two study files in one folder share it)."""
    from .errors import OutputError

    check_output_folder(out, flag, overwrite=overwrite, ours="effectiveness.md")
    earlier = out / "effectiveness.md"
    if not overwrite and earlier.is_file() and f"study file {study_file}" not in earlier.read_text(errors="replace"):
        raise OutputError(f"{flag} {out} holds the report of another study: pass --out with a new folder, or "
                          f"--overwrite to replace it")


def cmd_report(args: argparse.Namespace) -> int:
    from .report.build import write_report
    from .study_config import load_study_config

    config = load_study_config(args.study)
    out = Path(args.out) if args.out else config.report_dir
    check_not_owned(out, "--out", _owned_by_study(config, args))
    _check_report_folder(out, "--out" if args.out else "report folder (default --out)", str(config.path),
                         args.overwrite)
    files = write_report(config, out, args.storage)
    print(f"{files.n_trials} trials, {files.n_front} on the Pareto front")
    for note in files.notes:
        print(f"note: {note}")
    print(f"report: {files.html}\ntable:  {files.markdown}\ncsv:    {files.csv}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .report.export import export_recipe
    from .study_config import load_study_config

    config = load_study_config(args.study)
    check_not_owned(args.output, "-o", _owned_by_study(config, args))
    check_output_file(args.output, "-o", overwrite=args.overwrite)
    path, record = export_recipe(config, Path(args.output), latency_budget_ms=args.latency_budget,
                                 min_speedup=args.min_speedup, trial_number=args.trial, max_drop=args.max_drop,
                                 storage=args.storage)
    size = (record.size_pct or {}).get("total")
    print(f"trial {record.number}: {record.recipe_summary}")
    print(f"  metric {record.metric:.4f}, {record.latency_ms:.2f} ms ({record.speedup:.2f}x)"
          + (f", {size:.1f}% of the teacher's size" if size is not None else "") + f" -> {path}")
    return 0


def _apply_table(result: Any) -> list[str]:
    """Recorded vs reproduced numbers, one line each, with how close they are."""
    from .measure.assessment import Measurement

    rec, rep, cmp = Measurement.from_dict(result.recipe.measured), result.measurement, result.comparison
    lines = [f"{'':12s}{'recorded':>14s}{'reproduced':>14s}"]
    for key, fmt in (("metric", "{:.4f}"), ("latency_ms", "{:.2f}"), ("speedup", "{:.2f}")):
        r_value, p_value = ((m.speedup.median if m.speedup is not None else None) if key == "speedup"
                            else getattr(m, key) for m in (rec, rep))
        r = fmt.format(r_value) if r_value is not None else "-"
        line = f"{key:12s}{r:>14s}{fmt.format(p_value):>14s}"
        if key == "metric" and "metric_equal" in cmp:
            line += "   identical" if cmp["metric_equal"] else f"   differs by {cmp['metric_diff']:+.4f}"
        if key == "latency_ms" and "latency_ratio" in cmp:
            lat = rec.latency or {}
            spread = f", recorded p10-p90 {lat['p10_ms']:.2f}-{lat['p90_ms']:.2f}" if "p10_ms" in lat else ""
            line += f"   x{cmp['latency_ratio']:.2f}{spread} (latency is noisy on a shared machine)"
        if key == "speedup" and "speedup_ratio" in cmp:
            line += f"   x{cmp['speedup_ratio']:.2f}"
        lines.append(line)
    rs = rec.size.total_bytes if rec.size is not None else "-"
    ps = rep.size.total_bytes if rep.size is not None else "-"
    lines.append(f"{'size_bytes':12s}{rs:>14}{ps:>14}")
    return lines


def _recipe_task(path: str) -> str | None:
    """The task a recipe file (or a saved folder's recipe) names; None when it cannot be read (apply says why)."""
    from .apply import read_recipe

    try:
        return read_recipe(path).task
    except Exception:  # any unreadable recipe: the rebuild refuses it in its own words
        return None


def cmd_apply(args: argparse.Namespace) -> int:
    from .apply import rebuild
    from .artifact import MANIFEST

    check_not_owned(args.output, "-o", {"the recipe": args.recipe, "the teacher folder": args.teacher,
                                        "the recipe's data": _task_data(_recipe_task(args.recipe), _data_dir(args)),
                                        "the teacher cache": _teacher_cache()})
    check_output_folder(args.output, "-o", ours=MANIFEST)
    progress = Progress()
    result = rebuild(args.recipe, args.output, _data_dir(args), teacher_dir=args.teacher, force=args.force,
                     progress=progress, onnx=not args.no_onnx, exporter=args.onnx_exporter)
    progress.close()
    for line in _apply_table(result):
        print(line)
    onnx = result.onnx
    if onnx.get("file"):
        how = "int8 by onnxruntime.quantization" if onnx.get("quantized") else "float"
        metric = f", dev metric {onnx['metric']:.4f}" if onnx.get("metric") is not None else ""
        print(f"onnx:  {result.out / onnx['file']} ({onnx['exporter']} exporter, {how}{metric})")
    else:
        print(f"onnx:  none ({onnx.get('reason', 'not exported')})")
    plain = result.plain
    print("plain from_pretrained: " + ("yes, AutoModelForSequenceClassification.from_pretrained(DIR) gives this model"
                                       if plain.get("ok") else f"no ({plain.get('reason', 'not checked')})"))
    for note in result.warnings:
        print(f"note: {note}")
    print(f"model saved to {result.out} (load with autosqueeze.load)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench
    from .measure import HardwareProfile, LatencySettings
    from .models import check_seq_len

    for model in args.models:  # a folder's position table (a hub name is checked when it loads)
        check_seq_len(args.seq_len, model, "--seq-len")
    profile = HardwareProfile(threads=args.threads, batch_size=args.batch_size, seq_len=args.seq_len)
    rows = bench(args.models, profile, LatencySettings(repeats=args.repeats), teacher_dir=args.teacher)
    print(f"{'model':40s}{'runtime':>13s}{'median ms':>11s}{'p10-p90 ms':>16s}{'speedup':>9s}{'p10-p90':>13s}"
          f"{'MB':>8s}{'MB no emb':>11s}  reference")
    for r in rows:
        lat = r.latency
        spread = f"{r.speedup_p10:.2f}-{r.speedup_p90:.2f}" if r.speedup_p10 is not None and \
            r.speedup_p90 is not None else "-"
        ref = r.reference if r.teacher_ms is None else f"{r.reference}, {r.teacher_ms:.2f} ms"
        print(f"{r.name[-40:]:40s}{r.runtime:>13s}{lat.median_ms:11.2f}{f'{lat.p10_ms:.2f}-{lat.p90_ms:.2f}':>16s}"
              f"{r.speedup:8.2f}x{spread:>13s}{r.size['total_bytes'] / 1e6:8.1f}"
              f"{r.size['non_embedding_bytes'] / 1e6:11.1f}  {ref}")
    print(f"(batch {profile.batch_size}, seq {profile.seq_len}, {profile.threads} threads; paired: timed call by call "
          f"with the folder's fp32 PyTorch teacher, speedup = median of the per-pair ratios, p10-p90 their spread, "
          f"as search and apply time it; unpaired: speedup vs the first model's median)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="autosqueeze", description=__doc__.splitlines()[0])
    verbose_help = "debug logging, and the traceback of an error"
    p.add_argument("-v", "--verbose", action="store_true", help=verbose_help)
    sub = p.add_subparsers(dest="command", required=True)
    data_help = "GLUE folder in the glue_data layout (default: $AUTOSQUEEZE_GLUE_DIR, else the hub)"

    f = sub.add_parser("finetune", help="fine-tune a teacher on a GLUE task")
    f.add_argument("--task", required=True, type=task_name, help="GLUE task: sst2, rte, mnli, ...")
    f.add_argument("--model", default="default", help="local folder or hub name (default: packaged MiniLM-L6)")
    f.add_argument("--data-dir", help=data_help)
    f.add_argument("--out", required=True, help="folder to write the model and metrics.json (new or empty)")
    f.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --out folder")
    f.add_argument("--max-steps", type=whole_number(0), default=300)
    f.add_argument("--batch-size", type=whole_number(1), default=32)
    f.add_argument("--lr", type=positive_number, default=1e-4)
    f.add_argument("--max-seq-len", type=whole_number(8), default=64)
    f.add_argument("--train-subset", type=whole_number(1), default=None, help="train on a random subset of N examples")
    f.add_argument("--seed", type=seed_number, default=0)
    f.set_defaults(func=cmd_finetune)

    s = sub.add_parser("search", help="run (or continue) the study")
    s.add_argument("study", help="study YAML file")
    s.add_argument("--data-dir", help=data_help)
    s.add_argument("--trials", type=whole_number(1), help="total trials wanted (overrides the study file)")
    s.add_argument("--latency-budget", type=positive_number, help="latency budget in ms (overrides the study file)")
    s.add_argument("--storage", help="Optuna storage URL (default: SQLite next to the study file); "
                   "postgresql://user:password@host:5432/db lets workers on several machines share the study")
    s.set_defaults(func=cmd_search)

    r = sub.add_parser("report", help="write the HTML report and the effectiveness table")
    r.add_argument("study")
    r.add_argument("--out", help="folder (default: report/ next to the study file)")
    r.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty folder that holds no earlier report (only report.html, "
                        "effectiveness.md and effectiveness.csv are written there)")
    r.add_argument("--storage")
    r.set_defaults(func=cmd_report)

    e = sub.add_parser("export", help="write the best recipe within a budget")
    e.add_argument("study")
    e.add_argument("-o", "--output", required=True, help="recipe YAML to write (a new file)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing -o file (atomically)")
    e.add_argument("--latency-budget", type=positive_number,
                   help="maximum latency in ms (default: the most accurate trial)")
    e.add_argument("--min-speedup", type=positive_number, help="minimum speedup over the teacher")
    e.add_argument("--trial", type=whole_number(0), help="export this trial number instead of choosing by budget")
    e.add_argument("--max-drop", type=float, metavar="PTS",
                   help="the fastest Pareto point within PTS points of the teacher's metric")
    e.add_argument("--storage")
    e.set_defaults(func=cmd_export)

    fz = sub.add_parser("finalize", help="train the search-time front again at full fidelity and measure it")
    fz.add_argument("study")
    fz.add_argument("--data-dir", help=data_help)
    pick = fz.add_mutually_exclusive_group()
    pick.add_argument("--top-k", type=whole_number(1), help="at most this many candidates (default: the study's "
                                                            "finalize.top_k)")
    pick.add_argument("--trials", type=trial_numbers, metavar="N[,N...]",
                      help="finalize exactly these trials (numbers as `autosqueeze report` shows them)")
    fz.add_argument("--steps", type=whole_number(0), help="distillation steps per candidate (default: the study's "
                                                          "finalize.steps)")
    fz.add_argument("--storage")
    fz.set_defaults(func=cmd_finalize)

    a = sub.add_parser("apply", help="rebuild the model of a recipe, measure it and save it")
    a.add_argument("recipe", help="recipe YAML (from export), or a model folder saved by apply")
    a.add_argument("-o", "--output", required=True, help="folder to save the compressed model")
    a.add_argument("--data-dir", help=data_help)
    a.add_argument("--teacher", help="teacher folder (default: the cache, trained if absent)")
    a.add_argument("--force", action="store_true", help="apply even if the base model's or teacher's weights differ")
    a.add_argument("--no-onnx", action="store_true", help="do not export model.onnx")
    a.add_argument("--onnx-exporter", choices=("dynamo", "torchscript"),
                   help="ONNX exporter (default: dynamo, falling back to TorchScript)")
    a.set_defaults(func=cmd_apply)

    b = sub.add_parser("bench", help="time saved models, each paired with its teacher (others: vs the first)")
    b.add_argument("models", nargs="+", help="folders written by apply, model folders, hub names or 'default'")
    b.add_argument("--threads", type=whole_number(1), default=2)
    b.add_argument("--batch-size", type=whole_number(1), default=1)
    b.add_argument("--seq-len", type=whole_number(1), default=128)
    b.add_argument("--repeats", type=whole_number(3), default=50)
    b.add_argument("--teacher", help="teacher folder to pair saved folders with (default: the cached teacher of "
                                     "each recipe, else the structure its manifest describes)")
    b.set_defaults(func=cmd_bench)

    for command in sub.choices.values():  # options every command takes, also after its name
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose_help)
        command.add_argument("--allow-pickle", action="store_true", default=argparse.SUPPRESS,
                             help="also load pytorch_model.bin (pickle) weights; by default safetensors only")
    return p


def one_line(err: BaseException) -> str:
    """An error message as one line (a multi-line message is joined with "; ")."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return "; ".join(lines) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help (0), or a bad argument, already said in one line (2)
        return done.code if isinstance(done.code, int) else EXIT_ERROR
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # offline, a hub name logs each of its retries (ten lines) before the one error we print
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from .errors import USER_ERRORS
    from .models import ALLOW_PICKLE_ENV

    if getattr(args, "allow_pickle", False):
        os.environ[ALLOW_PICKLE_ENV] = "1"
    try:
        with _terminate_as_interrupt():
            return args.func(args)
    except USER_ERRORS as err:
        if args.verbose:
            raise
        print(f"autosqueeze {args.command}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # a bug: one line, and the traceback with --verbose
        if args.verbose:
            raise
        if isinstance(err, OSError) and err.errno in USER_ERRNOS:  # disk full, read-only file system ...
            print(f"autosqueeze {args.command}: error: {one_line(err)}", file=sys.stderr)
            return EXIT_ERROR
        from .search.storage import write_failure

        failure = write_failure(err)  # the study database could not be written (SQLite says so in words)
        if failure is not None:
            print(f"autosqueeze {args.command}: error: {one_line(failure)}", file=sys.stderr)
            return EXIT_ERROR
        log.debug("internal error", exc_info=True)
        print(f"autosqueeze {args.command}: internal error (a bug; please report it with the output of "
              f"--verbose): {type(err).__name__}: {one_line(err)}", file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
