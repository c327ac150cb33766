"""Survey-style effectiveness table: every method at a few settings, plus compounds.

Each row of rows.yaml is a recipe. The teacher (MiniLM-L6 fine-tuned on SST-2, cached),
the recovery data, the hardware profile and the latency settings come from study.yaml. Every
row goes through the same code path as a search trial (``evaluate_recipe``): latency on the
profile (batch 1, seq 128, 2 threads), recovery training, SST-2 dev accuracy, size. The
teacher's latency is measured in the same process, so speedups are same-run ratios.

Every row that exports is also deployed in ONNX Runtime in the same run: the trained model is
exported as the recipe deploys it (int8 steps redone by ONNX Runtime), timed paired with the
same PyTorch teacher, and its dev metric computed by the ONNX Runtime session (the ``ort_*``
columns). A row that cannot export (early exit's data-dependent control flow) says why in
``ort_note``. A row with ``runtime: onnxruntime`` (static int8) deploys in ONNX Runtime only.

Results are appended to results/rows.jsonl as each row finishes (a rerun skips rows already
there: nothing computed is lost); results/table.md and table.csv are rewritten at the end.

    python studies/methods/run.py --data-dir ../shared/data/glue           # all rows
    python studies/methods/run.py --data-dir ... --only int8 --only svd-128  # some rows
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
COLUMNS = ["row", "family", "methods", "size_%", "size_no_emb_%", "speedup", "latency_ms", "accuracy", "delta_pts",
           "ort_speedup", "ort_accuracy", "ort_delta_pts", "trial_s", "note"]


def row_recipe(row: dict):
    """The recipe of one rows.yaml row."""
    from autosqueeze import Recipe, Step

    return Recipe(steps=[Step(s["method"], s.get("params") or {}) for s in row["steps"]])


def ort_column(recipe, built, sc) -> dict:
    """The trained model of a PyTorch row deployed in ONNX Runtime (``runtimes.deploy``): exported once
    (int8 steps redone by ONNX Runtime), timed paired with the PyTorch teacher, dev metric from the session."""
    from autosqueeze import OnnxUnavailable, OnnxUnsupported, OrtDeployment, assess, deploy

    try:
        with deploy(built, recipe, sc.profile, runtime="onnxruntime") as graph:
            assert isinstance(graph, OrtDeployment)
            timing = graph.timing(sc.teacher.model, sc.latency_settings, sc.baseline_ms, paired=sc.paired_baseline)
            measured = assess(graph, data=sc.data, extra=sc.extra_dev, main_metric=sc.main_metric,
                              batch_size=sc.eval_batch_size, eval_threads=sc.train_threads, timing=timing,
                              baseline_ms=sc.baseline_ms)
            quantized_nodes = graph.info.quantized_nodes
    except (OnnxUnsupported, OnnxUnavailable) as err:
        return {"ort_note": f"PyTorch only: {err}".splitlines()[0]}
    return {"ort": {**measured.to_dict(), "quantized_nodes": quantized_nodes}}


def main() -> int:
    from autosqueeze import evaluate_recipe, start_study_script, with_provenance

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    p.add_argument("--study", default=str(HERE / "study.yaml"))
    p.add_argument("--rows", default=str(HERE / "rows.yaml"))
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--only", action="append", help="run only these row names")
    p.add_argument("--tables-only", action="store_true", help="rewrite table.md / table.csv from rows.jsonl")
    args = p.parse_args()
    script = start_study_script(args.study, args.data_dir)
    config = script.config
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

    sc = script.prepare()
    assert sc.baseline is not None  # measured by prepare
    machine = script.machine(sc)  # every row says where it was timed
    t_metric = sc.teacher.metrics[sc.main_metric]
    print(f"teacher: {sc.main_metric} {t_metric:.4f}, {sc.baseline.median_ms:.2f} ms "
          f"(p10 {sc.baseline.p10_ms:.2f}, p90 {sc.baseline.p90_ms:.2f})", flush=True)
    for row in todo:
        recipe = with_provenance(row_recipe(row), sc)
        if row.get("runtime"):  # the study's profile, in the runtime the row deploys with
            recipe.profile["runtime"] = row["runtime"]
        t0 = time.perf_counter()
        keep: dict = {}
        try:
            res = evaluate_recipe(recipe, sc, keep=keep).to_dict()  # the stored attributes, as the table reads them
            # per runtime: a PyTorch row gets an ONNX Runtime column; a row that deploys in ONNX Runtime
            # only (static int8) has its result as that column and no PyTorch one
            columns = {res.get("runtime", "torch"): res}
            extra = {} if "onnxruntime" in columns else ort_column(recipe, keep.pop("built"), sc)
            columns.setdefault("onnxruntime", extra.get("ort") or {})
        except Exception as err:  # a row that fails is reported, the table goes on
            print(f"{row['name']}: FAILED {type(err).__name__}: {err}", flush=True)
            continue
        torch_res, ort = columns.get("torch"), columns["onnxruntime"]
        rec = {
            "row": row["name"], "family": row.get("family", ""),
            "methods": " + ".join(s["method"] for s in row["steps"]),
            "size_%": round(res["size_pct"]["total"], 1), "size_no_emb_%": round(res["size_pct"]["non_embedding"], 1),
            "speedup": round(torch_res["speedup"], 2) if torch_res else "",
            "latency_ms": round(torch_res["latency_ms"], 2) if torch_res else "",
            "accuracy": round(100 * torch_res["metric"], 2) if torch_res else "",
            "delta_pts": round(100 * (torch_res["metric"] - t_metric), 2) if torch_res else "",
            "ort_speedup": round(ort["speedup"], 2) if ort else "",
            "ort_latency_ms": round(ort["latency_ms"], 2) if ort else "",
            "ort_accuracy": round(100 * ort["metric"], 2) if ort else "",
            "ort_delta_pts": round(100 * (ort["metric"] - t_metric), 2) if ort else "",
            "ort_latency_spread": round(ort["latency"]["spread"], 3) if ort else "",
            "trial_s": round(time.perf_counter() - t0, 1),
            "note": "; ".join(x for x in (row.get("note", ""), extra.get("ort_note", "")) if x),
            "baseline_ms": round(res["baseline_ms"], 2), "latency_spread": round(res["latency"]["spread"], 3),
            "exit_stats": res.get("exit_stats"), "recipe": recipe.to_dict()["steps"], "machine": machine,
        }
        done[row["name"]] = rec
        with done_file.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{rec['row']:28s} torch {rec['speedup']}x acc {rec['accuracy']} ({rec['delta_pts']})  "
              f"ort {rec['ort_speedup']}x acc {rec['ort_accuracy']}  size {rec['size_%']}% / "
              f"{rec['size_no_emb_%']}%  [{rec['trial_s']:.0f} s]", flush=True)
    write_tables(out, [done[r["name"]] for r in rows if r["name"] in done], sc.profile)
    return 0


def write_tables(out: Path, recs: list[dict], profile) -> None:
    """table.md / table.csv from the finished rows; the teacher's numbers come from the rows
    (each stores the teacher latency of its run and its accuracy change)."""
    if not recs:
        return
    first = next(r for r in recs if r.get("accuracy") != "" or r.get("ort_accuracy") != "")
    t_acc = (first["accuracy"] - first["delta_pts"]) if first.get("accuracy") != "" else \
        (first["ort_accuracy"] - first["ort_delta_pts"])
    base = sorted(r["baseline_ms"] for r in recs)
    header = (f"Teacher: MiniLM-L6 fine-tuned on SST-2, dev accuracy {t_acc:.2f} (872 sentences), "
              f"{base[len(base) // 2]:.2f} ms (median over runs: {base[0]:.2f}-{base[-1]:.2f}) at batch "
              f"{profile.batch_size}, seq {profile.seq_len}, {profile.threads} threads ({profile.runtime}). "
              f"Size: % of the teacher's deployed bytes, with / without embeddings. Speedup: candidate and "
              f"teacher timed alternately in the same run, median of the per-pair ratios; latency_ms = "
              f"teacher latency / speedup. Rows with the same structure share one timing. ort_*: the same "
              f"trained model exported and run in ONNX Runtime (int8 steps redone by ONNX Runtime), timed "
              f"paired with the same PyTorch fp32 teacher, accuracy from the ONNX Runtime session; empty "
              f"where the row cannot export (note says why) or deploys in ONNX Runtime only.\n\n")
    machines = {json.dumps(r["machine"]["cpu"], sort_keys=True) for r in recs if r.get("machine")}
    header += "Machine: " + ("; ".join(sorted(machines)) or "not recorded (rows from before machines were recorded)") \
        + (" (rows from different machines: compare speedups only within one machine)" if len(machines) > 1 else "") \
        + ".\n\n"
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + " |" for r in recs]
    (out / "table.md").write_text(header + "\n".join(lines) + "\n")
    with (out / "table.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(recs)


if __name__ == "__main__":
    sys.exit(main())
