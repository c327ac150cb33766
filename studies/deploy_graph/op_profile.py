"""ONNX Runtime's per-operator profile of the deployed int8 teacher and of the 2-layer point.

    python studies/deploy_graph/op_profile.py --pause-others             # both models, both variants
    python studies/deploy_graph/op_profile.py --variant legacy --runs 50

For the int8 teacher (the packaged MiniLM-L6, or ``--teacher DIR``) and the headline's
2-layer / 6-heads / FFN 0.19 structure (sliced from the teacher with the project's builder),
each exported as ``--variant`` deploys it (``default``: the code's default variant,
``legacy``: today's dynamo path before issue 25, ``plain``: TorchScript exporter + the model's
own attention; or ``all`` of them), the session runs ``--runs`` calls (batch 1, seq 128,
``--threads`` threads) with ``SessionOptions.enable_profiling`` on, and the profile's node
events are summed by operator type. Writes ``results/profile_<model>_<variant>.md``: time
share and calls per op type, the per-call total of the node time, and the session's
``model_run`` time, so the fixed costs (what does not shrink with the matrices: embeddings,
LayerNorm, softmax, GELU, masks, quantizing activations, shape ops) can be read off.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))
TWO_LAYER = {"layers": 2, "heads_keep": 6, "ffn_keep": 0.1875}


def summarize_profile(path: str | Path, runs: int) -> dict[str, Any]:
    """Per op type: total µs, share of the node time, calls per run; plus the run totals."""
    events = json.loads(Path(path).read_text())
    by_op: dict[str, dict[str, float]] = defaultdict(lambda: {"us": 0.0, "calls": 0})
    model_run: list[float] = []
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            by_op[op]["us"] += float(e.get("dur", 0))
            by_op[op]["calls"] += 1
        elif e.get("cat") == "Session" and e.get("name") == "model_run":
            model_run.append(float(e.get("dur", 0)))
    total = sum(v["us"] for v in by_op.values()) or 1.0
    ops = {op: {"share": v["us"] / total, "us_per_run": v["us"] / runs, "calls_per_run": v["calls"] / runs}
           for op, v in sorted(by_op.items(), key=lambda kv: -kv[1]["us"])}
    model_run = model_run[-runs:]
    return {"ops": ops, "node_us_per_run": total / runs,
            "model_run_us": sorted(model_run)[len(model_run) // 2] if model_run else None, "runs": runs}


def write_md(summary: dict[str, Any], path: Path, title: str, meta: dict[str, Any]) -> None:
    lines = [f"# ONNX Runtime profile: {title}", "",
             f"{meta['runs']} runs, batch 1, seq 128, {meta['threads']} threads; variant `{meta['variant']}`; "
             f"{meta['cpu']}; others paused: {meta['pause_others']}.", "",
             f"Node time per run: {summary['node_us_per_run'] / 1000:.2f} ms; median model_run: "
             f"{(summary['model_run_us'] or 0) / 1000:.2f} ms (the difference: the session's per-call overhead "
             f"and thread hand-offs).", "",
             "| op type | share of node time | µs per run | calls per run |", "|---|---|---|---|"]
    for op, v in summary["ops"].items():
        lines.append(f"| {op} | {100 * v['share']:.1f}% | {v['us_per_run']:.0f} | {v['calls_per_run']:.0f} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default=None)
    ap.add_argument("--variant", default="all", choices=["default", "legacy", "plain", "all"])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pause-others", action="store_true",
                    help="SIGSTOP other busy python/pytest processes while profiling (SIGCONT after)")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    from autosqueeze import script_logging

    script_logging(quiet=True)
    from pause import paused_others
    from run import build_models, load_teacher

    from autosqueeze import (
        DEFAULT_VARIANT,
        LEGACY_VARIANT,
        PLAIN_VARIANT,
        HardwareProfile,
        build_variant,
        cpu_info,
        make_session,
        ort_feed,
        synthetic_inputs,
    )

    variants = {"default": DEFAULT_VARIANT, "legacy": LEGACY_VARIANT, "plain": PLAIN_VARIANT}
    chosen = list(variants) if args.variant == "all" else [args.variant]
    teacher, _ = load_teacher(args.teacher)
    models = build_models(teacher, [{"name": "2layer", "elastic": TWO_LAYER, "claimed": None}])
    profile = HardwareProfile(threads=args.threads, batch_size=1, seq_len=128, runtime="onnxruntime")
    batch = synthetic_inputs(profile, int(teacher.config.vocab_size))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="deploy-profile-") as tmp:
        for m in models:
            for vname in chosen:
                v = variants[vname]
                path, err, _ = build_variant(m["deployed"], Path(tmp) / f"{m['name']}_{vname}.onnx", v,
                                             float_model=m["float"], recipe=m["recipe"])
                if path is None:
                    print(f"{m['name']} {vname}: {err}")
                    continue
                sess = make_session(path, profile, spinning=True, opt_level=v.opt_level,
                                    profile_file=str(Path(tmp) / f"prof_{m['name']}_{vname}"))
                feed = ort_feed(sess, batch)
                for _ in range(5):
                    sess.run(None, feed)
                done = 0
                while done < args.runs:
                    with paused_others(args.pause_others):
                        for _ in range(min(20, args.runs - done)):
                            sess.run(None, feed)
                            done += 1
                prof = sess.end_profiling()
                summary = summarize_profile(prof, args.runs)
                name = "teacher" if m["name"] == "teacher" else "2layer_6heads_ffn0.19"
                dst = out / f"profile_{name}_{vname}.md"
                write_md(summary, dst, f"int8 {name} ({vname})",
                         {"runs": args.runs, "threads": args.threads, "variant": v.label, "cpu": cpu_info()["model"],
                          "pause_others": args.pause_others})
                top = ", ".join(f"{op} {100 * s['share']:.0f}%" for op, s in list(summary["ops"].items())[:6])
                print(f"{dst.name}: {summary['node_us_per_run'] / 1000:.2f} ms node time per run; {top}")


if __name__ == "__main__":
    main()
