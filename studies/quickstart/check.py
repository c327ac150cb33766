"""The quickstart, end to end, as a user runs it — timed, then checked.

1. ``autosqueeze search`` on a fresh copy of study.yaml (fresh teacher cache by default, so
   the teacher's fine-tuning is part of the time: the README's "under 10 minutes" claim);
2. ``autosqueeze report``;
3. ``autosqueeze export`` at two latency budgets taken from the Pareto front (just above the
   fastest point, and just above the middle point);
4. ``autosqueeze apply`` of each recipe;
5. ``autosqueeze.load`` of each saved folder in this process, evaluated on the whole dev set.

Writes results/check.md (and check.json): the wall time of every command, and per recipe the
recorded (search), reproduced (apply) and loaded-back dev metric, the recorded and reproduced
latency with the recorded p10-p90, and the size.

    python studies/quickstart/check.py --data-dir ../shared/data/glue
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from autosqueeze import StudyRecord

HERE = Path(__file__).resolve().parent


def run(cmd: list[str], env: dict[str, str], log: Path) -> float:
    """Run one CLI command (output to ``log``), return its wall time; stop on failure."""
    t0 = time.perf_counter()
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    secs = time.perf_counter() - t0
    print(f"{secs:7.1f} s  {' '.join(cmd[2:])}", flush=True)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log}")
    return secs


def study_front(study_file: Path) -> tuple[list, StudyRecord]:
    """The front as the report and export see it (the references and the floor in it), and the
    study's record (teacher, references)."""
    import optuna

    from autosqueeze import Baselines, StudyRecord, load_study_config, pareto_front, trial_records

    config = load_study_config(study_file)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=config.name, storage=config.storage_url)
    record = StudyRecord.from_study(study)
    return pareto_front(trial_records(study), Baselines.from_record(record)), record


