"""Survey-style effectiveness table: every method at a few settings, plus compounds.

Each row of rows.yaml is a recipe. The teacher (MiniLM-L6 fine-tuned on SST-2, cached),
the recovery data, the hardware profile and the latency settings come from study.yaml. Every
row goes through the same code path as a search trial (``evaluate_recipe``): latency on the
profile (batch 1, seq 128, 2 threads), recovery training, SST-2 dev accuracy, size. The
teacher's latency is measured in the same process, so speedups are same-run ratios.

Results are appended to results/rows.jsonl as each row finishes (a rerun skips rows already
there: nothing computed is lost); results/table.md and table.csv are rewritten at the end.

    python studies/methods/run.py --data-dir ../shared/data/glue           # all rows
    python studies/methods/run.py --data-dir ... --only int8 --only svd-128  # some rows
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
COLUMNS = ["row", "family", "methods", "size_%", "size_no_emb_%", "speedup", "latency_ms", "accuracy", "delta_pts",
           "trial_s", "note"]


def row_recipe(row: dict):
    """The recipe of one rows.yaml row."""
    from autosqueeze import Recipe, Step

    return Recipe(steps=[Step(s["method"], s.get("params") or {}) for s in row["steps"]])


def main() -> int:
    from autosqueeze import load_study_config, resolve_data_dir
    from autosqueeze.search.objective import evaluate_recipe, with_provenance
    from autosqueeze.search.study import prepare

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    p.add_argument("--study", default=str(HERE / "study.yaml"))
    p.add_argument("--rows", default=str(HERE / "rows.yaml"))
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--only", action="append", help="run only these row names")
    p.add_argument("--tables-only", action="store_true", help="rewrite table.md / table.csv from rows.jsonl")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    config = load_study_config(args.study)
    rows = yaml.safe_load(Path(args.rows).read_text())["rows"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done_file = out / "rows.jsonl"
    done = {json.loads(line)["row"]: json.loads(line) for line in done_file.read_text().splitlines()} \
        if done_file.exists() else {}
    if args.tables_only:
        write_tables(out, [done[r["name"]] for r in rows if r["name"] in done], config.hardware)
        return 0
    todo = [r for r in rows if (not args.only or r["name"] in args.only) and r["name"] not in done]
    print(f"{len(todo)} rows to run ({len(done)} already in {done_file})", flush=True)

    sc = prepare(config, resolve_data_dir(args.data_dir or config.data_dir), None)
    t_metric = sc.teacher.metrics[sc.main_metric]
    print(f"teacher: {sc.main_metric} {t_metric:.4f}, {sc.baseline.median_ms:.2f} ms "
          f"(p10 {sc.baseline.p10_ms:.2f}, p90 {sc.baseline.p90_ms:.2f})", flush=True)
    for row in todo:
        recipe = with_provenance(row_recipe(row), sc)
        t0 = time.perf_counter()
        try:
            res = evaluate_recipe(recipe, sc)
        except Exception as err:  # a row that fails is reported, the table goes on
            print(f"{row['name']}: FAILED {type(err).__name__}: {err}", flush=True)
            continue
        rec = {
            "row": row["name"], "family": row.get("family", ""), "methods": " + ".join(s["method"] for s in row["steps"]),
            "size_%": round(res["size_pct"]["total"], 1), "size_no_emb_%": round(res["size_pct"]["non_embedding"], 1),
            "speedup": round(res["speedup"], 2), "latency_ms": round(res["latency_ms"], 2),
            "accuracy": round(100 * res["metric"], 2), "delta_pts": round(100 * (res["metric"] - t_metric), 2),
            "trial_s": round(time.perf_counter() - t0, 1), "note": row.get("note", ""),
            "baseline_ms": round(res["baseline_ms"], 2), "latency_spread": round(res["latency"]["spread"], 3),
            "exit_stats": res.get("exit_stats"), "recipe": recipe.to_dict()["steps"],
        }
        done[row["name"]] = rec
        with done_file.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{rec['row']:28s} {rec['speedup']:5.2f}x  acc {rec['accuracy']:6.2f} ({rec['delta_pts']:+.2f})  "
              f"size {rec['size_%']:5.1f}% / {rec['size_no_emb_%']:5.1f}%  [{rec['trial_s']:.0f} s]", flush=True)
    write_tables(out, [done[r["name"]] for r in rows if r["name"] in done], sc.profile)
    return 0


def write_tables(out: Path, recs: list[dict], profile) -> None:
    """table.md / table.csv from the finished rows; the teacher's numbers come from the rows
    (each stores the teacher latency of its run and its accuracy change)."""
    if not recs:
        return
    t_acc = recs[0]["accuracy"] - recs[0]["delta_pts"]
    base = sorted(r["baseline_ms"] for r in recs)
    header = (f"Teacher: MiniLM-L6 fine-tuned on SST-2, dev accuracy {t_acc:.2f} (872 sentences), "
              f"{base[len(base) // 2]:.2f} ms (median over runs: {base[0]:.2f}-{base[-1]:.2f}) at batch "
              f"{profile.batch_size}, seq {profile.seq_len}, {profile.threads} threads ({profile.runtime}). "
              f"Size: % of the teacher's deployed bytes, with / without embeddings. Speedup: candidate and "
              f"teacher timed alternately in the same run, median of the per-pair ratios; latency_ms = "
              f"teacher latency / speedup. Rows with the same structure share one timing.\n\n")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + " |" for r in recs]
    (out / "table.md").write_text(header + "\n".join(lines) + "\n")
    with (out / "table.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(recs)


if __name__ == "__main__":
    sys.exit(main())
