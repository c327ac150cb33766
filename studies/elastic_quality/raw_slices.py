"""Raw (untrained) slices of cached elastic students by depth and layer set: which bottom-layer slices
predict one class (the diagnostic behind the README's "training options" section).

    python studies/elastic_quality/raw_slices.py --data-dir ../shared/data/glue \
        --students plain=sst2-4a8876d76c0a,layers-first=sst2-7a95b0a1f4f6 \
        --out studies/elastic_quality/results/epyc-zen5/raw_slices.jsonl

Each line: student, layer set, layers, heads, FFN fraction, SST-2 dev metric of the slice as the search
scores it (``evaluate_recipe``; latency timed briefly and not reported), the machine's fingerprint.
The students must be in ``$AUTOSQUEEZE_CACHE/elastic`` (trained by ``run.py``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAPES = ((2, 12, 1.0), (3, 12, 1.0), (3, 5, 0.3125), (4, 12, 1.0), (5, 12, 1.0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    p.add_argument("--study", default=str(HERE.parent / "headline" / "study.yaml"))
    p.add_argument("--students", required=True, help="name=cache key pairs, comma-separated")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    students = [tuple(pair.split("=", 1)) for pair in args.students.split(",")]
    if not all(len(s) == 2 and s[0] and s[1] for s in students):
        raise SystemExit(f"--students: {args.students!r} is not name=key[,name=key...]")
    from autosqueeze import (
        Recipe,
        Step,
        StudyScript,
        evaluate_recipe,
        load_study_config,
        script_logging,
        with_provenance,
    )

    script_logging(quiet=True)
    cfg = load_study_config(args.study)
    cfg = dataclasses.replace(cfg, latency=dataclasses.replace(cfg.latency, warmup=1, repeats=3, min_time_s=0.0))
    script = StudyScript(cfg, args.data_dir)
    sc = script.prepare()
    machine = script.machine(sc)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for name, key in students:
            for layer_set in ("even", "first"):
                for layers, heads, ffn in SHAPES:
                    params = {"student": key, "layers": layers, "heads_keep": heads, "ffn_keep": ffn,
                              "layer_set": layer_set}
                    res = evaluate_recipe(with_provenance(Recipe(steps=[Step("elastic", params)]), sc), sc)
                    row = {"student": name, "key": key, "layer_set": layer_set, "layers": layers, "heads": heads,
                           "ffn": ffn, "metric": res.metric, "machine": machine}
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    print(f"{name:14s} {layer_set:5s} L{layers} H{heads} F{ffn:g}: {100 * (res.metric or 0):.2f}",
                          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
