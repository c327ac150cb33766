"""Do timings agree across processes? Chosen structures re-timed in three separate processes.

    python studies/timing_agreement/run.py                    # 3 processes, one after another
    python studies/timing_agreement/run.py --processes 5 --rounds 400
    python studies/timing_agreement/run.py --before ../before   # a checkout of an earlier commit, alternated

With ``--before TREE`` (a checkout of an earlier commit of this project), the processes alternate
between that tree's worker and this one's in ABBA order (before, after, after, before, ...;
``--processes`` of each), and the result adds, per structure, both sides' median speedups, their
ratio and whether the after-median lies within the before-processes' range widened by the
tolerance: the behaviour check of a refactor on one machine in one sitting.

Each process (this script with ``--worker``) loads the model (the packaged MiniLM-L6 by
default, with a classification head; the weights do not change the cost), builds the
structures below, and times each one paired with the fp32 PyTorch teacher exactly as a
search trial is timed (``runtimes.timing.timing_against_teacher``: call by call, alternating,
median of the per-pair ratios; ONNX Runtime sessions with spinning off):

- ``torch_int8``: the teacher's PyTorch dynamic int8 (``quantize_dynamic``);
- ``sliced_3_layers``: 3 of the 6 layers kept (``drop_layers keep: 3``), fp32 PyTorch;
- ``sliced_3_layers_int8``: the same, PyTorch dynamic int8;
- ``ort_int8``: the teacher's ONNX Runtime dynamic int8 (needs the onnx extra; skipped without).

The processes run sequentially (never two at once: they would share the cores). The parent
writes ``results/agreement.json`` and ``results/agreement.md``: every process's paired
speedups, their spread, the machine fingerprint, and whether each structure's median speedups
agree within ``--tolerance`` (5%: max / min - 1 over the processes). Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TOLERANCE = 0.05
STRUCTURES: dict[str, tuple[list[tuple[str, dict[str, Any]]], str]] = {  # name: (recipe steps, runtime)
    "torch_int8": ([("quantize_dynamic", {})], "torch"),
    "sliced_3_layers": ([("drop_layers", {"keep": 3})], "torch"),
    "sliced_3_layers_int8": ([("drop_layers", {"keep": 3}), ("quantize_dynamic", {})], "torch"),
    "ort_int8": ([("quantize_dynamic", {})], "onnxruntime"),
}


# --- pure parts (unit-tested) -----------------------------------------------------------------
def agreement(runs: list[dict[str, Any]], tolerance: float = TOLERANCE) -> dict[str, dict[str, Any]]:
    """Per structure: each process's median speedup, their median, the relative range
    (max / min - 1) and whether it is within ``tolerance``. ``runs``: one worker result each
    (``{"structures": {name: {"speedup": ...}}}``); a structure missing from a run is left out
    of that run's list (and ``agree`` needs at least two processes)."""
    names: list[str] = []
    for run in runs:
        names += [n for n in run["structures"] if n not in names]
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        speedups = [float(r["structures"][name]["speedup"]) for r in runs if name in r["structures"]]
        lo, hi = min(speedups), max(speedups)
        rel = hi / lo - 1 if lo > 0 else float("inf")
        out[name] = {"speedups": speedups, "median": statistics.median(speedups), "relative_range": rel,
                     "agree": len(speedups) >= 2 and rel <= tolerance}
    return out


def before_after(before: list[dict[str, Any]], after: list[dict[str, Any]],
                 tolerance: float = TOLERANCE) -> dict[str, dict[str, Any]]:
    """Per structure timed by both sides: each side's median speedup over its processes, the
    ratio after / before, and ``same``: the after-median within the before-processes' range
    widened by ``tolerance`` on each side (and both sides timed at least once)."""
    a_before, a_after = agreement(before, tolerance), agreement(after, tolerance)
    out: dict[str, dict[str, Any]] = {}
    for name in [n for n in a_before if n in a_after]:
        b, a = a_before[name], a_after[name]
        lo, hi = min(b["speedups"]), max(b["speedups"])
        out[name] = {"before": b["median"], "after": a["median"], "ratio": a["median"] / b["median"],
                     "before_range": [lo, hi],
                     "same": lo * (1 - tolerance) <= a["median"] <= hi * (1 + tolerance)}
    return out


