"""What bf16 autocast does to a training step on this CPU: the study's model (all-mpnet-base-v2 by
default) fine-tuned at batch 16, sequence 40, random token ids, fp32 and bf16 steps alternating in one
process (2 threads, a warm-up step each, then ``--steps`` timed). Prints the median seconds a step
of each and their ratio, with the machine's fingerprint. Nothing else may run meanwhile.

    python studies/headline_base/bf16_step.py [--model studies/headline_base/work/all-mpnet-base-v2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(HERE / "work" / "all-mpnet-base-v2"))
    ap.add_argument("--steps", type=int, default=4, help="timed steps of each precision per round")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    if not Path(args.model, "config.json").is_file():
        print(f"error: {args.model} is not a model folder: run studies/headline_base/get_model.py first, or give "
              f"--model", file=sys.stderr)
        return 2
    import torch
    from transformers import AutoModelForSequenceClassification

    from autosqueeze import cpu_info

    torch.set_num_threads(2)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-5)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, model.config.vocab_size - 1, (16, 40), generator=gen)
    labels = torch.randint(0, 2, (16,), generator=gen)

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.rounds):
        for name in ("fp32", "bf16"):
            step(name == "bf16")  # warm-up (kernels for this shape and precision)
            for _ in range(args.steps):
                t = time.perf_counter()
                step(name == "bf16")
                times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"model": args.model, "batch": 16, "seq": 40, "threads": 2,
                      "s_per_step": {k: round(v, 3) for k, v in med.items()},
                      "spread": {k: [round(min(v), 3), round(max(v), 3)] for k, v in times.items()},
                      "bf16_speedup": round(med["fp32"] / med["bf16"], 2), "machine": cpu_info()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
