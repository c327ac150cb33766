"""The headline: teacher -> elastic student -> elastic search -> finalization -> references.

    python studies/headline/run.py --data-dir ../shared/data/glue            # every stage
    python studies/headline/run.py --data-dir ... --stage references         # one stage

Every stage is cached or resumable, so a run can be split across sittings: the teacher and
the elastic student live in $AUTOSQUEEZE_CACHE (trained once), the search continues its
Optuna study (``results/headline.db``) up to the trial target, finalization stores each
candidate in the study as it finishes, and the final models are saved under
``work/final/``. The last stage times, in ONE process and interleaved call by call (batch 1,
seq 128, fixed threads), every final point against three references: the fp32 teacher in
PyTorch, the teacher's PyTorch dynamic int8, and the teacher's ONNX Runtime dynamic int8
(what a user deploys without autosqueeze). It writes ``results/<study name>.json`` and
``.md`` (``headline`` for SST-2; ``--study studies/headline/rte/study.yaml``: the same pipeline
on RTE at a reduced budget).
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
log = logging.getLogger("headline")


def trial_line(study: Any, trial: Any) -> None:
    ua = trial.user_attrs
    if ua.get("status") == "complete":
        print(f"  trial {trial.number}: {ua.get('metric', 0):.4f} at {ua.get('latency_ms', 0):.2f} ms "
              f"({ua.get('speedup', 0):.2f}x) in {ua.get('trial_s', 0):.1f} s", flush=True)


def stage_search(config: Any, data_dir: str) -> None:
    from autosqueeze import progress_printer, run_search

    summary = run_search(config, data_dir, progress=progress_printer(), callbacks=[trial_line])
    print(f"search: {summary.done} finished trials (target {summary.target}), {summary.ran} run now")


def stage_finalize(config: Any, data_dir: str, work: Path) -> None:
    from autosqueeze import progress_printer, run_finalize

    summary = run_finalize(config, data_dir, progress=progress_printer(), save_dir=work / "final")
    print(f"finalize: {summary['finalized']} candidates, Kendall tau {summary['kendall_tau']}")


# --- references ------------------------------------------------------------------------------
def stage_references(config: Any, data_dir: str, work: Path, rounds: int) -> dict[str, Any]:
    from autosqueeze import get_teacher, load_compressed, time_references

    teacher = get_teacher(config.model, config.task, data_dir, config.teacher)
    folders = sorted((work / "final").glob("trial-*"))
    finals = {p.name: load_compressed(p) for p in folders}
    from autosqueeze import get_task, load_task_data, majority_reference

    data, extra = load_task_data(get_task(config.task), teacher.tokenizer, data_dir, config.recovery,
                                 with_train=False)
    majority = float(majority_reference(data, extra)["metric"])  # the floor a point must clear
    from autosqueeze import count_macs

    seq = config.hardware.seq_len
    macs = {"teacher": count_macs(teacher.model.eval(), seq)["total"],
            **{name: count_macs(model, seq)["total"] for name, model in finals.items()}}
    with tempfile.TemporaryDirectory(prefix="headline-ort-") as tmp:
        deployed, ort_metrics = ort_deployments(config, data, extra, folders, Path(tmp))
        return {**time_references(teacher.model.eval(), config.hardware, rounds, {**finals, **deployed}),
                "ort_metrics": ort_metrics, "majority": majority, "macs": macs,
                "params": sum(p.numel() for p in teacher.model.parameters())}


def ort_deployments(config: Any, data: Any, extra: Any, folders: list[Path],
                    tmp: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Each final model as ONNX Runtime deploys it (its int8 steps redone by ONNX Runtime on the
    float graph), a deployment (``runtimes.deploy``; called, its session spins off: it is timed
    interleaved with PyTorch calls) keyed ``trial-N@onnxruntime``, and its dev metric computed by that session."""
    from autosqueeze import (
        OnnxUnsupported,
        OrtDeployment,
        deploy,
        fixed_threads,
        get_task,
        load_compressed,
        read_manifest,
    )

    task = get_task(config.task)
    models: dict[str, Any] = {}
    metrics: dict[str, dict[str, Any]] = {}
    for folder in folders:
        recipe = read_manifest(folder)["recipe"]
        graph = deploy(load_compressed(folder), recipe, config.hardware, runtime="onnxruntime",
                       float_model=load_compressed(folder, quantized=False),
                       path=tmp / f"{folder.name}.onnx")  # kept in tmp while it is timed
        assert isinstance(graph, OrtDeployment)
        try:
            quantized_nodes = graph.info.quantized_nodes
        except OnnxUnsupported as err:
            log.warning("%s does not deploy in ONNX Runtime: %s", folder.name, err)
            continue
        with fixed_threads(graph.profile.threads):
            m = graph.evaluate(data, extra, config.eval.batch_size)
        models[f"{folder.name}@onnxruntime"] = graph  # called like a model: its session spins off (timed interleaved)
        metrics[folder.name] = {"metric": m[task.main_metric], "metrics": m, "quantized_nodes": quantized_nodes}
    return models, metrics


