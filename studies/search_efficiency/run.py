"""Search efficiency: joint TPE vs joint random vs single-method spaces, at an equal trial budget.

Every arm is one Optuna study (one per seed) in work/search_efficiency.db (scratch), run with
the product's own trial code (search.objective: latency probe first, recovery by
distillation, early stopping, dev metric). All arms share one process: one teacher, one
baseline latency and one latency cache, so a structure found by two arms has one latency.
Trials are interleaved round-robin over arms and seeds, so a change in machine load hits
every arm alike. Killing the script loses nothing; the same command continues.

Per arm and seed: the hypervolume of the (accuracy, speedup) front of the feasible,
completed trials, against the fixed reference point (accuracy 0.5 — chance on SST-2 —,
speedup 1.0), and the best accuracy within two latency budgets (teacher latency / 2 and
/ 3, i.e. speedup >= 2x and >= 3x). Written to results/: results.md, results.csv and
results.json (every trial's point, for re-analysis).

    python studies/search_efficiency/run.py --data-dir ../shared/data/glue                   # full: 40 trials x 3 seeds
    python studies/search_efficiency/run.py --data-dir ... --trials 12 --seeds 3 --steps-scale 0.25 \\
        --dev-subset 200 --train-subset 20000 --threads 1                                      # reduced
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
SPACES = HERE.parents[1] / "search_spaces"
ARMS = {  # name: (space file, sampler)
    "joint-tpe": ("full.yaml", "tpe"),
    "joint-random": ("full.yaml", "random"),
    "quantization": ("quantization.yaml", "tpe"),
    "pruning": ("pruning.yaml", "tpe"),
    "distillation": ("distillation.yaml", "tpe"),
    "decomposition": ("decomposition.yaml", "tpe"),
    "early-exit": ("early_exit.yaml", "tpe"),
    "sharing": ("sharing.yaml", "tpe"),
}
REFERENCE = (0.5, 1.0)  # (accuracy, speedup) of the hypervolume's reference point
BUDGETS = (2.0, 3.0)  # latency budgets as teacher latency / x, i.e. speedup >= x


def scaled_space(name: str, scale: float, out: Path) -> Path:
    """The space file with every training ``steps`` knob multiplied by ``scale`` (reduced runs)."""
    if scale == 1.0:
        return SPACES / name
    raw = yaml.safe_load((SPACES / name).read_text())
    for step in raw["steps"]:
        params = step.get("params") or {}
        value = params.get("steps")
        if isinstance(value, int):
            params["steps"] = max(1, round(value * scale))
        elif isinstance(value, dict) and value.get("type") == "categorical":
            value["choices"] = sorted({max(1, round(v * scale)) for v in value["choices"]})
    path = out / f"{Path(name).stem}.steps{scale:g}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def hypervolume(points: list[tuple[float, float]], ref: tuple[float, float] = REFERENCE) -> float:
    """Area dominated by (accuracy, speedup) points (both maximized) above ``ref``."""
    pts = sorted(((s, a) for a, s in points if a > ref[0] and s > ref[1]), reverse=True)
    hv, best = 0.0, ref[0]
    for speedup, acc in pts:
        if acc > best:
            hv += (speedup - ref[1]) * (acc - best)
            best = acc
    return hv


def budget_trials(study: Any) -> list[Any]:
    """Finished trials that count toward the budget: a trial lost because this script was
    killed (failed on resume, "worker ... ended during the trial") is not the arm's fault."""
    from optuna.trial import TrialState

    return [t for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
            if t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and not str(
                t.system_attrs.get("fail_reason", "")).startswith("worker "))]


def summarize(study: Any, limit: int) -> dict[str, Any]:
    """Scores of the study's first ``limit`` finished trials (an equal budget for every arm)."""
    from optuna.trial import TrialState

    done = budget_trials(study)[:limit]
    ok = [t for t in done if t.state == TrialState.COMPLETE and t.user_attrs.get("status") == "complete"]
    points = [(t.user_attrs["metric"], t.user_attrs["speedup"]) for t in ok]
    secs = [t.user_attrs["trial_s"] for t in done if isinstance(t.user_attrs.get("trial_s"), (int, float))]
    wall = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done if t.datetime_complete]
    row: dict[str, Any] = {
        "trials": len(done), "complete": len(ok), "stopped_early": sum(t.user_attrs.get("status") == "stopped_early"
                                                                        for t in done),
        "failed": sum(t.state == TrialState.FAIL for t in done), "hypervolume": hypervolume(points),
        "median_trial_s": statistics.median(wall) if wall else None,
        "trials_per_hour": 3600 * len(wall) / sum(wall) if wall else None,
        "median_compute_s": statistics.median(secs) if secs else None,
        "points": [{"number": t.number, "accuracy": t.user_attrs["metric"], "speedup": t.user_attrs["speedup"],
                    "latency_ms": t.user_attrs["latency_ms"], "methods": t.user_attrs.get("methods", [])} for t in ok],
    }
    for b in BUDGETS:
        within = [a for a, s in points if s >= b]
        row[f"best_acc_{b:g}x"] = max(within) if within else None
    return row


