"""Command line: finetune | search | report | export | apply.

Thin: parses arguments, owns the terminal (progress bars, summaries), and turns known errors
into one line on stderr with a non-zero exit. The work is done by the library modules.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("autosqueeze")
EXIT_ERROR, EXIT_INTERRUPTED = 2, 130


class Progress:
    """A tqdm bar per training run (teacher fine-tuning, recovery distillation)."""

    def __init__(self) -> None:
        self.bar = None
        self.what = None

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


def _data_dir(args: argparse.Namespace, config_dir: str | None = None) -> str | None:
    from .tasks import resolve_data_dir

    return resolve_data_dir(getattr(args, "data_dir", None) or config_dir)


def cmd_finetune(args: argparse.Namespace) -> int:
    from .teacher import train_teacher
    from .train import TrainSettings

    settings = TrainSettings(steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                             max_seq_len=args.max_seq_len, seed=args.seed, train_subset=args.train_subset)
    progress = Progress()
    teacher = train_teacher(args.model, args.task, _data_dir(args), settings, args.out, progress)
    progress.close()
    print(json.dumps(teacher.metrics, indent=2))
    print(f"teacher saved to {teacher.path}")
    return 0


def _trial_line(study: Any, trial: Any) -> None:
    from .report.pareto import trial_records

    ua = trial.user_attrs
    records = trial_records(study)
    feasible = [r for r in records if r.feasible]
    states = {s: sum(r.status == s for r in records) for s in ("complete", "over_budget", "failed")}
    best = max((r.metric for r in feasible), default=None)
    if trial.state.name == "FAIL":
        what = f"failed: {trial.system_attrs.get('fail_reason', '').splitlines()[-1:] or '?'}"
    elif ua.get("status") == "over_budget":
        what = f"over budget ({ua['latency_ms']:.1f} ms)"
    else:
        what = f"metric {ua.get('metric', float('nan')):.4f}, {ua.get('latency_ms', 0):.2f} ms ({ua.get('speedup', 0):.2f}x)"
    print(f"trial {trial.number:3d} [{' + '.join(ua.get('methods', [])) or 'teacher'}] {what} | "
          f"done {len(records)}, feasible {len(feasible)}, over budget {states['over_budget']}, "
          f"failed {states['failed']}, best within budget {best if best is None else round(best, 4)}", flush=True)


def cmd_search(args: argparse.Namespace) -> int:
    from .search.study import finished_trials, open_study, run_search
    from .study_config import load_study_config

    config = load_study_config(args.study)
    progress = Progress()
    try:
        summary = run_search(config, _data_dir(args, config.data_dir), trials=args.trials,
                             budget_ms=args.latency_budget, storage=args.storage, progress=progress,
                             callbacks=[lambda s, t: (progress.close(), _trial_line(s, t))])
    except KeyboardInterrupt:
        progress.close()
        study = open_study(config, args.storage, create=False)
        print(f"\ninterrupted: the study {config.name!r} has {finished_trials(study)} finished trials in "
              f"{args.storage or config.storage_url}; run the same command to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    if summary.ran == 0:
        print(f"study {config.name!r} already has {summary.done} finished trials (target {summary.target}); "
              f"pass --trials N to run more")
    else:
        print(f"study {config.name!r}: {summary.done}/{summary.target} trials in {args.storage or config.storage_url}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report.build import write_report
    from .study_config import load_study_config

    config = load_study_config(args.study)
    files = write_report(config, Path(args.out) if args.out else None, args.storage)
    print(f"{files.n_trials} trials, {files.n_front} on the Pareto front")
    print(f"report: {files.html}\ntable:  {files.markdown}\ncsv:    {files.csv}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .report.export import export_recipe
    from .study_config import load_study_config

    config = load_study_config(args.study)
    path, record = export_recipe(config, Path(args.output), latency_budget_ms=args.latency_budget,
                                 min_speedup=args.min_speedup, trial_number=args.trial, storage=args.storage)
    print(f"trial {record.number}: {record.label}, metric {record.metric:.4f}, {record.latency_ms:.2f} ms "
          f"({record.speedup:.2f}x) -> {path}")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from .rebuild import rebuild

    progress = Progress()
    result = rebuild(args.recipe, args.output, _data_dir(args), teacher_dir=args.teacher, force=args.force,
                     progress=progress)
    progress.close()
    rec, rep = result.recipe.measured, result.reproduced
    print(f"{'':12s}{'recorded':>14s}{'reproduced':>14s}")
    for key, fmt in (("metric", "{:.4f}"), ("latency_ms", "{:.2f}"), ("speedup", "{:.2f}")):
        r = fmt.format(rec[key]) if key in rec else "-"
        print(f"{key:12s}{r:>14s}{fmt.format(rep[key]):>14s}")
    rs, ps = rec.get("size", {}), rep["size"]
    print(f"{'size_bytes':12s}{rs.get('total_bytes', '-'):>14}{ps['total_bytes']:>14}")
    print(f"model saved to {result.out} (load with autosqueeze.load)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="autosqueeze", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    data_help = "GLUE folder in the glue_data layout (default: $AUTOSQUEEZE_GLUE_DIR, else the hub)"

    f = sub.add_parser("finetune", help="fine-tune a teacher on a GLUE task")
    f.add_argument("--task", required=True)
    f.add_argument("--model", default="default", help="local folder or hub name (default: packaged MiniLM-L6)")
    f.add_argument("--data-dir", help=data_help)
    f.add_argument("--out", required=True, help="folder to write the model and metrics.json")
    f.add_argument("--max-steps", type=int, default=300)
    f.add_argument("--batch-size", type=int, default=32)
    f.add_argument("--lr", type=float, default=1e-4)
    f.add_argument("--max-seq-len", type=int, default=64)
    f.add_argument("--train-subset", type=int, default=None, help="train on a random subset of N examples")
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=cmd_finetune)

    s = sub.add_parser("search", help="run (or continue) the study")
    s.add_argument("study", help="study YAML file")
    s.add_argument("--data-dir", help=data_help)
    s.add_argument("--trials", type=int, help="total trials wanted (overrides the study file)")
    s.add_argument("--latency-budget", type=float, help="latency budget in ms (overrides the study file)")
    s.add_argument("--storage", help="Optuna storage URL (default: SQLite next to the study file)")
    s.set_defaults(func=cmd_search)

    r = sub.add_parser("report", help="write the HTML report and the effectiveness table")
    r.add_argument("study")
    r.add_argument("--out", help="folder (default: report/ next to the study file)")
    r.add_argument("--storage")
    r.set_defaults(func=cmd_report)

    e = sub.add_parser("export", help="write the best recipe within a budget")
    e.add_argument("study")
    e.add_argument("-o", "--output", required=True, help="recipe YAML to write")
    e.add_argument("--latency-budget", type=float, help="maximum latency in ms")
    e.add_argument("--min-speedup", type=float, help="minimum speedup over the teacher")
    e.add_argument("--trial", type=int, help="export this trial number instead")
    e.add_argument("--storage")
    e.set_defaults(func=cmd_export)

    a = sub.add_parser("apply", help="rebuild the model of a recipe, measure it and save it")
    a.add_argument("recipe")
    a.add_argument("-o", "--output", required=True, help="folder to save the compressed model")
    a.add_argument("--data-dir", help=data_help)
    a.add_argument("--teacher", help="teacher folder (default: the cache, trained if absent)")
    a.add_argument("--force", action="store_true", help="apply even if the teacher's weights differ")
    a.set_defaults(func=cmd_apply)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from .errors import USER_ERRORS

    try:
        return args.func(args)
    except USER_ERRORS as err:
        if args.verbose:
            raise
        print(f"autosqueeze {args.command}: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