# --- results ----------------------------------------------------------------------------------
def collect(config: Any, refs: dict[str, Any]) -> dict[str, Any]:
    import optuna

    from autosqueeze import StudyRecord, final_records, hardware_fingerprint, open_study, pareto_front, trial_records

    study = open_study(config, create=False)
    record = StudyRecord.from_study(study)
    teacher_metric = float(record.teacher_info["search_metric"])
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.user_attrs.get("status") == "complete"]
    trial_s = [float(t.user_attrs["trial_s"]) for t in done if "trial_s" in t.user_attrs]
    wall = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done
            if t.datetime_complete and t.datetime_start]
    fresh = [t for t in done if "duplicate_of" not in t.user_attrs]  # a repeated recipe reuses its result
    fresh_wall = [(t.datetime_complete - t.datetime_start).total_seconds() for t in fresh
                  if t.datetime_complete and t.datetime_start]
    finals = final_records(study)
    final_front = pareto_front(finals)
    on_front = {r.number for r in final_front}
    front = []
    for r in sorted(finals, key=lambda r: r.latency_ms or 0.0):
        size_pct = r.attrs.get("size_pct") or {}
        runtimes = deployed_in(refs, f"trial-{r.number}", r.metric, teacher_metric)
        if not runtimes:  # no saved model under work/final (e.g. finalized without save_dir): not timed here
            log.warning("trial %d has no saved final model: left out of the timed front", r.number)
            continue
        best = max(runtimes, key=lambda rt: runtimes[rt]["speedup_vs_fp32"] or 0.0)  # what it deploys with
        limit = mac_limit(refs, f"trial-{r.number}", r.recipe or {}, best, runtimes[best])
        front.append({
            "trial": r.number, "on_final_front": r.number in on_front, "recipe": r.recipe_summary,
            "recipe_steps": (r.recipe or {}).get("steps"), "runtime": best, **runtimes[best],
            "size_pct": size_pct.get("total"), "size_no_emb_pct": size_pct.get("non_embedding"),
            "fidelity": "final", "search": r.attrs.get("search"), "finalize_speedup_vs_fp32": r.speedup,
            "runtimes": runtimes, **limit,
        })
    search_front = [{"trial": r.number, "metric": r.metric, "latency_ms": r.latency_ms, "speedup": r.speedup,
                     "recipe": r.recipe_summary} for r in pareto_front(trial_records(study))]
    summary = record.finalize or {}
    elastic = elastic_info(finals)
    return {
        "study": config.name, "task": config.task, "model": config.model, "params": refs.get("params"),
        "teacher_metric": teacher_metric,
        "majority_metric": refs.get("majority"),
        "teacher_latency_ms": refs.get("teacher_fp32", {}).get("median_ms"),
        "references": {k: refs[k] for k in ("teacher_fp32", "teacher_torch_int8", "teacher_ort_int8") if k in refs},
        "trials": len(done), "median_trial_s": statistics.median(trial_s) if trial_s else None,
        "trials_per_hour": 3600 * len(wall) / sum(wall) if wall else None,
        "unique_trials": len(fresh), "median_unique_trial_s": statistics.median(fresh_wall) if fresh_wall else None,
        "unique_trials_per_hour": 3600 * len(fresh_wall) / sum(fresh_wall) if fresh_wall else None,
        "elastic_train_s": elastic.get("train_s"), "elastic_key": elastic.get("key"),
        "finalize_s": summary.get("finalize_s"), "kendall_tau": summary.get("kendall_tau"),
        "finalize_settings": summary.get("settings"), "front": front, "search_front": search_front,
        "fingerprint": hardware_fingerprint(config.hardware.threads, config.hardware.runtime),
        "timing_rounds": refs.get("rounds"), "seq_len": config.hardware.seq_len,
    }