def to_markdown(result: dict[str, Any]) -> str:
    """The agreement table with the machine and the command that produced it."""
    fp = result.get("fingerprint") or {}
    cpu = (fp.get("cpu") or {}).get("model", "?")
    agree = result["agreement"]
    n = len(result["runs"])
    lines = [
        "# Timing agreement across processes", "",
        f"Command: `{result['command']}`", "",
        f"Machine: {cpu}; {fp.get('threads', '?')} threads; torch {fp.get('versions', {}).get('torch', '?')}, "
        f"onnxruntime {fp.get('versions', {}).get('onnxruntime', '-')}. Batch {result['profile']['batch_size']}, "
        f"seq {result['profile']['seq_len']}; {n} processes one after another; speedups paired with the fp32 "
        f"PyTorch teacher in each process.", "",
        "| structure | " + " | ".join(f"process {i + 1}" for i in range(n)) + " | range | within "
        f"{100 * result['tolerance']:.0f}% |",
        "|---|" + "---|" * n + "---|---|",
    ]
    for name, a in agree.items():
        cells = [f"{s:.3f}x" for s in a["speedups"]] + [""] * (n - len(a["speedups"]))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * a['relative_range']:.1f}% | "
                     f"{'yes' if a['agree'] else 'NO'} |")
    teacher = [f"{r['teacher_ms']:.2f}" for r in result["runs"]]
    lines += ["", f"Teacher fp32 PyTorch median per process (ms): {', '.join(teacher)}.",
              f"All agree: {'yes' if all(a['agree'] for a in agree.values()) else 'no'}.", ""]
    if "before_after" in result:
        ba, tol = result["before_after"], 100 * result["tolerance"]
        lines += ["## Before and after", "",
                  f"Before: `{result['before']['tree']}` at {result['before']['commit']}; after: this tree at "
                  f"{result['after_commit']}. Processes alternated (ABBA), {len(result['before']['runs'])} of each. "
                  "Processes 1.. above are the after side.", "",
                  "| structure | before (processes) | after (processes) | after / before | "
                  f"after within the before range ±{tol:.0f}% |", "|---|---|---|---|---|"]
        before_agree = agreement(result["before"]["runs"], result["tolerance"])
        for name, row in ba.items():
            bs = ", ".join(f"{v:.3f}" for v in before_agree[name]["speedups"])
            as_ = ", ".join(f"{v:.3f}" for v in agree[name]["speedups"])
            lines.append(f"| {name} | {row['before']:.3f}x ({bs}) | {row['after']:.3f}x ({as_}) | "
                         f"{row['ratio']:.3f} | {'yes' if row['same'] else 'NO'} |")
        bt = [f"{r['teacher_ms']:.2f}" for r in result["before"]["runs"]]
        lines += ["", f"Teacher fp32 PyTorch median per before-process (ms): {', '.join(bt)}.", ""]
    return "\n".join(lines)


def git_commit(tree: Path) -> str:
    """The commit checked out in ``tree`` (``?`` outside git)."""
    try:
        out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return out.stdout.strip()


def process_arguments(doc: str | None) -> argparse.ArgumentParser:
    """The arguments every script of this folder takes: the model, how many processes, threads, length."""
    p = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    p.add_argument("--model", default="default", help="model folder, hub name or 'default' (packaged MiniLM-L6)")
    p.add_argument("--processes", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=128)
    return p