def mean_std(values: list[float | None]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.4f}"
    return f"{statistics.mean(vals):.4f} ± {statistics.stdev(vals):.4f}" + (
        f" ({len(vals)}/{len(values)})" if len(vals) < len(values) else "")


def write_results(out: Path, rows: dict[tuple[str, int], dict[str, Any]], meta: dict[str, Any]) -> None:
    arms = list(dict.fromkeys(a for a, _ in rows))
    keys = ["hypervolume", *(f"best_acc_{b:g}x" for b in BUDGETS)]
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arm", "seed", *keys, "trials", "complete", "stopped_early", "failed", "median_trial_s",
                    "trials_per_hour"])
        for (arm, seed), r in rows.items():
            w.writerow([arm, seed, *(r[k] for k in keys), r["trials"], r["complete"], r["stopped_early"], r["failed"],
                        r["median_trial_s"], r["trials_per_hour"]])
    (out / "results.json").write_text(json.dumps({"meta": meta, "runs": [
        {"arm": a, "seed": s, **r} for (a, s), r in rows.items()]}, indent=2, default=str))
    lines = [f"# Search efficiency: {meta['what']}", "", meta["command"], "", *meta["notes"], "",
             f"Hypervolume of the (accuracy, speedup) front, reference point {REFERENCE}; best accuracy with "
             f"speedup >= {BUDGETS[0]:g}x and >= {BUDGETS[1]:g}x (latency <= teacher / {BUDGETS[0]:g} and / "
             f"{BUDGETS[1]:g}). Mean ± std over seeds {meta['seeds']}; '-': no trial within that budget.", "",
             "| arm | hypervolume | " + " | ".join(f"best acc >= {b:g}x" for b in BUDGETS)
             + " | trials (complete / stopped / failed) | median trial s |",
             "|---|---|" + "---|" * len(BUDGETS) + "---|---|"]
    for arm in arms:
        rs = [r for (a, _), r in rows.items() if a == arm]
        counts = f"{sum(r['trials'] for r in rs)} ({sum(r['complete'] for r in rs)} / " \
                 f"{sum(r['stopped_early'] for r in rs)} / {sum(r['failed'] for r in rs)})"
        med = statistics.median([r["median_trial_s"] for r in rs if r["median_trial_s"] is not None] or [0])
        lines.append(f"| {arm} | " + " | ".join(mean_std([r[k] for r in rs]) for k in keys)
                     + f" | {counts} | {med:.0f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    import optuna

    from autosqueeze import (
        fail_dead_local_trials,
        load_space,
        make_objective,
        make_sampler,
        make_storage,
        reference_points,
        start_study_script,
        validate_for_model,
    )

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    p.add_argument("--study", default=str(HERE / "study.yaml"))
    p.add_argument("--out", default=str(HERE / "results"), help="results.md / .csv / .json (commit these)")
    p.add_argument("--work", default=str(HERE / "work"), help="the studies' SQLite file and scaled spaces (scratch)")
    p.add_argument("--trials", type=int, default=40, help="trials per arm and seed (the equal budget)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--run-seed", type=int, action="append", metavar="SEED",
                   help="run only this seed's studies (repeatable): lets several processes, one per core set, "
                        "share the work; the results are scored over all --seeds")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--dev-subset", type=int, help="dev examples for ranking (default: the study file's)")
    p.add_argument("--train-subset", type=int, help="training examples to draw recovery batches from")
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiply every training 'steps' knob")
    p.add_argument("--threads", type=int, help="threads for training and for latency (default: the study file's)")
    p.add_argument("--analyze-only", action="store_true", help="write the results from the stored trials")
    args = p.parse_args()
    script = start_study_script(args.study, args.data_dir)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    config = script.config  # changed in place below: script.prepare() uses the changes
    if args.dev_subset:
        config.eval = dataclasses.replace(config.eval, dev_subset=args.dev_subset)
    if args.train_subset or args.threads:
        config.recovery = dataclasses.replace(config.recovery, train_subset=args.train_subset or None,
                                              threads=args.threads or config.recovery.threads)
    if args.threads:
        config.hardware = dataclasses.replace(config.hardware, threads=args.threads)
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    storage = make_storage(f"sqlite:///{(work / 'search_efficiency.db').resolve()}")
    seeds = list(range(args.seeds))
    spaces = {arm: load_space(scaled_space(ARMS[arm][0], args.steps_scale, work)) for arm in args.arms}
    studies = {}
    for arm in args.arms:
        for seed in seeds:
            name = f"{arm}-seed{seed}"
            s = optuna.create_study(study_name=name, storage=storage, directions=["maximize", "minimize"],
                                    load_if_exists=True)
            fail_dead_local_trials(s)
            studies[(arm, seed)] = optuna.load_study(study_name=name, storage=storage,
                                                     sampler=make_sampler(ARMS[arm][1], seed + len(s.trials)))
    meta_file = work / "meta.json"
    if not args.analyze_only:
        sc = script.prepare()
        assert sc.baseline is not None  # measured by prepare
        for space in spaces.values():
            validate_for_model(space, sc.teacher.model, lambda: sc.method_context(config.seed, probe=True))
        refs = reference_points(sc) if not meta_file.exists() else json.loads(meta_file.read_text())["references"]
        meta_file.write_text(json.dumps({"references": refs, "teacher_ms": sc.baseline.median_ms,
                                         "teacher_metrics": sc.teacher.metrics}, default=str))
        print(f"teacher {sc.main_metric} {refs['teacher']['metric']:.4f} on {refs['teacher']['dev_examples']} dev "
              f"examples, {sc.baseline.median_ms:.2f} ms; plain int8 {refs['int8_baseline']['metric']:.4f}, "
              f"{refs['int8_baseline']['speedup']:.2f}x", flush=True)
        objectives = {arm: make_objective(space, sc) for arm, space in spaces.items()}
        t0 = time.time()
        run_seeds = [s for s in seeds if not args.run_seed or s in args.run_seed]
        for rnd in range(args.trials):  # round-robin: machine load drifts hit every arm alike
            for seed in run_seeds:
                for arm in args.arms:
                    study = studies[(arm, seed)]
                    if len(budget_trials(study)) > rnd:
                        continue
                    study.optimize(objectives[arm], n_trials=1, catch=(Exception,), gc_after_trial=True)
                    t = study.trials[-1]
                    ua = t.user_attrs
                    what = ua.get("error") if t.state.name == "FAIL" else (
                        f"{ua.get('status')} acc {ua.get('metric', float('nan')):.4f} {ua.get('speedup', 0):.2f}x")
                    print(f"[{time.time() - t0:7.0f}s] round {rnd + 1}/{args.trials} {arm} seed {seed} trial "
                          f"{t.number}: {'+'.join(ua.get('methods', [])) or 'teacher'}: {what} "
                          f"({ua.get('trial_s', 0):.0f}s)", flush=True)
    meta_refs = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    budget = min(args.trials, *(len(budget_trials(s)) for s in studies.values()))
    if budget < args.trials:
        print(f"only {budget} trials finished in every arm and seed: scoring the first {budget} of each", flush=True)
    rows = {(arm, seed): summarize(studies[(arm, seed)], budget) for arm in args.arms for seed in seeds}
    cmd = "python studies/search_efficiency/run.py " + " ".join(sys.argv[1:])
    refs = meta_refs.get("references", {})
    notes = [f"- teacher (this study's settings): {json.dumps(refs.get('teacher', {}).get('metric'))} accuracy on the "
             f"ranking dev subset, {meta_refs.get('teacher_ms', float('nan')):.2f} ms; plain quantize_dynamic int8: "
             f"{json.dumps(refs.get('int8_baseline', {}).get('metric'))}, "
             f"{refs.get('int8_baseline', {}).get('speedup', float('nan')):.2f}x."]
    meta = {"what": f"{budget} trials per arm x {args.seeds} seeds", "command": f"`{cmd}`", "notes": notes,
            "seeds": seeds, "args": vars(args), "reference_point": REFERENCE, "budgets_speedup": BUDGETS, **meta_refs}
    write_results(out, rows, meta)
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
