"""Where an elastic training step's time goes: data, the teacher's forward, each sub-network's
forward and backward, the optimizer.

Runs the real training loop (``autosqueeze.elastic.train.train_elastic``) with its per-phase
timer on random tokens (every row the full ``--seq`` long: the worst case; real SST-2 batches
are padded to their longest sentence, see ``TaskData.encode``) and prints the mean milliseconds
per step of each phase, the first ``--warmup`` steps left out. Importance scoring is skipped
(``importance_batches: 0``): it runs once, before the steps. Results (and the machine's
fingerprint) go to ``--out`` as JSON when given.

    python studies/elastic_quality/step_profile.py                          # packaged MiniLM-L6, batch 32, seq 64
    python studies/elastic_quality/step_profile.py --steps 3 --warmup 1 --tiny   # a smoke run (seconds)
    python studies/elastic_quality/step_profile.py --set inplace_distill=true --set inplace_weight=1.0
    python studies/elastic_quality/step_profile.py --out studies/elastic_quality/results/step_profile.json

Run it on a quiet machine (nothing else training): the shares are what matter; the total is
this machine's.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml


def random_data(vocab: int, batch: int, seq: int, num_labels: int, seed: int = 0) -> Any:
    """A TaskData stand-in: ``batch`` x ``seq`` random token ids (no padding), random labels."""
    import torch

    def train_batches(n: int, s: int):
        g = torch.Generator().manual_seed(seed * 1_000_003 + s)
        for _ in range(n):
            ids = torch.randint(1000 if vocab > 2000 else 1, vocab, (batch, seq), generator=g)
            yield {"input_ids": ids, "attention_mask": torch.ones(batch, seq, dtype=torch.long),
                   "token_type_ids": torch.zeros(batch, seq, dtype=torch.long),
                   "labels": torch.randint(0, num_labels, (batch,), generator=g)}

    task = SimpleNamespace(name="random", num_labels=num_labels, is_regression=False)
    return SimpleNamespace(task=task, train=[None] * 67_349, batch_size=batch, max_seq_len=seq,
                           train_batches=train_batches)


def load_model(args: argparse.Namespace) -> Any:
    if args.tiny:
        import transformers

        cfg = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=max(64, args.seq),
                                      num_labels=2)  # type: ignore[call-arg]  # a PretrainedConfig kwarg, not typed
        return transformers.BertForSequenceClassification(cfg).eval()
    from autosqueeze import load_classifier

    return load_classifier(args.model, 2)


def parse_sets(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set takes key=value (an elastic setting), got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default", help="a model folder or hub name (default: packaged MiniLM-L6)")
    p.add_argument("--tiny", action="store_true", help="a tiny random BERT instead (smoke test)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--steps", type=int, default=12, help="steps timed, warmup included")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an elastic setting (as in the study file's elastic: section), e.g. inplace_distill=true")
    p.add_argument("--out", help="write the profile here as JSON")
    args = p.parse_args()
    if args.steps <= args.warmup:
        raise SystemExit(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")

    import torch

    from autosqueeze import ElasticSettings, hardware_fingerprint, train_elastic

    torch.set_num_threads(args.threads)
    settings = ElasticSettings(**{"lr": 1e-4, **parse_sets(args.set), "steps": args.steps, "importance_batches": 0})
    model = load_model(args)
    data = random_data(model.config.vocab_size, args.batch, args.seq, 2)
    times: dict[str, list[float]] = defaultdict(list)
    step = [-1]

    @contextmanager
    def timer(name: str):
        if name == "data":
            step[0] += 1
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if step[0] >= args.warmup:
                times[name].append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    train_elastic(model, data, settings, timer=timer)
    wall = time.perf_counter() - t0
    n = args.steps - args.warmup
    per_step = {k: 1000 * sum(v) / n for k, v in times.items()}
    total = sum(per_step.values())
    groups: dict[str, float] = defaultdict(float)
    for k, ms in per_step.items():
        groups[k.split(".")[0]] += ms
    print(f"{'phase':22s} {'ms/step':>9s} {'share':>7s} {'median ms':>10s}")
    for k in sorted(per_step, key=lambda k: -per_step[k]):
        print(f"{k:22s} {per_step[k]:9.1f} {100 * per_step[k] / total:6.1f}% "
              f"{1000 * statistics.median(times[k]):10.1f}")
    print(f"{'total':22s} {total:9.1f}   ({n} steps timed of {args.steps}; run {wall:.1f} s incl. setup)")
    kinds = sorted(groups.items(), key=lambda x: -x[1])
    print("by kind: " + ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in kinds))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "model": "tiny" if args.tiny else args.model, "batch": args.batch, "seq": args.seq,
            "steps_timed": n, "warmup": args.warmup, "threads": args.threads, "settings": settings.to_dict(),
            "ms_per_step": per_step, "by_kind_ms": dict(groups), "total_ms": total,
            "machine": hardware_fingerprint(args.threads, "torch"), "torch": torch.__version__,
        }, indent=2) + "\n")
        print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
