"""Issue 25: the deployed ONNX Runtime graph at this machine's best.

    python studies/deploy_graph/run.py --processes 3 --pause-others            # the study
    python studies/deploy_graph/run.py --quick --out /tmp/deploy_graph_quick  # a sanity run

For the teacher (the packaged MiniLM-L6, an untrained head — or ``--teacher DIR``, a fine-tuned
teacher folder) and the headline's final structures (``studies/headline/results/headline.json``:
each ``elastic`` structure sliced out of the teacher with the project's builder, untrained
slices: a structure costs the same whatever its weights), every deploy variant of
:func:`autosqueeze.runtimes.deploy_variants.candidate_variants` is built once (int8 by the
recipe's ``quantize_dynamic``), plus the plain export (TorchScript exporter on the model as it
runs + ``onnxruntime.quantization.quantize_dynamic`` with its defaults, every MatMul) and
today's path (the dynamo exporter: ``legacy``). Each variant's predictions on real SST-2 dev
sentences are compared with the reference (the default variant): the agreement must be within
int8 noise (the reference's own agreement with the PyTorch model).

Then ``--processes`` separate processes, one after another, each time every model's variants
round-robin with the fp32 PyTorch teacher (batch 1, seq 128, ``--threads`` threads, sessions
with spinning off, the order rotated every round; ``--rounds`` rounds after 3 warm-up
rounds): a variant's speedup is the median over rounds of teacher / variant, and its ratio to
the plain export and to today's path the median of the same-round ratios. ``--pause-others``
stops other busy Python processes (SIGSTOP) around each block of 5 rounds and continues them
(SIGCONT) right after (see pause.py).

Writes ``results/deploy_graph.json`` and ``.md``: the machine fingerprint, per model and
variant the speedup (median over processes, and its range), the ratio to the plain export and
to today's path, the dev agreement, the multiply-add count (Linear + attention matmuls at seq
128) and, per structure, the fraction of its multiply-add ratio that its int8 speedup over the
int8 teacher (same variant) reaches; and the chosen variant: the fastest (geometric mean of the
speedups over all models) among those that match on every model.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
HEADLINE = ROOT / "studies" / "headline" / "results" / "headline.json"
DEV = ROOT.parent / "shared" / "data" / "glue" / "SST-2" / "dev.tsv"
PLAIN = "plain"  # TorchScript + quantize_dynamic defaults, every MatMul


def load_teacher(teacher_dir: str | None) -> tuple[Any, Any]:
    """(fp32 teacher, tokenizer)."""
    from autosqueeze import load_classifier, load_tokenizer

    if teacher_dir:
        from autosqueeze import load_teacher as load

        t = load(teacher_dir)
        return t.model.eval(), load_tokenizer(teacher_dir)
    return load_classifier("default", 2).eval(), load_tokenizer("default")


def structures(headline: Path) -> list[dict[str, Any]]:
    """The headline's final points: name and elastic params."""
    data = json.loads(headline.read_text())
    out = []
    for point in data.get("front", []):
        steps = point.get("recipe_steps") or []
        el = next((s["params"] for s in steps if s["method"] == "elastic"), None)
        if el is None:
            continue
        name = f"{el['layers']}L-{el['heads_keep']}H-ffn{el['ffn_keep']:.3g}"
        out.append({"name": name, "elastic": {k: el[k] for k in ("layers", "heads_keep", "ffn_keep")},
                    "claimed": point.get("speedup_vs_fp32")})
    return out


