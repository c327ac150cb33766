"""Elastic student quality: the final metric of fixed structures against the elastic training
budget and options, and "sliced vs trained alone".

Three fixed structures (the headline's 4-layer and 3-layer front points on MiniLM-L6, and one
that cuts the hidden width instead of depth, when the elastic step has ``hidden_keep``):

- **budget** rows: the structure sliced from an elastic student trained ``--budgets`` steps
  (``400,1600,3200``; ``1ep`` / ``0.5ep`` give the budget in passes over the training data)
  with the study's ``elastic:`` settings, then finalized (``final_recipe``: distillation from
  the teacher for ``finalize.steps``). Both the search-time (slice only) and the final metric
  are recorded.
- **option** rows: the same at ``--option-budget`` (default: the first budget) for each
  training option (``OPTIONS``: in-place distillation, progressive shrinking, layer choice).
- **alone** rows: the same structure built by the per-trial path (``drop_layers`` +
  ``prune_structured`` + ``distill`` for the same ``finalize.steps``), no elastic student.

Every row goes through the search's trial path (``evaluate_recipe``: dev metric, latency
paired with the teacher in this process) and is appended to ``results/rows.jsonl`` as it
lands, with the machine's fingerprint; a rerun skips the rows already there, and elastic
students are cached in ``$AUTOSQUEEZE_CACHE/elastic`` (trained once per settings), so a run
can be split across sittings. ``results/table.md`` is rewritten after every row.

    python studies/elastic_quality/run.py --data-dir ../shared/data/glue                   # everything
    python studies/elastic_quality/run.py --data-dir ... --budgets 400,1600 --only budget  # the budget curve
    python studies/elastic_quality/run.py --data-dir ... --only alone                      # trained-alone rows
    python studies/elastic_quality/run.py --data-dir ... --only option --options inplace,progressive
    python studies/elastic_quality/run.py --smoke                                          # tiny, seconds-minutes

``--smoke`` builds a tiny 6-layer BERT, a synthetic SST-2 and a tiny study in a temporary
folder (its own cache too) and runs every kind of row at toy budgets: it checks the script,
not the elastic student.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
DEFAULT_STUDY = HERE.parent / "headline" / "study.yaml"

# the headline's front points on MiniLM-L6 (6 layers, 12 heads, FFN 1536, hidden 384)
STRUCTURES: dict[str, dict[str, Any]] = {
    "L4-H5-F0.5": {"layers": 4, "heads_keep": 5, "ffn_keep": 0.5},
    "L3-H5-F0.31": {"layers": 3, "heads_keep": 5, "ffn_keep": 0.3125},
    "L6-H5-F0.5-D0.5": {"layers": 6, "heads_keep": 5, "ffn_keep": 0.5, "hidden_keep": 0.5},  # width, not depth
}
SMOKE_STRUCTURES: dict[str, dict[str, Any]] = {  # the tiny model: 6 layers, 4 heads, FFN 64, hidden 32
    "L4-H2-F0.5": {"layers": 4, "heads_keep": 2, "ffn_keep": 0.5},
    "L3-H2-F0.31": {"layers": 3, "heads_keep": 2, "ffn_keep": 0.3125},
    "L6-H2-F0.5-D0.5": {"layers": 6, "heads_keep": 2, "ffn_keep": 0.5, "hidden_keep": 0.5},
}
# training options (elastic settings over the study's) and the layer sets their students are sliced with
OPTIONS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "inplace": ({"inplace_distill": True, "inplace_weight": 0.5}, ("even",)),
    "inplace-only": ({"inplace_distill": True, "inplace_weight": 1.0}, ("even",)),
    "inplace-hidden": ({"inplace_distill": True, "inplace_weight": 0.5, "inplace_hidden": True}, ("even",)),
    "progressive": ({"schedule": "progressive", "width_phase": 0.5}, ("even",)),
    "layers-first": ({"layer_choice": "first"}, ("first",)),
    "layers-mixed": ({"layer_choice": "mixed"}, ("even", "first")),
}
KINDS = ("budget", "option", "alone")


def parse_budget(text: str) -> dict[str, Any]:
    """``400`` -> {"steps": 400}; ``1ep`` / ``0.5ep`` -> {"epochs": ...}."""
    text = text.strip()
    try:
        if text.endswith("ep"):
            return {"epochs": float(text[:-2]), "steps": None}
        return {"steps": int(text), "epochs": None}
    except ValueError:
        raise SystemExit(f"--budgets: {text!r} is not a step count (400) or a number of epochs (1ep)") from None


def budget_name(budget: dict[str, Any]) -> str:
    return f"{budget['epochs']:g}ep" if budget.get("epochs") is not None else f"{budget['steps']}steps"


def has_param(method: str, name: str) -> bool:
    from autosqueeze import get_method

    return name in {f.name for f in dataclasses.fields(get_method(method).config_cls)}


# --- the plan: one row per (kind, variant, structure, layer set) ------------------------------
def plan(structures: dict[str, dict[str, Any]], budgets: list[dict[str, Any]], option_budget: dict[str, Any],
         options: list[str]) -> list[dict[str, Any]]:
    """Rows grouped by elastic student (each student trained once, then every structure sliced from it)."""
    hidden_ok = has_param("elastic", "hidden_keep")
    names = [n for n, st in structures.items() if hidden_ok or "hidden_keep" not in st]  # else not sliceable here
    rows: list[dict[str, Any]] = []
    for b in budgets:
        rows += [{"id": f"budget/{budget_name(b)}/{s}/even", "kind": "budget", "variant": budget_name(b),
                  "structure": s, "layer_set": "even", "elastic": dict(b)} for s in names]
    for opt in options:
        overrides, layer_sets = OPTIONS[opt]
        rows += [{"id": f"option/{opt}@{budget_name(option_budget)}/{s}/{ls}", "kind": "option", "variant": opt,
                  "structure": s, "layer_set": ls, "elastic": {**option_budget, **overrides}}
                 for ls in layer_sets for s in names]
    rows += [{"id": f"alone/{s}", "kind": "alone", "variant": "per-trial", "structure": s, "layer_set": "even",
              "elastic": None} for s in names]
    return rows


def selected(row: dict[str, Any], only: list[str] | None) -> bool:
    return not only or any(o == row["kind"] or o in row["id"] for o in only)


# --- recipes -------------------------------------------------------------------------------
def sliced_recipe(student_key: str, struct: dict[str, Any], layer_set: str) -> Any:
    from autosqueeze import Recipe, Step

    params = {"student": student_key, **struct}
    if layer_set != "even":
        params["layer_set"] = layer_set
    return Recipe(steps=[Step("elastic", params)])


def alone_recipe(struct: dict[str, Any], finalize: Any) -> tuple[Any, str]:
    """The per-trial path: drop_layers (even) + prune_structured (gradient importance) + distill."""
    from autosqueeze import Recipe, Step

    note = ""
    prune = {"heads_keep": struct["heads_keep"], "ffn_keep": struct["ffn_keep"]}
    if struct.get("hidden_keep", 1.0) != 1.0:
        if has_param("prune_structured", "hidden_keep"):
            prune["hidden_keep"] = struct["hidden_keep"]
        else:
            note = "prune_structured cannot cut the hidden width: trained alone at the full hidden width"
    distill = {"steps": finalize.steps, "lr": finalize.lr, "temperature": finalize.temperature,
               "alpha_logits": 1.0, "alpha_hidden": finalize.alpha_hidden}
    return Recipe(steps=[Step("drop_layers", {"keep": struct["layers"]}), Step("prune_structured", prune),
                         Step("distill", distill)]), note


# --- running -------------------------------------------------------------------------------
class Runner:
    def __init__(self, script: Any, out: Path) -> None:
        self.config = script.config
        self.out = out
        self.sc = script.prepare()
        self.machine = script.machine(self.sc)
        self.teacher_metric = self.sc.teacher.metrics[self.sc.main_metric]
        self.students: dict[str, Any] = {}

    def student(self, overrides: dict[str, Any]) -> Any:
        """The elastic student of the study's settings with ``overrides`` (cached on disk; trained once)."""
        from autosqueeze import fixed_threads, get_elastic_student, progress_printer

        settings = dataclasses.replace(self.config.elastic, **overrides)
        tag = json.dumps(settings.to_dict(), sort_keys=True)
        if tag not in self.students:
            sc = self.sc
            t0 = time.perf_counter()
            with fixed_threads(sc.train_threads):
                self.students[tag] = get_elastic_student(
                    sc.teacher.model, str(sc.teacher.info.get("weights_hash")), sc.data, settings,
                    self.config.recovery.train_subset, progress_printer())
            print(f"  elastic student {self.students[tag].key}: {time.perf_counter() - t0:.0f} s here "
                  f"(trained in {self.students[tag].info.get('train_s', 0):.0f} s)", flush=True)
        return self.students[tag]

    def measure(self, recipe: Any) -> dict[str, Any]:
        from autosqueeze import evaluate_recipe, with_provenance

        t0 = time.perf_counter()
        res = evaluate_recipe(with_provenance(recipe, self.sc), self.sc)
        return {"metric": res.metric, "speedup": res.speedup, "latency_ms": res.latency_ms,
                "status": res.status, "s": round(time.perf_counter() - t0, 1)}

    def run(self, row: dict[str, Any], struct: dict[str, Any]) -> dict[str, Any]:
        from autosqueeze import final_recipe

        finalize = self.config.finalize  # a narrower hidden width distills the teacher dimensions it kept
        notes: list[str] = []
        rec: dict[str, Any] = {k: row[k] for k in ("id", "kind", "variant", "structure", "layer_set")}
        rec.update({"structure_params": struct, "final_steps": finalize.steps,
                    "final_alpha_hidden": finalize.alpha_hidden, "teacher_metric": self.teacher_metric})
        if row["kind"] == "alone":
            recipe, note = alone_recipe(struct, finalize)
            final = self.measure(recipe)
            notes += [note] if note else []
            rec.update({"recipe": recipe.to_dict()["steps"]})
        else:
            student = self.student(row["elastic"])
            sliced = sliced_recipe(student.key, struct, row["layer_set"])
            search_time = self.measure(sliced)
            recipe = final_recipe(sliced, finalize)
            final = self.measure(recipe)
            rec.update({"student": student.key, "elastic_settings": student.info.get("settings"),
                        "elastic_steps": student.info.get("steps"), "elastic_epochs": student.info.get("epochs"),
                        "elastic_train_s": student.info.get("train_s"),
                        "search_time_metric": search_time["metric"], "recipe": recipe.to_dict()["steps"]})
        rec["note"] = "; ".join(notes)
        rec.update({"final_metric": final["metric"], "speedup": final["speedup"], "latency_ms": final["latency_ms"],
                    "status": final["status"], "row_s": final["s"], "machine": self.machine})
        if rec["final_metric"] is not None:
            rec["delta_pts"] = round(100 * (rec["final_metric"] - self.teacher_metric), 2)
        return rec