def deployed_in(refs: dict[str, Any], name: str, torch_metric: float | None,
                teacher_metric: float) -> dict[str, dict[str, Any]]:
    """A final point's metric and paired speedups in each runtime it was timed in: PyTorch (the
    model as saved) and ONNX Runtime (its exported graph, int8 redone by ONNX Runtime, metric
    computed by that session)."""
    ort_metric = (refs.get("ort_metrics") or {}).get(name, {}).get("metric")
    out = {}
    for runtime, key, metric in (("torch", name, torch_metric), ("onnxruntime", f"{name}@onnxruntime", ort_metric)):
        timed = refs.get(key)
        if not timed or metric is None:
            continue
        out[runtime] = {"metric": metric, "delta_pts": 100 * (metric - teacher_metric),
                        **{f"speedup_vs_{ref}": (timed.get(f"speedup_vs_{ref}") or {}).get("median")
                           for ref in ("fp32", "torch_int8", "ort_int8")},
                        "speedup_spread_vs_fp32": timed.get("speedup_vs_fp32"), "latency_ms": timed.get("median_ms")}
    return out


def mac_limit(refs: dict[str, Any], name: str, recipe: dict[str, Any], runtime: str,
              timed: dict[str, Any]) -> dict[str, Any]:
    """A point against the limit its multiply-adds set: ``macs`` (one forward at the timed
    shape), ``mac_ratio`` (the teacher's over its own) and ``fraction_of_mac_ratio``: its speedup
    over the teacher at the SAME precision and runtime (an int8 point in ONNX Runtime against the
    teacher's ONNX Runtime int8, a PyTorch int8 point against the teacher's PyTorch int8, an fp32
    point against the fp32 teacher) divided by ``mac_ratio``; ``fraction_vs`` names that reference."""
    macs = (refs.get("macs") or {}).get(name)
    teacher = (refs.get("macs") or {}).get("teacher")
    if not macs or not teacher:
        return {}
    int8 = any(step.get("method") == "quantize_dynamic" for step in recipe.get("steps", []))
    from autosqueeze import get_runtime

    ref = get_runtime(runtime).int8_reference if int8 else "fp32"
    speedup = timed.get(f"speedup_vs_{ref}")
    ratio = teacher / macs
    return {"macs": macs, "mac_ratio": ratio, "fraction_vs": ref,
            "fraction_of_mac_ratio": speedup / ratio if speedup else None}


def elastic_info(finals: list[Any]) -> dict[str, Any]:
    """Key and training cost of the elastic student the final recipes slice (its elastic.json)."""
    from autosqueeze import ELASTIC_INFO, elastic_student_dir

    for r in finals:
        for step in (r.recipe or {}).get("steps", []):
            if step.get("method") == "elastic" and step.get("params", {}).get("student"):
                key = step["params"]["student"]
                info = json.loads((elastic_student_dir(key) / ELASTIC_INFO).read_text())
                return {"key": key, "train_s": info.get("train_s"), "settings": info.get("settings")}
    return {}


# what each study must reach: speedup vs the fp32 teacher within 1.0 / 3.0 points (and, where
# given, vs the teacher's ONNX Runtime int8 within 1.0 point); a study file's folder may hold a
# ``targets.yaml`` with the same keys (``studies/headline_base``: 8x / 12x / 3x vs ORT int8)
DEFAULT_TARGETS: dict[str, float] = {"within_1pt": 4.0, "within_3pt": 6.0, "within_1pt_vs_ort_int8": 0.0}


def read_targets(study_path: Path) -> dict[str, float]:
    from autosqueeze import load_yaml_file

    path = study_path.resolve().parent / "targets.yaml"
    if not path.is_file():
        return dict(DEFAULT_TARGETS)
    raw = load_yaml_file(path) or {}
    unknown = set(raw) - set(DEFAULT_TARGETS)
    if unknown or not all(isinstance(v, (int, float)) and v >= 0 for v in raw.values()):
        raise SystemExit(f"{path}: keys {sorted(DEFAULT_TARGETS)} with numbers >= 0 expected, got {raw}")
    return {**DEFAULT_TARGETS, **{k: float(v) for k, v in raw.items()}}


