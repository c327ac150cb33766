"""Runtime as a search dimension, end to end on MiniLM-L6 / SST-2: search → export → apply → bench.

    python studies/runtime_choice/run.py --data-dir ../shared/data/glue

1. ``autosqueeze search study.yaml``: the headline's elastic space with ``hardware.runtimes:
   [torch, onnxruntime]``; every trial picks its runtime, its dev metric comes from that runtime's
   model and its latency is paired with the fp32 PyTorch teacher (resumes a stopped study).
2. The Pareto front, and which runtime each point deploys with.
3. For the fastest and the most accurate ONNX Runtime points on the front: ``autosqueeze export
   --trial N``, ``autosqueeze apply`` (writes ``model.onnx`` beside the safetensors), then
   ``autosqueeze bench TEACHER FOLDER`` in a fresh process (the saved artifact timed on its own,
   in its runtime, against the teacher folder in the same process). The bench speedup is compared
   with the trial's paired speedup and the p10–p90 of its pair ratios.

Writes results/runtime_choice.json and .md (machine fingerprint included). Run it on a quiet
machine: every number here is a timing.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def front_points(study: Any) -> list[dict[str, Any]]:
    """The study's Pareto front (complete trials), fastest first, with the runtime each deploys with."""
    out = []
    for t in sorted(study.best_trials, key=lambda t: t.values[1]):
        ua = t.user_attrs
        if ua.get("status") != "complete":
            continue
        out.append({"trial": t.number, "runtime": ua.get("runtime", "torch"), "metric": ua.get("metric"),
                    "latency_ms": ua.get("latency_ms"), "speedup": ua.get("speedup"),
                    "speedup_spread": ua.get("speedup_spread"), "recipe": summary(ua.get("recipe"))})
    return out


def summary(recipe: dict[str, Any] | None) -> str:
    """``elastic(layers=3, ...) + quantize_dynamic()``: a recipe's steps in one line."""
    steps = (recipe or {}).get("steps") or []
    parts = []
    for s in steps:
        params = ", ".join(f"{k}={v}" for k, v in (s.get("params") or {}).items() if k != "student")
        parts.append(f"{s['method']}({params})")
    return " + ".join(parts)