def build_models(teacher: Any, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model: name, float model, deployed (PyTorch int8) model, recipe."""
    from autosqueeze import ElasticConfig, MethodContext, Recipe, Step, choose_subnet, get_adapter, replay

    q = Step("quantize_dynamic", {})
    teacher_recipe = Recipe(steps=[q])
    models = [{"name": "teacher", "float": teacher, "recipe": teacher_recipe,
               "deployed": replay(teacher_recipe, teacher, [{}]), "claimed": None}]
    adapter = get_adapter(teacher)
    for p in points:
        cfg = ElasticConfig(student="", **p["elastic"])
        sub = choose_subnet(teacher, cfg, MethodContext(adapter=adapter))
        recipe = Recipe(steps=[Step("elastic", {"student": "untrained", **p["elastic"]}), q])
        decisions = [{"kept_layers": list(sub.layers), "heads": list(sub.heads), "neurons": list(sub.neurons)}, {}]
        float_model = replay(recipe, teacher, decisions, part="float").eval()
        deployed = replay(recipe, float_model, decisions, part="quantize").eval()
        models.append({"name": p["name"], "float": float_model, "recipe": recipe, "deployed": deployed,
                       "claimed": p["claimed"], "elastic": p["elastic"]})
    return models


def dev_batches(tokenizer: Any, n: int, batch_size: int = 32) -> tuple[list[dict[str, Any]], list[int]]:
    with open(DEV, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    rows = rows[:n]
    batches = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        enc = tokenizer([r[0] for r in chunk], padding=True, truncation=True, max_length=128, return_tensors="pt")
        batches.append({k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")})
    return batches, [int(r[1]) for r in rows]


def build_all(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Export every variant of every model into ``work``; agreement and MACs. Returns the manifest."""
    import numpy as np

    from autosqueeze import (
        HardwareProfile,
        build_variant,
        candidate_variants,
        count_macs,
        make_session,
        ort_dynamic_int8_session,
        predictions,
        torch_predictions,
    )

    profile = HardwareProfile(threads=args.threads, batch_size=1, seq_len=128, runtime="onnxruntime")
    teacher, tokenizer = load_teacher(args.teacher)
    points = structures(Path(args.headline))
    if args.structures != "all":
        keep = {int(i) for i in args.structures.split(",")}
        points = [p for i, p in enumerate(points) if i in keep]
    models = build_models(teacher, points)
    batches, labels = dev_batches(tokenizer, args.dev_sentences) if DEV.is_file() else ([], [])
    y = np.asarray(labels)
    cands = candidate_variants()
    if args.quick:
        cands = cands[:5]
    manifest: dict[str, Any] = {"models": [], "threads": args.threads, "dev_sentences": len(labels),
                                "teacher": args.teacher or "default (untrained head)"}
    for m in models:
        t0 = time.time()
        folder = work / m["name"]
        folder.mkdir(parents=True, exist_ok=True)
        entry: dict[str, Any] = {"name": m["name"], "claimed": m["claimed"], "macs": count_macs(m["float"], 128),
                                 "variants": {}, "elastic": m.get("elastic")}
        sess, names = ort_dynamic_int8_session(m["float"], folder, profile)
        plain_path = folder / "teacher.int8.onnx"
        entry["variants"][PLAIN] = {"path": str(plain_path), "variant": None, "opt_level": "all"}
        sessions = {PLAIN: sess}
        for i, v in enumerate(cands):
            path, err, notes = build_variant(m["deployed"], folder / f"v{i}.onnx", v, float_model=m["float"],
                                             recipe=m["recipe"])
            entry["variants"][v.label] = {"path": str(path) if path else None, "error": err, "notes": notes,
                                          "variant": v.to_dict(), "opt_level": v.opt_level}
            if path is not None:
                sessions[v.label] = make_session(path, profile, spinning=False, opt_level=v.opt_level)
        ref = cands[0].label
        if batches and ref in sessions:
            ref_pred = predictions(sessions[ref], batches)
            torch_pred = torch_predictions(m["deployed"], batches)
            entry["noise_floor"] = float(np.mean(ref_pred == torch_pred))
            entry["torch_int8_accuracy"] = float(np.mean(torch_pred == y))
            need = min(0.99, entry["noise_floor"] - 0.01)
            for label, s in sessions.items():
                pred = predictions(s, batches)
                rec = entry["variants"][label]
                rec["agreement"] = float(np.mean(pred == ref_pred))
                rec["accuracy"] = float(np.mean(pred == y))
                rec["matches"] = rec["agreement"] >= need
        print(f"built {m['name']}: {len(sessions)} graphs in {time.time() - t0:.0f} s, "
              f"MACs {entry['macs']['total']:.3g}", flush=True)
        manifest["models"].append(entry)
    return manifest


def worker(args: argparse.Namespace) -> None:
    """Time every model's variants round-robin with the fp32 teacher; write the times."""
    import torch
    from pause import paused_others

    from autosqueeze import HardwareProfile, fixed_threads, make_session, ort_feed, synthetic_inputs, time_sessions

    manifest = json.loads(Path(args.worker).read_text())
    profile = HardwareProfile(threads=manifest["threads"], batch_size=1, seq_len=128, runtime="onnxruntime")
    teacher, _ = load_teacher(args.teacher)
    batch = synthetic_inputs(profile, int(teacher.config.vocab_size))
    out: dict[str, Any] = {}
    for entry in manifest["models"]:
        calls: dict[str, Any] = {"teacher_fp32": lambda: teacher(**batch)}
        for label, rec in entry["variants"].items():
            if rec.get("path"):
                sess = make_session(rec["path"], profile, spinning=False, opt_level=rec["opt_level"])
                calls[label] = (lambda s, f: (lambda: s.run(None, f)))(sess, ort_feed(sess, batch))
        with fixed_threads(profile.threads), torch.inference_mode():
            out[entry["name"]] = time_sessions(calls, args.rounds, block=lambda: paused_others(args.pause_others))
        print(f"  process {args.index}: {entry['name']} timed", flush=True)
    Path(args.worker_out).write_text(json.dumps(out))


def _ratios(ref: list[float], cand: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(ref, cand))


def summarize(manifest: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    from autosqueeze import DEFAULT_VARIANT, LEGACY_VARIANT

    today = LEGACY_VARIANT.label
    teacher_macs = manifest["models"][0]["macs"]["total"]
    rows: dict[str, Any] = {}
    for entry in manifest["models"]:
        name = entry["name"]
        per: dict[str, Any] = {}
        for label, rec in entry["variants"].items():
            if not rec.get("path"):
                per[label] = {"error": rec.get("error")}
                continue
            sp = [_ratios(r[name]["teacher_fp32"], r[name][label]) for r in runs]
            vs_plain = [_ratios(r[name][PLAIN], r[name][label]) for r in runs]
            vs_today = [_ratios(r[name][today], r[name][label]) for r in runs if today in r[name]]
            per[label] = {"speedup_vs_fp32": statistics.median(sp), "speedup_range": [min(sp), max(sp)],
                          "per_process": sp, "vs_plain": statistics.median(vs_plain),
                          "vs_today": statistics.median(vs_today) if vs_today else None,
                          "median_ms": statistics.median(statistics.median(r[name][label]) for r in runs),
                          **{k: rec.get(k) for k in ("agreement", "accuracy", "matches", "variant", "notes")}}
        rows[name] = {"macs": entry["macs"], "mac_ratio": teacher_macs / entry["macs"]["total"],
                      "claimed": entry.get("claimed"), "noise_floor": entry.get("noise_floor"),
                      "teacher_fp32_ms": statistics.median(statistics.median(r[name]["teacher_fp32"]) for r in runs),
                      "variants": per}
    labels = [lb for lb in rows["teacher"]["variants"] if lb != PLAIN]
    ok = [lb for lb in labels if all("speedup_vs_fp32" in rows[n]["variants"].get(lb, {})
                                     and rows[n]["variants"][lb].get("matches") is not False for n in rows)]
    score = {lb: math.exp(statistics.mean(math.log(rows[n]["variants"][lb]["speedup_vs_fp32"]) for n in rows))
             for lb in ok}
    chosen = max(score, key=lambda lb: score[lb]) if score else DEFAULT_VARIANT.label
    for name, row in rows.items():
        for label, v in row["variants"].items():
            t = rows["teacher"]["variants"].get(label, {})
            if "speedup_vs_fp32" in v and "speedup_vs_fp32" in t and name != "teacher":
                v["speedup_vs_int8_teacher"] = v["speedup_vs_fp32"] / t["speedup_vs_fp32"]
                v["fraction_of_mac_ratio"] = v["speedup_vs_int8_teacher"] / row["mac_ratio"]
    chosen_variant = rows["teacher"]["variants"][chosen].get("variant")
    return {"chosen": {"label": chosen, "variant": chosen_variant, "geomean_speedup_vs_fp32": score.get(chosen),
                       "default_in_code": DEFAULT_VARIANT.label,
                       "vs_today": {n: rows[n]["variants"][chosen].get("vs_today") for n in rows},
                       "vs_plain": {n: rows[n]["variants"][chosen].get("vs_plain") for n in rows}},
            "geomean_speedup_vs_fp32": score, "models": rows, "today": today, "plain": PLAIN}


def write_md(result: dict[str, Any], path: Path) -> None:
    s = result["summary"]
    lines = ["# Deployed graph variants (issue 25)", "",
             f"Machine: {result['fingerprint']['cpu']['model']}, features {result['fingerprint']['cpu']['features']}, "
             f"{result['threads']} threads; {result['processes']} processes x {result['rounds']} rounds, batch 1, "
             f"seq 128, paired with the fp32 PyTorch teacher; others paused: {result['pause_others']}.", "",
             f"**Chosen**: `{s['chosen']['label']}` (geometric-mean speedup "
             f"{s['chosen']['geomean_speedup_vs_fp32']:.2f}x over all models); "
             f"default in the code: `{s['chosen']['default_in_code']}`.", "",
             f"today = `{s['today']}`; plain = TorchScript exporter + quantize_dynamic defaults.", ""]
    for name, row in s["models"].items():
        lines += [f"## {name}", "",
                  f"MACs {row['macs']['total'] / 1e9:.3f} G (MAC ratio {row['mac_ratio']:.2f}); fp32 teacher "
                  f"{row['teacher_fp32_ms']:.1f} ms; noise floor (agreement ref vs PyTorch) {row['noise_floor']}", "",
                  "| variant | speedup vs fp32 | range | vs plain | vs today | agreement | matches "
                  "| fraction of MAC ratio |",
                  "|---|---|---|---|---|---|---|---|"]
        for label, v in sorted(row["variants"].items(), key=lambda kv: -kv[1].get("speedup_vs_fp32", 0)):
            if "speedup_vs_fp32" not in v:
                lines.append(f"| {label} | failed: {v.get('error')} | | | | | | |")
                continue
            fr = v.get("fraction_of_mac_ratio")
            vt = v.get("vs_today")
            lo, hi = v["speedup_range"]
            vt_s = "" if vt is None else f"{vt:.3f}"
            lines.append(f"| {label} | {v['speedup_vs_fp32']:.2f} | {lo:.2f}-{hi:.2f} | {v['vs_plain']:.3f} | {vt_s} | "
                         f"{v.get('agreement')} | "
                         f"{v.get('matches')} | {'' if fr is None else f'{fr:.2f}'} |")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--teacher", default=None, help="a fine-tuned teacher folder (default: the packaged MiniLM-L6)")
    ap.add_argument("--headline", default=str(HEADLINE))
    ap.add_argument("--structures", default="all", help="all, or comma-separated indices of the headline front")
    ap.add_argument("--dev-sentences", type=int, default=400)
    ap.add_argument("--pause-others", action="store_true",
                    help="SIGSTOP other busy python/pytest processes around each timing block (SIGCONT after)")
    ap.add_argument("--quick", action="store_true", help="the first 5 variants only (a sanity run)")
    ap.add_argument("--out", default=str(HERE / "results" / "deploy_graph"), help="output stem (.json and .md)")
    ap.add_argument("--work", default=None, help="where the graphs are built (default: a temporary folder)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    from autosqueeze import hardware_fingerprint, script_logging

    script_logging(quiet=True)

    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="deploy-graph-") as tmp:
        work = Path(args.work or tmp)
        manifest = build_all(args, work)
        (work / "manifest.json").write_text(json.dumps(manifest))
        runs = []
        for i in range(args.processes):
            out = work / f"times{i}.json"
            cmd = [sys.executable, __file__, "--worker", str(work / "manifest.json"), "--worker-out", str(out),
                   "--rounds", str(args.rounds), "--index", str(i)]
            if args.teacher:
                cmd += ["--teacher", args.teacher]
            if args.pause_others:
                cmd.append("--pause-others")
            subprocess.run(cmd, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            runs.append(json.loads(out.read_text()))
    result = {"study": "deploy_graph", "issue": 25, "fingerprint": hardware_fingerprint(args.threads, "onnxruntime"),
              "processes": args.processes, "rounds": args.rounds, "threads": args.threads,
              "pause_others": args.pause_others, "teacher": manifest["teacher"],
              "dev_sentences": manifest["dev_sentences"], "wall_s": round(time.time() - t0, 1),
              "summary": summarize(manifest, runs)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    write_md(result, out.with_suffix(".md"))
    s = result["summary"]["chosen"]
    print(f"chosen: {s['label']}; vs today {s['vs_today']}; vs plain {s['vs_plain']}")
    print(f"wrote {out.with_suffix('.json')} and .md in {result['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