def deployments(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every final point in every runtime it was timed in (a PyTorch int8 model and its ONNX Runtime
    graph are two deployments of the same point, each with its own metric and paired speedups)."""
    out = []
    for p in result["front"]:
        for runtime, d in (p.get("runtimes") or {p["runtime"]: p}).items():
            out.append({"trial": p["trial"], "runtime": runtime, "delta_pts": d["delta_pts"],
                        **{k: d.get(k) for k in ("speedup_vs_fp32", "speedup_vs_torch_int8", "speedup_vs_ort_int8")}})
    return out


def targets(result: dict[str, Any]) -> list[str]:
    """One line per target, ``reached`` or ``not reached``, with the fastest deployment in reach (any
    final point in any runtime it was timed in)."""
    pts = deployments(result)
    goal = result.get("targets") or DEFAULT_TARGETS
    t1, t3, vs_ort = goal["within_1pt"], goal["within_3pt"], goal["within_1pt_vs_ort_int8"]
    a = [p for p in pts if p["delta_pts"] >= -1.0 and (p["speedup_vs_fp32"] or 0) >= t1
         and (p["speedup_vs_ort_int8"] or 0) >= vs_ort]
    b = [p for p in pts if p["delta_pts"] >= -3.0 and (p["speedup_vs_fp32"] or 0) >= t3]
    best1 = max((p for p in pts if p["delta_pts"] >= -1.0), key=lambda p: p["speedup_vs_fp32"] or 0, default=None)
    best3 = max((p for p in pts if p["delta_pts"] >= -3.0), key=lambda p: p["speedup_vs_fp32"] or 0, default=None)

    def show(p: dict[str, Any] | None) -> str:
        return "none" if p is None else (f"trial {p['trial']} in {p['runtime']}: {p['speedup_vs_fp32']:.2f}x vs fp32, "
                                         f"{p['speedup_vs_ort_int8']:.2f}x vs ORT int8, {p['delta_pts']:+.2f} pts")

    vs = f" and >= {vs_ort:g}x vs ORT int8" if vs_ort else ""
    return [f"- >= {t1:g}x within 1.0 pt{vs}: {'reached' if a else 'not reached'} "
            f"(fastest within 1.0 pt: {show(best1)})",
            f"- >= {t3:g}x within 3.0 pts: {'reached' if b else 'not reached'} (fastest within 3.0 pts: {show(best3)})"]


def write_markdown(result: dict[str, Any], path: Path) -> None:
    fp = result["fingerprint"]
    task = str(result["task"]).upper()
    lines = [
        f"# {result['study']}: {result['model']} model on {task}, elastic search, finalized front", "",
        f"Machine: {fp.get('cpu', {}).get('model', fp.get('cpu'))}; threads {result['fingerprint'].get('threads')}.",
        f"Teacher: {100 * result['teacher_metric']:.2f}% {task} dev; fp32 PyTorch "
        f"{result['teacher_latency_ms']:.2f} ms at batch 1, seq 128.",
        f"Search: {result['trials']} elastic trials, median {result['median_trial_s']:.1f} s, "
        f"{result['trials_per_hour']:.0f} trials/hour ({result['unique_trials']} distinct recipes: median "
        f"{result['median_unique_trial_s']:.1f} s, {result['unique_trials_per_hour']:.0f}/hour; a recipe proposed "
        f"again reuses its result); elastic student trained once in "
        f"{(result['elastic_train_s'] or 0) / 60:.1f} min; finalization {(result['finalize_s'] or 0) / 60:.1f} min; "
        f"Kendall tau (search vs final metric) {result['kendall_tau']}.", "",
        f"Majority-class floor: {100 * (result.get('majority_metric') or 0):.2f}%"
        + (" (the teacher is within 1 point of it: its metric says little)"
           if result.get("majority_metric") is not None and result["teacher_metric"] - result["majority_metric"] < 0.01
           else "") + ".",
        "Each point runs in the runtime where it is fastest: PyTorch (the saved model) or ONNX Runtime (its "
        "exported graph, int8 redone by ONNX Runtime, metric computed by that session); both are in the JSON.", "",
        "References (paired with the fp32 teacher, same process): " + ", ".join(
            f"{k} {v['speedup_vs_fp32']['median']:.2f}x" for k, v in result["references"].items()
            if "speedup_vs_fp32" in v), "",
        "| trial | final front | recipe | runtime | metric | Δ pts | ×fp32 | ×torch int8 | ×ORT int8 | ms | size % "
        "| size % no emb | MACs ratio | share of it reached | PyTorch: metric, ×fp32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in result["front"]:
        pt = p.get("runtimes", {}).get("torch") or {}
        lines.append(f"| {p['trial']} | {'yes' if p['on_final_front'] else ''} | {p['recipe']} | {p['runtime']} | "
                     f"{100 * p['metric']:.2f} | {p['delta_pts']:+.2f} | {p['speedup_vs_fp32'] or 0:.2f} | "
                     f"{p['speedup_vs_torch_int8'] or 0:.2f} | {p['speedup_vs_ort_int8'] or 0:.2f} | "
                     f"{p['latency_ms']:.2f} | {p['size_pct'] or 0:.1f} | {p['size_no_emb_pct'] or 0:.1f} | "
                     f"{p.get('mac_ratio') or 0:.2f} | {p.get('fraction_of_mac_ratio') or 0:.2f} "
                     f"(vs {p.get('fraction_vs', '-')}) | "
                     f"{100 * pt.get('metric', 0):.2f}, {pt.get('speedup_vs_fp32') or 0:.2f} |")
    search = result.get("search_front") or []
    if search:  # what the search saw: raw slices, no training, timed in the study's runtime
        lines += ["", f"Search-time front ({len(search)} points: slices of the elastic student, no training per "
                  "trial, speedup paired with the fp32 teacher in the search):", "",
                  "| trial | recipe | metric | Δ pts | ×fp32 |", "|---|---|---|---|---|"]
        for q in sorted(search, key=lambda q: q["latency_ms"] or 0.0):
            lines.append(f"| {q['trial']} | {q['recipe']} | {100 * q['metric']:.2f} | "
                         f"{100 * (q['metric'] - result['teacher_metric']):+.2f} | {q['speedup'] or 0:.2f} |")
    lines += ["", "MACs ratio: the teacher's multiply-adds over the point's (one forward, batch 1, seq "
              f"{result.get('seq_len', 128)}); share of it reached: the point's speedup over the teacher at the "
              "same precision and runtime, divided by that ratio (what embedding lookups, LayerNorm, softmax, GELU and "
              "the per-call overhead, which do not shrink with the matrices, keep back).", "",
              "Targets:", *targets(result), "",
              "Reproduce: `python studies/headline/run.py --data-dir ../shared/data/glue "
              f"--study {result.get('study_file')}`", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="GLUE folder (glue_data layout)")
    p.add_argument("--study", default=str(HERE / "study.yaml"))
    p.add_argument("--stage", choices=("all", "search", "finalize", "references", "markdown"), default="all",
                   help="markdown: rewrite results/<name>.md from results/<name>.json (no timing)")
    p.add_argument("--rounds", type=int, default=300, help="interleaved timing rounds in the reference stage")
    args = p.parse_args(argv)
    from autosqueeze import start_study_script

    config = start_study_script(args.study, args.data_dir).config
    work = Path(args.study).resolve().parent / "work"
    stages = ("search", "finalize", "references") if args.stage == "all" else (args.stage,)
    t0 = time.time()
    if "search" in stages:
        stage_search(config, args.data_dir)
    if "finalize" in stages:
        stage_finalize(config, args.data_dir, work)
    if "markdown" in stages:
        out = Path(args.study).resolve().parent / "results" / f"{config.name}.json"
        if not out.is_file():
            raise SystemExit(f"{out}: no results yet; run the references stage first")
        result = json.loads(out.read_text())
        result["target_lines"] = targets(result)
        out.write_text(json.dumps(result, indent=2, default=str))
        write_markdown(result, out.with_suffix(".md"))
    if "references" in stages:
        refs = stage_references(config, args.data_dir, work, args.rounds)
        result = collect(config, refs)
        result["targets"] = read_targets(Path(args.study))
        result["target_lines"] = targets(result)
        study_file = Path(args.study).resolve()
        result["study_file"] = str(study_file.relative_to(HERE.parent.parent)
                                   if study_file.is_relative_to(HERE.parent.parent) else study_file)
        out = Path(args.study).resolve().parent / "results"
        out.mkdir(exist_ok=True)
        (out / f"{config.name}.json").write_text(json.dumps(result, indent=2, default=str))
        write_markdown(result, out / f"{config.name}.md")
        print((out / f"{config.name}.md").read_text())
    print(f"done in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