def budgets_from_front(front: list) -> list[float]:
    picks = [front[0], front[len(front) // 2]] if len(front) > 1 else front
    return [round(p.latency_ms * 1.02, 3) for p in picks]


def loaded_back_metric(folder: Path, data_dir: str) -> float:
    import torch

    import autosqueeze
    from autosqueeze import TrainSettings, evaluate, get_task, load_task_data, load_tokenizer

    manifest = json.loads((folder / "autosqueeze.json").read_text())
    task = get_task(manifest["recipe"]["task"])
    model = autosqueeze.load(folder)
    data, extra = load_task_data(task, load_tokenizer(str(folder)), data_dir,
                                 TrainSettings(steps=0, max_seq_len=64), None, with_train=False)
    torch.set_num_threads(2)
    return evaluate(model, data, extra, 128)[task.main_metric]


def main() -> int:
    from autosqueeze import resolve_data_dir

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    p.add_argument("--work", default=str(HERE / "work"), help="scratch folder (study DB, recipes, models)")
    p.add_argument("--cache", help="AUTOSQUEEZE_CACHE (default: a fresh one in --work, so the teacher is trained)")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--reuse-search", type=float, metavar="SECONDS",
                   help="keep --work's finished search (that took SECONDS) and redo the steps after it")
    args = p.parse_args()
    data_dir = resolve_data_dir(args.data_dir)
    if data_dir is None:
        raise SystemExit("no GLUE folder: give --data-dir or set $AUTOSQUEEZE_GLUE_DIR")
    work, out = Path(args.work).resolve(), Path(args.out)
    if work.exists() and not args.reuse_search:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load((HERE / "study.yaml").read_text())
    if (HERE / raw["search_space"]).is_file():  # a path beside the study file; else a built-in space's name
        raw["search_space"] = str((HERE / raw["search_space"]).resolve())
    study = work / "study.yaml"
    study.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "AUTOSQUEEZE_CACHE": str(Path(args.cache).resolve() if args.cache else work / "cache"),
           "AUTOSQUEEZE_GLUE_DIR": str(Path(data_dir).resolve())}
    cli = [sys.executable, "-m", "autosqueeze.cli"]
    log = work / "commands.log"
    times = {"search": args.reuse_search or run([*cli, "search", str(study)], env, log),
             "report": run([*cli, "report", str(study)], env, log)}
    recipes = []
    front, record = study_front(study)
    for i, budget in enumerate(budgets_from_front(front)):
        recipe, model = work / f"recipe_{i}.yaml", work / f"model_{i}"
        times[f"export {budget} ms"] = run([*cli, "export", str(study), "--latency-budget", str(budget),
                                            "-o", str(recipe)], env, log)
        times[f"apply recipe_{i}"] = run([*cli, "apply", str(recipe), "-o", str(model)], env, log)
        manifest = json.loads((model / "autosqueeze.json").read_text())
        rec, rep = manifest["measured"]["recorded"], manifest["measured"]["reproduced"]
        recipes.append({
            "budget_ms": budget, "trial": rec.get("trial"),
            "methods": " + ".join(s["method"] for s in manifest["recipe"]["steps"]) or "teacher",
            "metric_recorded": rec["metric"], "metric_reproduced": rep["metric"],
            "metric_loaded_back": loaded_back_metric(model, data_dir),
            "latency_recorded_ms": rec["latency_ms"], "latency_reproduced_ms": rep["latency_ms"],
            "recorded_p10_p90_ms": [rec["latency"]["p10_ms"], rec["latency"]["p90_ms"]],
            "speedup_recorded": rec["speedup"], "speedup_reproduced": rep["speedup"],
            "size_bytes_recorded": rec["size"]["total_bytes"], "size_bytes_reproduced": rep["size"]["total_bytes"],
            "onnx_metric": manifest.get("onnx", {}).get("metric"),
            "weights_file_bytes": (model / "model.safetensors").stat().st_size,
        })
    teacher = record.teacher_info
    refs = {k: {"metric": record.reference(k).get("metric"), "speedup": record.reference(k).get("speedup")}
            for k in ("int8_baseline", "ort_int8_baseline", "majority_baseline") if record.reference(k)}
    points = [{"trial": p.number, "methods": " + ".join(p.methods), "metric": p.metric, "speedup": p.speedup}
              for p in front]
    from autosqueeze import hardware_fingerprint

    (out / "check.json").write_text(json.dumps({
        "times_s": times, "recipes": recipes, "teacher": {"metric": teacher.get("search_metric"),
                                                          "training": teacher.get("training")},
        "references": refs, "front": points, "fingerprint": hardware_fingerprint(2, "torch")}, indent=2))
    lines = ["# Quickstart, end to end", "", "`python studies/quickstart/check.py " + " ".join(sys.argv[1:]) + "`", "",
             "| command | wall s |", "|---|---|", *(f"| {k} | {v:.0f} |" for k, v in times.items()),
             f"| search + report | {times['search'] + times['report']:.0f} |", "",
             "| recipe | budget ms | trial | methods | metric recorded / reproduced / loaded back | latency ms "
             "recorded (p10-p90) / reproduced | speedup recorded / reproduced | size equal | weights file / "
             "reported size |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(recipes):
        lines.append(
            f"| recipe_{i} | {r['budget_ms']} | {r['trial']} | {r['methods']} | {r['metric_recorded']:.4f} / "
            f"{r['metric_reproduced']:.4f} / {r['metric_loaded_back']:.4f} | {r['latency_recorded_ms']:.2f} "
            f"({r['recorded_p10_p90_ms'][0]:.2f}-{r['recorded_p10_p90_ms'][1]:.2f}) / {r['latency_reproduced_ms']:.2f} "
            f"| {r['speedup_recorded']:.2f} / {r['speedup_reproduced']:.2f} | "
            f"{r['size_bytes_recorded'] == r['size_bytes_reproduced']} | "
            f"{r['weights_file_bytes'] / r['size_bytes_reproduced']:.3f} |")
    lines += ["", f"Teacher: {100 * (teacher.get('search_metric') or 0):.2f} (training: {teacher.get('training')}); "
              "references: " + ", ".join(f"{k} {100 * (v['metric'] or 0):.2f}"
                                         + (f" at {v['speedup']:.2f}x" if v.get("speedup") else "")
                                         for k, v in refs.items()), "",
              "| front point (trial) | methods | metric | speedup |", "|---|---|---|---|",
              *(f"| {p['trial']} | {p['methods']} | {100 * p['metric']:.2f} | {p['speedup']:.2f} |" for p in points)]
    (out / "check.md").write_text("\n".join(lines) + "\n")
    print((out / "check.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
