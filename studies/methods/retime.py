"""Re-time the structures of chosen rows several times: how much does a speedup move between runs?

A row's latency depends on its structure only (training changes weights, not shapes), so
its probe — the recipe built without training — is timed ``--repeats`` times, each time
paired with the teacher exactly as in run.py. Early-exit rows are left out (their cost
depends on trained exit heads and the data). Writes results/retime.md.

    python studies/methods/retime.py --data-dir ../shared/data/glue --only int8-dynamic --repeats 5
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def main() -> int:
    from run import row_recipe  # this folder's run.py

    from autosqueeze import build, start_study_script, timing_against_teacher

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    p.add_argument("--only", action="append", help="row names (default: every row without early exit)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--study", default=str(HERE / "study.yaml"), help="the study whose teacher and profile to use")
    args = p.parse_args()
    script = start_study_script(args.study, args.data_dir)
    rows = [r for r in yaml.safe_load((HERE / "rows.yaml").read_text())["rows"]
            if (not args.only or r["name"] in args.only) and all(s["method"] != "early_exit" for s in r["steps"])]
    sc = script.prepare()
    assert sc.baseline is not None  # measured by prepare
    lines = [f"# Speedups re-timed {args.repeats} times (structure only, paired with the teacher)", "",
             f"Teacher {sc.baseline.median_ms:.2f} ms at batch {sc.profile.batch_size}, seq {sc.profile.seq_len}, "
             f"{sc.profile.threads} threads. `python studies/methods/retime.py {' '.join(sys.argv[1:])}`", "",
             "| row | median speedup | min | max | all |", "|---|---|---|---|---|"]
    for row in rows:
        recipe = row_recipe(row)
        built = build(recipe, sc.teacher.model, sc.method_context(recipe.seed, probe=True))
        speedups = [timing_against_teacher(built.model, sc.teacher.model, sc.profile, sc.latency_settings,
                                           sc.baseline.median_ms).speedup for _ in range(args.repeats)]
        line = (f"| {row['name']} | {statistics.median(speedups):.2f} | {min(speedups):.2f} | {max(speedups):.2f} | "
                + ", ".join(f"{s:.2f}" for s in speedups) + " |")
        print(line, flush=True)
        lines.append(line)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "retime.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