def chosen(front: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fastest and the most accurate ONNX Runtime points of the front (one if they coincide)."""
    ort = [p for p in front if p["runtime"] == "onnxruntime"]
    if not ort:
        return []
    picks = [min(ort, key=lambda p: p["latency_ms"]), max(ort, key=lambda p: p["metric"])]
    return [p for i, p in enumerate(picks) if p["trial"] not in {q["trial"] for q in picks[:i]}]


def bench_speedup(output: str, folder: Path) -> dict[str, Any]:
    """The candidate's row of ``autosqueeze bench`` output (model, runtime, median, p10-p90, speedup)."""
    for line in output.splitlines():
        cells = line.split()
        if len(cells) >= 5 and str(folder).endswith(cells[0]) and cells[4].endswith("x"):
            return {"runtime": cells[1], "median_ms": float(cells[2]), "speedup": float(cells[4].rstrip("x"))}
    raise RuntimeError(f"no bench row for {folder} in:\n{output}")


def cli(*args: str) -> str:
    """Run ``autosqueeze ARGS`` in a fresh process; its output (fails loudly)."""
    done = subprocess.run([sys.executable, "-m", "autosqueeze.cli", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"autosqueeze {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def main() -> int:
    import optuna

    from autosqueeze import StudyRecord, hardware_fingerprint, start_study_script

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    p.add_argument("--study", default=str(HERE / "study.yaml"))
    p.add_argument("--repeats", type=int, default=300, help="bench repeats per model")
    args = p.parse_args()
    script = start_study_script(args.study, args.data_dir)
    config, data_dir = script.config, script.data_dir
    work, results = HERE / "work", HERE / "results"
    work.mkdir(exist_ok=True)
    results.mkdir(exist_ok=True)

    data_args = ["--data-dir", data_dir] if data_dir else []  # none: $AUTOSQUEEZE_GLUE_DIR, as the CLI reads it
    print(cli("search", args.study, *data_args)[-2000:], flush=True)
    study = optuna.load_study(study_name=config.name, storage=config.storage_url)
    trials = [t for t in study.trials if t.user_attrs.get("status") == "complete"]
    front = front_points(study)
    record = StudyRecord.from_study(study)
    teacher_dir = record.teacher_info["path"]
    hw = config.hardware
    checks = []
    for point in chosen(front):
        n = point["trial"]
        recipe, folder = work / f"trial-{n}.yaml", work / f"trial-{n}"
        if not recipe.exists():
            cli("export", args.study, "-o", str(recipe), "--trial", str(n))
        if not (folder / "autosqueeze.json").exists():
            cli("apply", str(recipe), "-o", str(folder), *data_args)
        manifest = json.loads((folder / "autosqueeze.json").read_text())
        out = cli("bench", teacher_dir, str(folder), "--threads", str(hw.threads), "--batch-size",
                  str(hw.batch_size), "--seq-len", str(hw.seq_len), "--repeats", str(args.repeats))
        bench = bench_speedup(out, folder)
        spread = point.get("speedup_spread") or {}
        checks.append({
            **point, "onnx_file": (manifest.get("onnx") or {}).get("file"), "bench": bench,
            "apply_metric_equal": (manifest.get("measured") or {}).get("comparison", {}).get("metric_equal"),
            "apply_latency_ratio": (manifest.get("measured") or {}).get("comparison", {}).get("latency_ratio"),
            "bench_within_spread": bool(spread) and spread["p10"] <= bench["speedup"] <= spread["p90"],
            "bench_vs_search": bench["speedup"] / point["speedup"],
        })
        print(f"trial {n} ({point['runtime']}): search {point['speedup']:.2f}x "
              f"[{spread.get('p10', float('nan')):.2f}-{spread.get('p90', float('nan')):.2f}], "
              f"bench {bench['speedup']:.2f}x in {bench['runtime']}", flush=True)
    by_runtime = {rt: sum(1 for t in trials if t.user_attrs.get("runtime") == rt) for rt in config.search_runtimes}
    result = {
        "study": config.name, "trials": len(trials), "trials_by_runtime": by_runtime,
        "front": front, "front_by_runtime": {rt: sum(1 for p in front if p["runtime"] == rt)
                                             for rt in config.search_runtimes},
        "teacher_metric": record.teacher_info.get("search_metric"),
        "teacher_latency_ms": record.teacher_info.get("latency_ms"),
        "reproductions": checks, "bench_repeats": args.repeats,
        "fingerprint": hardware_fingerprint(hw.threads, hw.runtime),
    }
    (results / "runtime_choice.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    write_markdown(result, results / "runtime_choice.md")
    print((results / "runtime_choice.md").read_text())
    return 0


def write_markdown(result: dict[str, Any], path: Path) -> None:
    fp = result["fingerprint"]
    by_runtime = ", ".join(f"{k}: {v}" for k, v in result["trials_by_runtime"].items())
    lines = [f"# Runtime as a search dimension: {result['study']}", "",
             f"Machine: {fp.get('cpu', fp) if isinstance(fp, dict) else fp}", "",
             f"{result['trials']} complete trials ({by_runtime}); "
             f"teacher {100 * (result['teacher_metric'] or 0):.2f}% at {result['teacher_latency_ms']:.2f} ms.", "",
             "## Pareto front", "", "| trial | runtime | accuracy | speedup (p10-p90 of pairs) | recipe |",
             "|---|---|---|---|---|"]
    for p in result["front"]:
        sp = p.get("speedup_spread") or {}
        spread = f" ({sp['p10']:.2f}-{sp['p90']:.2f})" if sp else ""
        lines.append(f"| {p['trial']} | {p['runtime']} | {100 * p['metric']:.2f} | {p['speedup']:.2f}x{spread} | "
                     f"{p.get('recipe') or ''} |")
    lines += ["", "## apply + bench of ONNX Runtime points", "",
              "| trial | search speedup (p10-p90) | bench speedup (runtime) | within spread | apply metric equal |",
              "|---|---|---|---|---|"]
    for c in result["reproductions"]:
        sp = c.get("speedup_spread") or {}
        lines.append(f"| {c['trial']} | {c['speedup']:.2f}x ({sp.get('p10', 0):.2f}-{sp.get('p90', 0):.2f}) | "
                     f"{c['bench']['speedup']:.2f}x ({c['bench']['runtime']}) | {c['bench_within_spread']} | "
                     f"{c['apply_metric_equal']} |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
