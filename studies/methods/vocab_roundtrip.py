"""A pruned vocabulary on real data, the user's way: the ``vocab-pruned`` row of rows.yaml is built
as the search builds a trial (``evaluate_recipe``, SST-2 dev predicted in process), its recipe
saved, rebuilt by ``autosqueeze apply`` into a model folder, loaded back with
``autosqueeze.load`` and its folder's own tokenizer, and the 872 dev predictions compared one by
one with the search's. Writes results/vocab_roundtrip.json.

    python studies/methods/vocab_roundtrip.py --data-dir ../shared/data/glue --study studies/headline/study.yaml
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent


def cli(*args: str) -> int:
    """``autosqueeze ARGS`` as the user runs it (this interpreter); its exit status."""
    return subprocess.run([sys.executable, "-m", "autosqueeze.cli", *args], check=False).returncode


def main() -> int:
    import numpy as np
    from transformers import AutoTokenizer

    import autosqueeze
    from autosqueeze import evaluate_recipe, predict, start_study_script, with_provenance

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    p.add_argument("--study", default=str(HERE / "study.yaml"))
    p.add_argument("--row", default="vocab-pruned")
    p.add_argument("--out", default=str(HERE / "results" / "vocab_roundtrip.json"))
    args = p.parse_args()

    sys.path.insert(0, str(HERE))
    from run import row_recipe

    script = start_study_script(args.study, args.data_dir)
    config, data_dir = script.config, script.data_dir
    rows = {r["name"]: r for r in yaml.safe_load((HERE / "rows.yaml").read_text())["rows"]}
    sc = script.prepare()
    recipe = with_provenance(row_recipe(rows[args.row]), sc)
    keep: dict = {}
    res = evaluate_recipe(recipe, sc, keep=keep)
    searched = predict(keep["built"].model, sc.data, sc.data.dev, sc.eval_batch_size)
    recipe.measured = res.measurement.to_dict(["metric", "metrics", "latency_ms", "speedup", "latency"])
    with tempfile.TemporaryDirectory(prefix="vocab-roundtrip-") as tmp:
        path = recipe.save(Path(tmp) / "recipe.yaml")
        folder = Path(tmp) / "model"
        if cli("apply", str(path), "-o", str(folder), *(["--data-dir", data_dir] if data_dir else []), "--no-onnx"):
            print("apply failed", file=sys.stderr)
            return 1
        loaded = autosqueeze.load(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        # the same dev rows and length as the search, tokenized by the saved folder's own tokenizer
        data = dataclasses.replace(sc.data, tokenizer=tokenizer, train=[])
        applied = predict(loaded, data, data.dev, sc.eval_batch_size)
        kept_rows = int(loaded.get_input_embeddings().inner.num_embeddings)
    teacher_config: Any = sc.teacher.model.config  # a transformers config (torch types it Tensor | Module)
    labels = np.asarray([e.label for e in sc.data.dev])
    out = {
        "row": args.row, "study": config.name, "dev_examples": len(labels),
        "vocab_rows_kept": kept_rows, "vocab_rows_teacher": int(teacher_config.vocab_size),
        "search_metric": res.metric, "applied_metric": float((applied == labels).mean()),
        "predictions_equal": int((applied == searched).sum()),
        "predictions_different": int((applied != searched).sum()),
        "recipe": recipe.to_dict()["steps"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "recipe"}, indent=2))
    return 0 if out["predictions_different"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
