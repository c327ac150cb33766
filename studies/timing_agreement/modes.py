"""Why do PyTorch int8 speedups spread more across processes than fp32 ones? Raw per-call times.

    python studies/timing_agreement/modes.py --out studies/timing_agreement/results/epyc-zen5

``run.py`` found PyTorch dynamic int8 speedups 6.7% apart across three processes on the Zen 5 while
the fp32 slice agreed within 0.3%. This script keeps every call's time instead of a summary: in
each process (this script with ``--worker``), the fp32 teacher is timed pair by pair against each
structure of ``run.py`` in PyTorch (teacher call, candidate call, alternating, as a trial is timed),
and it reports per structure and process:

- the candidate's and the teacher's quantiles (p5, p25, p50, p75, p95) of the per-call times;
- the best split of the candidate's times into two groups (1-D two-means): both centres, the share
  of calls in the faster group and the gap between the centres in pooled standard deviations
  (above about 2: two modes, and a median that jumps between them as their shares move);
- four speedup statistics of the same pairs: the median of the per-pair ratios (the product's),
  the ratio of the medians, the ratio of the means and the ratio of the 20%-trimmed means.

The parent writes ``modes.json`` and ``modes.md``: per structure, each statistic's range across
processes (max / min - 1), so one can see whether the spread is in the calls themselves (bimodal
per-call times whose mix moves between processes) and which statistic is steadiest. Run it on a
quiet machine: it is a timing study.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


def _agreement_script() -> Any:
    """This folder's ``run.py`` (its structures, arguments and worker runner), loaded by path."""
    spec = importlib.util.spec_from_file_location("timing_agreement_run_for_modes", HERE / "run.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_RUN = _agreement_script()
STRUCTURES, process_arguments, run_worker = _RUN.STRUCTURES, _RUN.process_arguments, _RUN.run_worker
STATISTICS = ("median_of_ratios", "ratio_of_medians", "ratio_of_means", "ratio_of_trimmed_means")
TORCH_STRUCTURES = ("torch_int8", "sliced_3_layers", "sliced_3_layers_int8")


# --- pure parts (unit-tested) -----------------------------------------------------------------
def two_means(values: np.ndarray) -> dict[str, float]:
    """The split of 1-D ``values`` into a faster and a slower group with the least within-group
    squared error: the centres, the faster group's share, and the gap between the centres in
    pooled within-group standard deviations."""
    x = np.sort(np.asarray(values, dtype=float))
    n = len(x)
    if n < 4:
        raise ValueError(f"two_means needs at least 4 values, got {n}")
    csum, csq = np.cumsum(x), np.cumsum(x * x)
    k = np.arange(1, n)  # the first k values form the faster group
    left_sse = csq[k - 1] - csum[k - 1] ** 2 / k
    right_sse = (csq[-1] - csq[k - 1]) - (csum[-1] - csum[k - 1]) ** 2 / (n - k)
    best = int(np.argmin(left_sse + right_sse))
    cut = best + 1
    lo, hi = x[:cut], x[cut:]
    pooled = float(np.sqrt((left_sse[best] + right_sse[best]) / max(n - 2, 1)))
    gap = float(hi.mean() - lo.mean())
    return {"fast_ms": float(lo.mean()), "slow_ms": float(hi.mean()), "fast_share": cut / n,
            "gap_sd": gap / pooled if pooled > 0 else float("inf")}


def trimmed_mean(values: np.ndarray, trim: float = 0.2) -> float:
    """The mean of ``values`` without the lowest and highest ``trim`` share of them."""
    x = np.sort(np.asarray(values, dtype=float))
    cut = int(len(x) * trim)
    return float(x[cut:len(x) - cut].mean()) if len(x) > 2 * cut else float(np.median(x))


def speedup_statistics(teacher_ms: np.ndarray, candidate_ms: np.ndarray) -> dict[str, float]:
    """Four ways to summarize the same pairs as a speedup (teacher time / candidate time)."""
    t, c = np.asarray(teacher_ms, dtype=float), np.asarray(candidate_ms, dtype=float)
    return {"median_of_ratios": float(np.median(t / c)),
            "ratio_of_medians": float(np.median(t) / np.median(c)),
            "ratio_of_means": float(t.mean() / c.mean()),
            "ratio_of_trimmed_means": trimmed_mean(t) / trimmed_mean(c)}


def spread(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per structure and statistic: the processes' values and their range (max / min - 1)."""
    out: dict[str, dict[str, Any]] = {}
    for name in runs[0]["structures"]:
        out[name] = {}
        for stat in STATISTICS:
            vals = [r["structures"][name]["speedup"][stat] for r in runs if name in r["structures"]]
            out[name][stat] = {"values": vals, "range": max(vals) / min(vals) - 1}
    return out


def quantiles(values: np.ndarray) -> dict[str, float]:
    q = np.percentile(np.asarray(values, dtype=float), [5, 25, 50, 75, 95])
    return {f"p{p}": float(v) for p, v in zip((5, 25, 50, 75, 95), q, strict=True)}


def to_markdown(result: dict[str, Any]) -> str:
    runs, sp = result["runs"], result["spread"]
    n = len(runs)
    cpu = (result.get("fingerprint") or {}).get("cpu", {}).get("model", "?")
    lines = ["# Per-call times and speedup statistics across processes", "",
             f"Command: `{result['command']}`", "",
             f"Machine: {cpu}; {result['threads']} threads; batch 1, seq {result['seq_len']}; {result['pairs']} "
             f"pairs per structure; {n} processes one after another.", "",
             "## Speedup statistics: range across processes", "",
             "| structure | " + " | ".join(STATISTICS) + " |", "|---|" + "---|" * len(STATISTICS)]
    for name, stats in sp.items():
        cells = [f"{100 * stats[s]['range']:.1f}% (" + ", ".join(f"{v:.3f}" for v in stats[s]["values"]) + ")"
                 for s in STATISTICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Per-call times (ms): candidate, and its split into two groups", "",
              "| structure | process | p5 | p25 | p50 | p75 | p95 | fast / slow centre | fast share | gap (sd) | "
              "teacher p25 / p50 / p75 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in sp:
        for i, r in enumerate(runs):
            s = r["structures"].get(name)
            if s is None:
                continue
            q, m, tq = s["candidate_q"], s["modes"], s["teacher_q"]
            lines.append(f"| {name} | {i + 1} | {q['p5']:.2f} | {q['p25']:.2f} | {q['p50']:.2f} | {q['p75']:.2f} | "
                         f"{q['p95']:.2f} | {m['fast_ms']:.2f} / {m['slow_ms']:.2f} | {m['fast_share']:.2f} | "
                         f"{m['gap_sd']:.1f} | {tq['p25']:.2f} / {tq['p50']:.2f} / {tq['p75']:.2f} |")
    lines.append("")
    return "\n".join(lines)


# --- one process ------------------------------------------------------------------------------
def worker(model_name: str, threads: int, seq_len: int, pairs: int, warmup: int, model: Any = None) -> dict[str, Any]:
    import torch

    from autosqueeze import (
        HardwareProfile,
        MethodContext,
        Recipe,
        Step,
        build,
        fixed_threads,
        get_adapter,
        synthetic_inputs,
    )

    if model is None:
        from autosqueeze import load_classifier

        model = load_classifier(model_name, 2)
    teacher = model.eval()
    inputs = synthetic_inputs(HardwareProfile(threads=threads, batch_size=1, seq_len=seq_len),
                              vocab_size=int(teacher.config.vocab_size))
    out: dict[str, Any] = {"structures": {}}
    with fixed_threads(threads), torch.inference_mode():
        for name in TORCH_STRUCTURES:
            steps, _runtime = STRUCTURES[name]
            recipe = Recipe(steps=[Step(m, p) for m, p in steps], profile={"runtime": "torch"})
            cand = build(recipe, teacher, MethodContext(adapter=get_adapter(teacher), teacher=teacher)).model.eval()
            t_ms, c_ms = [], []
            for i in range(warmup + pairs):
                a = time.perf_counter()
                teacher(**inputs)
                b = time.perf_counter()
                cand(**inputs)
                c = time.perf_counter()
                if i >= warmup:
                    t_ms.append(1e3 * (b - a))
                    c_ms.append(1e3 * (c - b))
            t, cnd = np.array(t_ms), np.array(c_ms)
            out["structures"][name] = {"speedup": speedup_statistics(t, cnd), "candidate_q": quantiles(cnd),
                                       "teacher_q": quantiles(t), "modes": two_means(cnd),
                                       "teacher_modes": two_means(t)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = process_arguments(__doc__)
    p.add_argument("--pairs", type=int, default=600, help="timed pairs per structure and process")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--worker", metavar="JSON", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.processes < 2 or args.pairs < 4:
        raise SystemExit("--processes must be at least 2 and --pairs at least 4")
    if args.worker:
        res = worker(args.model, args.threads, args.seq_len, args.pairs, args.warmup)
        Path(args.worker).write_text(json.dumps(res))
        return 0
    from autosqueeze import hardware_fingerprint

    passthrough = ["--model", args.model, "--threads", str(args.threads), "--seq-len", str(args.seq_len),
                   "--pairs", str(args.pairs), "--warmup", str(args.warmup)]
    runs = []
    for i in range(args.processes):  # one after another: never two timing processes at once
        t0 = time.time()
        runs.append(run_worker(Path(__file__).resolve(), passthrough))
        print(f"process {i + 1}/{args.processes}: {time.time() - t0:.0f} s, "
              + ", ".join(f"{k} {v['speedup']['median_of_ratios']:.3f}x" for k, v in runs[-1]["structures"].items()),
              flush=True)
    result = {"command": "python studies/timing_agreement/modes.py " + " ".join(argv if argv is not None
                                                                                else sys.argv[1:]),
              "threads": args.threads, "seq_len": args.seq_len, "pairs": args.pairs,
              "fingerprint": hardware_fingerprint(args.threads, "torch"), "runs": runs, "spread": spread(runs)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "modes.json").write_text(json.dumps(result, indent=2))
    (out / "modes.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