# --- tables --------------------------------------------------------------------------------
def _pct(v: Any) -> str:
    return f"{100 * v:.2f}" if isinstance(v, (int, float)) else ""


def write_table(out: Path, recs: list[dict[str, Any]]) -> None:
    if not recs:
        return
    t = recs[0]["teacher_metric"]
    lines = [f"# Elastic student quality\n\nTeacher dev metric {100 * t:.2f}. Cells: final metric (search-time "
             f"metric of the slice before finalization in brackets), after {recs[0]['final_steps']} final "
             f"distillation steps. Machines: "
             + "; ".join(sorted({json.dumps(r["machine"].get("cpu"), sort_keys=True) for r in recs})) + ".\n"]
    structures = list(dict.fromkeys(r["structure"] for r in recs))
    for kind, title in (("budget", "Against the elastic training budget"), ("option", "Against the training option"),
                        ("alone", "Trained alone (per-trial path)")):
        rows = [r for r in recs if r["kind"] == kind]
        if not rows:
            continue
        cols = list(dict.fromkeys(r["variant"] + ("" if r["layer_set"] == "even" else f" ({r['layer_set']})")
                                  for r in rows))
        lines += [f"\n## {title}\n", "| structure | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for s in structures:
            cells = []
            for c in cols:
                hit = [r for r in rows if r["structure"] == s and
                       r["variant"] + ("" if r["layer_set"] == "even" else f" ({r['layer_set']})") == c]
                r = hit[0] if hit else None
                cells.append("" if r is None else _pct(r.get("final_metric")) +
                             (f" ({_pct(r['search_time_metric'])})" if r.get("search_time_metric") is not None else ""))
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
    alone = {r["structure"]: r.get("final_metric") for r in recs if r["kind"] == "alone"}
    budgets = list(dict.fromkeys(r["variant"] for r in recs if r["kind"] == "budget"))
    if alone and budgets:
        lines += ["\n## Sliced vs trained alone (final metric; points against trained alone)\n",
                  "| structure | alone | " + " | ".join(f"sliced, {b}" for b in budgets) + " |",
                  "|---|---|" + "---|" * len(budgets)]
        for s in structures:
            if alone.get(s) is None:
                continue
            cells = []
            for b in budgets:
                hit = [r for r in recs if r["kind"] == "budget" and r["variant"] == b and r["structure"] == s]
                m = hit[0].get("final_metric") if hit else None
                cells.append("" if m is None else f"{_pct(m)} ({100 * (m - alone[s]):+.2f})")
            lines.append(f"| {s} | {_pct(alone[s])} | " + " | ".join(cells) + " |")
    notes = sorted({f"{r['structure']}: {r['note']}" for r in recs if r.get("note")})
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    (out / "table.md").write_text("\n".join(lines) + "\n")


# --- smoke: a tiny model, a synthetic SST-2, a tiny study ------------------------------------
def smoke_setup(root: Path) -> Path:
    """A tiny 6-layer BERT with a word-level vocabulary, a synthetic SST-2 and a study naming both."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast  # type: ignore[attr-defined]

    rng = random.Random(0)
    good, bad = ["good", "great", "fine", "charming", "lovely"], ["bad", "dull", "awful", "bleak", "weak"]
    filler = ["the", "film", "is", "a", "very", "plot", "story", "quite", "and", "its"]

    def sentence() -> tuple[str, int]:
        label = rng.randint(0, 1)
        words = rng.sample(filler, 4) + [rng.choice(good if label else bad)]
        rng.shuffle(words)
        return " ".join(words), label

    glue = root / "glue" / "SST-2"
    glue.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", 96), ("dev", 32)):
        rows = [sentence() for _ in range(n)]
        (glue / f"{name}.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    model_dir = root / "model"
    model_dir.mkdir(exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *good, *bad, *filler]
    (model_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab=str(model_dir / "vocab.txt"), do_lower_case=True)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=6, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    BertForSequenceClassification(cfg).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    study = {"name": "elastic_quality_smoke", "task": "sst2", "model": str(model_dir), "search_space": "elastic",
             "teacher": {"steps": 6, "batch_size": 8, "max_seq_len": 16, "lr": 1e-3},
             "recovery": {"batch_size": 8, "max_seq_len": 16},
             "elastic": {"steps": 2, "importance_batches": 1},
             "finalize": {"steps": 2, "top_k": 1},
             "hardware": {"threads": 1, "seq_len": 16},
             "latency": {"warmup": 1, "repeats": 3, "min_time_s": 0.0, "idle_wait_s": 0.0},
             "eval": {"batch_size": 32}}
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    p.add_argument("--study", default=str(DEFAULT_STUDY))
    p.add_argument("--budgets", default="400,1600,3200", help="elastic budgets: steps (400) or epochs (1ep)")
    p.add_argument("--option-budget", help="the budget the option rows train at (default: the first of --budgets)")
    p.add_argument("--options", default=",".join(OPTIONS), help=f"training options to compare ({', '.join(OPTIONS)})")
    p.add_argument("--only", action="append", help="only rows of this kind (budget, option, alone) or whose id "
                                                   "contains this text (e.g. L3-H5, inplace); repeatable")
    p.add_argument("--out", help="results folder (default: studies/elastic_quality/results; --smoke: a temp folder)")
    p.add_argument("--smoke", action="store_true", help="a tiny model, data and study in a temp folder; toy budgets")
    p.add_argument("--list", action="store_true", help="print the planned rows and exit")
    p.add_argument("--tables-only", action="store_true", help="rewrite table.md from rows.jsonl")
    args = p.parse_args(argv)
    from autosqueeze import StudyScript, load_study_config, script_logging

    script_logging()

    structures = STRUCTURES
    data_dir = args.data_dir
    study = Path(args.study)
    out = Path(args.out) if args.out else HERE / "results"
    if args.smoke:
        root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="elastic_quality_smoke_"))
        os.environ["AUTOSQUEEZE_CACHE"] = str(root / "cache")  # never the real cache
        study, data_dir, structures, out = smoke_setup(root), str(root / "glue"), SMOKE_STRUCTURES, root / "results"
        if args.budgets == p.get_default("budgets"):
            args.budgets = "2,4"
        print(f"smoke run in {root}", flush=True)
    budgets = [parse_budget(b) for b in args.budgets.split(",") if b.strip()]
    option_budget = parse_budget(args.option_budget) if args.option_budget else budgets[0]
    options = [o.strip() for o in args.options.split(",") if o.strip()]
    unknown = [o for o in options if o not in OPTIONS]
    if unknown:
        raise SystemExit(f"--options: unknown {unknown}; known: {list(OPTIONS)}")

    script = StudyScript(load_study_config(study), data_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows_file = out / "rows.jsonl"
    done = {}
    if rows_file.exists():
        for line in rows_file.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                done[rec["id"]] = rec
    rows = [r for r in plan(structures, budgets, option_budget, options) if selected(r, args.only)]
    if args.list:
        for r in rows:
            print(("done " if r["id"] in done else "todo ") + r["id"])
        return 0
    if args.tables_only:
        write_table(out, list(done.values()))
        return 0
    todo = [r for r in rows if r["id"] not in done]
    print(f"{len(todo)} rows to run ({len(rows) - len(todo)} of the selection already in {rows_file})", flush=True)
    if not todo:
        write_table(out, list(done.values()))
        return 0
    runner = Runner(script, out)
    print(f"teacher: {runner.sc.main_metric} {runner.teacher_metric:.4f}", flush=True)
    for row in todo:
        t0 = time.perf_counter()
        try:
            rec = runner.run(row, structures[row["structure"]])
        except Exception as err:  # a row that fails is reported; the others go on
            print(f"{row['id']}: FAILED {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                  flush=True)
            continue
        rec["wall_s"] = round(time.perf_counter() - t0, 1)
        done[rec["id"]] = rec
        with rows_file.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        write_table(out, list(done.values()))
        print(f"{rec['id']:48s} final {_pct(rec['final_metric'])} ({rec.get('delta_pts', '')}) "
              f"search-time {_pct(rec.get('search_time_metric'))}  {rec.get('speedup') or 0:.2f}x  "
              f"[{rec['wall_s']:.0f} s]", flush=True)
    print(f"results: {rows_file}, {out / 'table.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