def run_worker(script: Path, args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``script --worker`` in a process of its own (``args`` passed on) and read back its JSON result."""
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "run.json"
        subprocess.run([sys.executable, str(script), *args, "--worker", str(dest)], check=True, env=env)
        result: dict[str, Any] = json.loads(dest.read_text())
    return result


# --- one process ------------------------------------------------------------------------------
def worker(model_name: str | None, profile: Any, settings: Any, model: Any = None) -> dict[str, Any]:
    """Time every structure against the teacher in this process (``model``: a teacher to use
    instead of loading ``model_name``)."""
    import torch

    from autosqueeze import (
        MethodContext,
        OnnxUnavailable,
        Recipe,
        Step,
        baseline_settings,
        build,
        get_adapter,
        measure_latency,
        timing_against_teacher,
    )

    if model is None:
        from autosqueeze import load_classifier

        model = load_classifier(model_name, 2)
    teacher = model.eval()
    t0 = time.time()
    base = measure_latency(teacher, profile, settings=baseline_settings(settings))
    out: dict[str, Any] = {"teacher_ms": base.median_ms, "structures": {}}
    for name, (steps, runtime) in STRUCTURES.items():
        recipe = Recipe(steps=[Step(m, p) for m, p in steps], profile={"runtime": runtime})
        built = build(recipe, teacher, MethodContext(adapter=get_adapter(teacher), teacher=teacher))
        try:
            timing = timing_against_teacher(built.model, teacher, dataclasses.replace(profile, runtime=runtime),
                                            settings, base.median_ms, float_model=built.float_model, recipe=recipe)
        except OnnxUnavailable as err:
            logging.warning("%s skipped: %s", name, err)
            continue
        out["structures"][name] = {"speedup": timing.speedup, "latency_ms": timing.latency_ms,
                                   "teacher_paired_ms": timing.teacher_ms, "runtime": runtime,
                                   "candidate": timing.stats.to_dict()}
    out["wall_s"] = time.time() - t0
    out["torch_threads"] = torch.get_num_threads()
    return out


def main(argv: list[str] | None = None) -> int:
    p = process_arguments(__doc__)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--repeats", type=int, default=300, help="minimum timed pairs per structure")
    p.add_argument("--min-time-s", type=float, default=10.0, help="minimum seconds of pairs per structure")
    p.add_argument("--tolerance", type=float, default=TOLERANCE)
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--before", metavar="TREE", help="a checkout of an earlier commit: alternate its processes with "
                                                     "this tree's (ABBA) and compare the speedups")
    p.add_argument("--worker", metavar="JSON", help=argparse.SUPPRESS)  # internal: one process, result to JSON
    args = p.parse_args(argv)
    from autosqueeze import HardwareProfile, LatencySettings, script_logging

    script_logging()

    profile = HardwareProfile(threads=args.threads, batch_size=args.batch_size, seq_len=args.seq_len)
    settings = LatencySettings(warmup=20, repeats=args.repeats, min_time_s=args.min_time_s, idle_wait_s=30.0)
    if args.worker:
        Path(args.worker).write_text(json.dumps(worker(args.model, profile, settings)))
        return 0
    from autosqueeze import hardware_fingerprint

    passthrough = ["--model", args.model, "--threads", str(args.threads), "--seq-len", str(args.seq_len),
                   "--batch-size", str(args.batch_size), "--repeats", str(args.repeats),
                   "--min-time-s", str(args.min_time_s)]
    before_tree = Path(args.before).resolve() if args.before else None
    if before_tree is not None and not (before_tree / "studies" / "timing_agreement" / "run.py").is_file():
        raise SystemExit(f"--before {args.before}: no studies/timing_agreement/run.py there; give a checkout of "
                         "this project (git worktree add ../before <commit>)")
    sides = ["after"] * args.processes
    if before_tree is not None:  # ABBA: before, after, after, before, before, after, ...
        pairs = [("before", "after") if i % 2 == 0 else ("after", "before") for i in range(args.processes)]
        sides = [side for pair in pairs for side in pair]
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for i, side in enumerate(sides):  # one after another: never two timing processes at once
        t0 = time.time()
        script, env = Path(__file__).resolve(), None
        if side == "before":
            assert before_tree is not None
            script = before_tree / "studies" / "timing_agreement" / "run.py"
            env = {**os.environ, "PYTHONPATH": str(before_tree)}  # its package, not the installed one
        runs[side].append(run_worker(script, passthrough, env))
        print(f"process {i + 1}/{len(sides)} ({side}): {time.time() - t0:.0f} s, "
              + ", ".join(f"{k} {v['speedup']:.3f}x" for k, v in runs[side][-1]["structures"].items()), flush=True)
    result = {"command": "python studies/timing_agreement/run.py " + " ".join(argv if argv is not None
                                                                               else sys.argv[1:]),
              "profile": profile.to_dict(), "settings": settings.__dict__, "tolerance": args.tolerance,
              "fingerprint": hardware_fingerprint(args.threads, "torch+onnxruntime"), "runs": runs["after"],
              "agreement": agreement(runs["after"], args.tolerance)}
    if before_tree is not None:
        result.update({"after_commit": git_commit(HERE), "before": {"tree": args.before, "commit":
                       git_commit(before_tree), "runs": runs["before"]},
                       "before_after": before_after(runs["before"], runs["after"], args.tolerance)})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "agreement.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "agreement.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
