"""The joint elastic space against the headline's elastic + int8 space at equal search wall time
(issue 24, item 4).

Two arms on the headline's setup (``studies/headline/study.yaml``: MiniLM-L6, SST-2, its cached
1,500-step teacher, its elastic student settings), three seeds each:

- ``elastic_int8``: the headline's space today (``studies/headline/space.yaml``: depth, heads, FFN
  and hidden width, optional dynamic int8);
- ``joint_elastic``: the built-in ``joint_elastic`` space (the same slice in fractions, plus a
  pruned vocabulary, exits through the student's own exit heads, dynamic / static int8, int4
  weight-only, bf16, int8 / int4 embedding tables; steps this runtime or CPU cannot run are dropped
  by the product, as in any study).

Two elastic students: the joint space's ``early_exit`` step takes the student's exit heads, so its
study trains the student with ``elastic.exits`` (``search.study.settle_for_space``: a
different cache key); ``elastic_int8`` slices the headline's student (exits off, key unchanged).
Each is trained once and cached in ``$AUTOSQUEEZE_CACHE/elastic`` by the search's own preparation,
before the study's first trial: training, the teacher, the baseline and the references are never on
the clock (``--prepare`` does all of it up front and stops).

The clock: a study's search time is the sum of its trials' wall times (Optuna's start to complete:
sampling, slicing, timing, evaluation); a trial left by a killed process does not count. Each study
runs with the product's ``run_search`` until that sum reaches ``--minutes``; only the trials that
finished within it are scored. Studies run one after another in ABBA order over seeds (A0 B0 B1 A1
A2 B2), so machine drift hits both arms alike. Each has its own database,
``results/<arm>-seed<k>.db``: a rerun continues a study up to its budget and never overwrites.

Per arm and seed (a row in ``results/rows.jsonl`` as each finishes, with the machine's
fingerprint; ``results/table.md`` rewritten from the rows, ``--tables-only``): the hypervolume of
the search-time front (accuracy vs speedup over the fp32 teacher, the reference point and the
definition of ``studies/search_efficiency/run.py``), trials per hour (all and distinct recipes), and
the smallest size within 1 point of the teacher's search-time metric, with and without embeddings.

``--finalize`` (after the searches; resumable): per study, the smallest trial (size with embeddings)
within each of ``--final-within`` points of the teacher at search time (default 1 and 3: a slice gains
points when it is trained) is finalized by the product's ``run_finalize`` (``finalize.steps`` of
distillation, every non-training choice kept), and the row gains ``final``: each finalized point and
the smallest within 1 point of the teacher after finalization, with and without embeddings.

    python studies/joint_elastic/run.py --data-dir ../shared/data/glue --minutes 10     # the comparison
    python studies/joint_elastic/run.py --data-dir ../shared/data/glue --minutes 10 --finalize  # + final sizes
    python studies/joint_elastic/run.py --data-dir ../shared/data/glue --prepare        # teacher + students only
    python studies/joint_elastic/run.py --tables-only                                   # table.md from rows.jsonl
    python studies/joint_elastic/run.py --smoke                                         # tiny, seconds per arm
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
STUDIES = HERE.parent
HEADLINE = STUDIES / "headline" / "study.yaml"
ARMS = {"elastic_int8": str(STUDIES / "headline" / "space.yaml"), "joint_elastic": "joint_elastic"}
WITHIN = 0.01  # "within 1 point" of the teacher's search-time metric (a fraction: accuracy is in [0, 1])
FINAL_WITHIN = "1,3"  # finalize the smallest trial within each of these many points of the teacher at search time


def _search_efficiency() -> Any:
    """``studies/search_efficiency/run.py``: its hypervolume and reference point are reused as they are."""
    spec = importlib.util.spec_from_file_location("search_efficiency_run", STUDIES / "search_efficiency" / "run.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_SE = _search_efficiency()
hypervolume, REFERENCE = _SE.hypervolume, _SE.REFERENCE  # (accuracy 0.5: chance on SST-2, speedup 1.0)


class TimeUp(Exception):
    """Raised by the clock callback once a study's search time reaches its budget (the trial is stored)."""


# --- the clock ------------------------------------------------------------------------------------
def trial_seconds(t: Any) -> float:
    return (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start \
        else 0.0


def clocked_trials(study: Any) -> list[Any]:
    """Finished trials in order, without those a killed process left (failed on resume: not the arm's cost)."""
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [t for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number) if t.state in done
            and not str(t.system_attrs.get("fail_reason", "")).startswith("worker ")]


def within_budget(trials: list[Any], budget_s: float) -> tuple[list[Any], float]:
    """The trials that finished within ``budget_s`` of search time, and the time they took."""
    kept, used = [], 0.0
    for t in trials:
        if used + trial_seconds(t) > budget_s:
            break
        used += trial_seconds(t)
        kept.append(t)
    return kept, used


def stop_at(budget_s: float, used_s: float) -> Any:
    """A run_search callback that stops the search once the study's search time reaches ``budget_s``."""
    clock = {"used": used_s}

    def callback(study: Any, trial: Any) -> None:
        clock["used"] += trial_seconds(trial)
        ua = trial.user_attrs
        if ua.get("status") == "complete":
            print(f"    [{clock['used']:6.0f}/{budget_s:.0f} s] trial {trial.number}: {ua.get('metric', 0):.4f} at "
                  f"{ua.get('speedup', 0):.2f}x, {'+'.join(ua.get('methods', []))}", flush=True)
        if clock["used"] >= budget_s:
            raise TimeUp
    return callback


# --- one study per arm and seed -------------------------------------------------------------------
def arm_config(base: Any, arm: str, seed: int, results: Path) -> Any:
    from autosqueeze import resolve_space

    return dataclasses.replace(base, name=f"{arm}-seed{seed}", search_space=resolve_space(ARMS[arm], base.folder),
                               seed=seed, trials=10**6, storage=str((results / f"{arm}-seed{seed}.db").resolve()))


def load_study(config: Any) -> Any | None:
    from autosqueeze import open_study, storage_exists

    return open_study(config, create=False) if storage_exists(config.storage_url) else None


def run_arm(config: Any, data_dir: str, budget_s: float) -> str:
    """Search until the study's search time reaches ``budget_s``: ``time`` once it has, ``exhausted`` when
    the space ran out of new recipes first, ``failed`` when trials kept failing (no row: a rerun retries)."""
    from autosqueeze import TrialsKeepFailing, progress_printer, run_search

    study = load_study(config)
    used = within_budget(clocked_trials(study), float("inf"))[1] if study is not None else 0.0
    if used >= budget_s:
        return "time"
    print(f"  {config.name}: {used:.0f} of {budget_s:.0f} s searched so far", flush=True)
    try:
        summary = run_search(config, data_dir, progress=progress_printer(), callbacks=[stop_at(budget_s, used)])
    except TimeUp:
        return "time"
    except TrialsKeepFailing as err:
        print(f"  {config.name}: FAILED: {err}", flush=True)
        return "failed"
    print(f"  {config.name}: the search stopped before its time ({summary.done} results, "
          f"exhausted: {summary.exhausted})", flush=True)
    return "exhausted"


def exits_verdict(points: list[tuple[float, float, bool]]) -> dict[str, Any]:
    """Do exits pay on this front? ``points``: (metric, speedup, has_exit) of the feasible trials.

    An exit point's margin is its metric minus the best metric of the exit-free points at least as fast
    (in points; ``None`` when no exit-free point is that fast). ``pays``: some exit point's margin is
    positive (or no exit-free point reaches its speed), i.e. it dominates every exit-free point at its
    latency; otherwise ``shortfall_pts`` is by how much the best exit point falls short."""
    exits = [(m, s) for m, s, e in points if e]
    plain = [(m, s) for m, s, e in points if not e]
    margins: list[tuple[float | None, float, float]] = []
    for m, s in exits:
        rivals = [pm for pm, ps in plain if ps >= s]
        margins.append((None if not rivals else 100 * (m - max(rivals)), m, s))
    out: dict[str, Any] = {"exit_trials": len(exits), "plain_trials": len(plain)}
    if not margins:
        return {**out, "pays": None, "best": None}
    beaten = [x for x in margins if x[0] is not None and x[0] > 0]  # it beats exit-free points as fast
    unrivalled = [x for x in margins if x[0] is None]  # no exit-free point is as fast
    if beaten:
        best = max(beaten, key=lambda x: (float(x[0] or 0.0), x[2]))
    elif unrivalled:
        best = max(unrivalled, key=lambda x: (x[1], x[2]))
    else:
        best = max(margins, key=lambda x: (float(x[0] or 0.0), x[2]))
    pays = bool(beaten or unrivalled)
    out.update({"pays": pays, "best": {"metric": best[1], "speedup": best[2],
                                      "margin_pts": None if best[0] is None else round(best[0], 2)},
                "shortfall_pts": None if pays else round(-float(best[0] or 0.0), 2)})
    return out


def score(config: Any, arm: str, seed: int, minutes: float, machine: dict[str, Any]) -> dict[str, Any]:
    """The row of one study: its trials within the budget, scored."""
    from autosqueeze import TrialRecord, pareto_front

    study = load_study(config)
    assert study is not None, config.name
    kept, used = within_budget(clocked_trials(study), 60 * minutes)
    records = [TrialRecord.from_trial(t) for t in kept]
    ok = [r for r in records if r.feasible and r.metric is not None and r.speedup is not None]
    teacher = float(study.user_attrs["teacher"]["search_metric"])
    near = [r for r in ok if float(r.metric or 0.0) >= teacher - WITHIN and r.size_pct]
    students = {s["params"].get("student") for t in clocked_trials(study)
                for s in (TrialRecord.from_trial(t).recipe or {}).get("steps", []) if s.get("method") == "elastic"}

    def methods(r: TrialRecord) -> list[str]:
        return [str(st.get("method")) for st in (r.recipe or {}).get("steps", [])]

    def point(r: TrialRecord | None) -> dict[str, Any] | None:
        return None if r is None else {
            "trial": r.number, "metric": r.metric, "delta_pts": round(100 * (float(r.metric or 0.0) - teacher), 2),
            "speedup": r.speedup, "size_pct": (r.size_pct or {}).get("total"),
            "size_no_emb_pct": (r.size_pct or {}).get("non_embedding"),
            "recipe": r.recipe_summary}

    return {
        "id": row_id(arm, seed, minutes), "arm": arm, "seed": seed, "minutes": minutes,
        "space": _shown(Path(config.search_space)), "study": config.name, "student": sorted(s for s in students if s),
        "teacher_metric": teacher, "search_s": round(used, 1), "trials": len(kept), "complete": len(ok),
        "failed": sum(r.state == "FAIL" for r in records),
        "distinct": sum(r.duplicate_of is None for r in records),
        "trials_per_hour": 3600 * len(kept) / used if used else None,
        "distinct_per_hour": 3600 * sum(r.duplicate_of is None for r in records) / used if used else None,
        "hypervolume": hypervolume([(r.metric, r.speedup) for r in ok]), "reference": list(REFERENCE),
        "smallest_within_1pt": point(min(near, key=size_of, default=None)),
        "smallest_no_emb_within_1pt": point(min(near, key=lambda r: size_of(r, "non_embedding"), default=None)),
        "fastest_within_1pt": point(max(near, key=lambda r: float(r.speedup or 0.0), default=None)),
        "front": [point(r) for r in pareto_front(ok)],
        "exits": exits_verdict([(float(r.metric or 0.0), float(r.speedup or 0.0), "early_exit" in methods(r))
                                for r in ok]),
        "machine": machine, "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# --- the final front's sizes ----------------------------------------------------------------------
def size_of(r: Any, part: str = "total") -> float:
    return float((r.size_pct or {}).get(part, 1e9))


def final_candidates(records: list[Any], teacher: float, within_pts: list[float]) -> list[int]:
    """For each threshold (points below the teacher's search-time metric, smallest first), the smallest
    feasible trial (size with embeddings; the more accurate on a tie) within it; each trial once."""
    ok = [r for r in records if r.feasible and r.metric is not None and r.size_pct]
    picks: list[int] = []
    for w in sorted(within_pts):
        near = [r for r in ok if float(r.metric) >= teacher - w / 100]
        if near:
            best = min(near, key=lambda r: (size_of(r), -float(r.metric), r.number))
            if best.number not in picks:
                picks.append(best.number)
    return picks


def final_section(study: Any, candidates: list[int], within_pts: list[float]) -> dict[str, Any]:
    """The row's ``final``: each finalized candidate, and the smallest within 1 point of the teacher after
    finalization (the teacher's metric is the same dev set and evaluation as the final points')."""
    from autosqueeze import StudyRecord, final_records

    teacher = float(study.user_attrs["teacher"]["search_metric"])
    finals = [r for r in final_records(study) if r.number in candidates and r.metric is not None]
    near = [r for r in finals if float(r.metric or 0.0) >= teacher - WITHIN]

    def point(r: Any | None) -> dict[str, Any] | None:
        return None if r is None else {
            "trial": r.number, "search_metric": (r.search or {}).get("metric"), "metric": r.metric,
            "search_delta_pts": round(100 * (float((r.search or {}).get("metric") or 0.0) - teacher), 2),
            "delta_pts": round(100 * (float(r.metric or 0.0) - teacher), 2), "speedup": r.speedup,
            "size_pct": (r.size_pct or {}).get("total"), "size_no_emb_pct": (r.size_pct or {}).get("non_embedding"),
            "recipe": r.recipe_summary}

    summary = StudyRecord.from_study(study).finalize or {}
    return {"within_pts": within_pts, "candidates": candidates, "settings": summary.get("settings"),
            "points": [point(r) for r in sorted(finals, key=size_of)],
            "smallest_within_1pt": point(min(near, key=size_of, default=None)),
            "smallest_no_emb_within_1pt": point(min(near, key=lambda r: size_of(r, "non_embedding"), default=None))}


def finalize_arm(config: Any, data_dir: str, minutes: float, within_pts: list[float]) -> dict[str, Any]:
    """Finalize the study's candidates among its trials within the budget (``run_finalize``: resumable)."""
    from autosqueeze import TrialRecord, progress_printer, run_finalize

    study = load_study(config)
    assert study is not None, config.name
    kept, _ = within_budget(clocked_trials(study), 60 * minutes)
    teacher = float(study.user_attrs["teacher"]["search_metric"])
    candidates = final_candidates([TrialRecord.from_trial(t) for t in kept], teacher, within_pts)
    if candidates:
        print(f"  {config.name}: finalizing trials {candidates}", flush=True)
        run_finalize(config, data_dir, trials=candidates, progress=progress_printer())
    return final_section(study, candidates, within_pts)  # its attributes and trials are read from storage


def parse_within(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",")]
    except ValueError:
        values = []
    if not values or any(not 0 < v < 100 for v in values):
        raise SystemExit(f"--final-within: {text!r} is not a list of points below the teacher (e.g. 1,3)")
    return values


def _shown(path: Path) -> str:
    """A path as the rows show it: relative to the repository when inside it (a built-in space: its file name)."""
    return str(path.relative_to(STUDIES.parent)) if path.is_relative_to(STUDIES.parent) else path.name


# --- tables ---------------------------------------------------------------------------------------
def _fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def _summary(values: list[Any], spec: str) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    return f"{format(statistics.median(vals), spec)} [{format(min(vals), spec)}–{format(max(vals), spec)}]" + (
        f" ({len(vals)}/{len(values)})" if len(vals) < len(values) else "")


def _exits_cell(v: dict[str, Any] | None) -> str:
    if not v or not v.get("exit_trials"):
        return "-"
    b = v["best"]
    margin = "no exit-free point as fast" if b["margin_pts"] is None else f"{b['margin_pts']:+.2f} pts"
    return f"{'pays' if v['pays'] else 'short'}: {margin} at {b['speedup']:.2f}x ({v['exit_trials']} exit trials)"


def write_table(out: Path, rows: list[dict[str, Any]]) -> None:
    def size(r: dict[str, Any], key: str, field: str) -> Any:
        return (r.get(key) or {}).get(field)

    lines = ["# Joint elastic space vs the headline's elastic + int8 space, equal search wall time", "",
             "Hypervolume of the search-time (accuracy, speedup over the fp32 teacher) front above "
             f"{tuple(REFERENCE)}; "
             "trials per hour over the search time (distinct recipes in brackets); smallest size (% of the teacher's "
             "bytes, with embeddings / without) among the trials within 1 point of the teacher's search-time metric. "
             "Only trials that finished within the budget count.", "",
             "Exits: the best exit point's margin over the exit-free points at least as fast (points; positive: it "
             "dominates them at its latency).", "",
             "| arm | seed | minutes | trials | trials/hour | hypervolume | smallest within 1 pt (size %) "
             "| smallest no-emb within 1 pt (no-emb size %) | fastest within 1 pt | final: smallest within 1 pt "
             "(size % / no-emb %) | exits | machine |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["minutes"], r["arm"], r["seed"])):
        s, n, f = r.get("smallest_within_1pt"), r.get("smallest_no_emb_within_1pt"), r.get("fastest_within_1pt")
        lines.append(
            f"| {r['arm']} | {r['seed']} | {r['minutes']:g} | {r['trials']} | {_fmt(r['trials_per_hour'], '.0f')} "
            f"({_fmt(r['distinct_per_hour'], '.0f')}) | {r['hypervolume']:.4f} | "
            + (f"{s['size_pct']:.1f} (trial {s['trial']}, {s['delta_pts']:+.2f} pts, {s['speedup']:.2f}x)"
               if s else "-")
            + " | " + (f"{n['size_no_emb_pct']:.1f} (trial {n['trial']})" if n else "-")
            + " | " + (f"{f['speedup']:.2f}x ({f['delta_pts']:+.2f} pts)" if f else "-")
            + " | " + _final_cell(r.get("final"))
            + " | " + _exits_cell(r.get("exits"))
            + f" | {(r.get('machine') or {}).get('cpu', {}).get('model', '?')} |")
    lines += ["", "Summary: median [min–max] over seeds.", "",
              "| arm | minutes | seeds | hypervolume | trials/hour | distinct/hour | smallest within 1 pt (size %) "
              "| no-emb size % within 1 pt | final: smallest within 1 pt (size %) | final: no-emb size % within 1 pt |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for arm, minutes in sorted({(r["arm"], r["minutes"]) for r in rows}, key=lambda k: (k[1], k[0])):
        rs = [r for r in rows if r["arm"] == arm and r["minutes"] == minutes]
        lines.append(f"| {arm} | {minutes:g} | {len(rs)} | {_summary([r['hypervolume'] for r in rs], '.4f')} | "
                     f"{_summary([r['trials_per_hour'] for r in rs], '.0f')} | "
                     f"{_summary([r['distinct_per_hour'] for r in rs], '.0f')} | "
                     f"{_summary([size(r, 'smallest_within_1pt', 'size_pct') for r in rs], '.1f')} | "
                     f"{_summary([size(r, 'smallest_no_emb_within_1pt', 'size_no_emb_pct') for r in rs], '.1f')} | "
                     f"{_final_summary(rs, 'smallest_within_1pt', 'size_pct')} | "
                     f"{_final_summary(rs, 'smallest_no_emb_within_1pt', 'size_no_emb_pct')} |")
    finalized = [(r, p) for r in sorted(rows, key=lambda r: (r["minutes"], r["arm"], r["seed"]))
                 for p in (r.get("final") or {}).get("points", [])]
    if finalized:
        lines += ["", "Finalized points (the smallest trial within each of the `--final-within` points of the teacher "
                  "at search time, distilled `finalize.steps` from the teacher; speedup and metric measured again):",
                  "", "| arm | seed | trial | search-time Δ pts | final Δ pts | final speedup | size % | no-emb size % "
                  "| recipe |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['arm']} | {r['seed']} | {p['trial']} | {p['search_delta_pts']:+.2f} | {p['delta_pts']:+.2f} | "
                  f"{_fmt(p['speedup'], '.2f')}x | {_fmt(p['size_pct'])} | {_fmt(p['size_no_emb_pct'])} | "
                  f"{p['recipe']} |" for r, p in finalized]
    (out / "table.md").write_text("\n".join(lines) + "\n")


def _final_cell(final: dict[str, Any] | None) -> str:
    if not final:
        return "-"
    s, n = final.get("smallest_within_1pt"), final.get("smallest_no_emb_within_1pt")
    if not s or not n:
        return f"none of {len(final.get('points') or [])} finalized"
    return (f"{s['size_pct']:.1f} (trial {s['trial']}, {s['delta_pts']:+.2f} pts, {_fmt(s['speedup'], '.2f')}x) / "
            f"{n['size_no_emb_pct']:.1f}")


def _final_summary(rows: list[dict[str, Any]], key: str, field: str) -> str:
    finalized = [r for r in rows if r.get("final")]
    if not finalized:
        return "-"
    return _summary([((r["final"].get(key) or {}).get(field)) for r in finalized], ".1f")


def read_rows(path: Path) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                rows[json.loads(line)["id"]] = json.loads(line)
    return rows


# --- smoke: a tiny 6-layer, 12-head BERT (the headline space's knobs fit it), a synthetic SST-2 ----
def smoke_setup(root: Path) -> Path:
    """The headline's study file with a tiny model, a synthetic SST-2 and toy budgets, in ``root``."""
    import random

    import yaml
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast  # type: ignore[attr-defined]

    rng = random.Random(0)
    good, bad = ["good", "great", "fine", "charming", "lovely"], ["bad", "dull", "awful", "bleak", "weak"]
    filler = ["the", "film", "is", "a", "very", "plot", "story", "quite", "and", "its"]
    glue = root / "glue" / "SST-2"
    glue.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", 96), ("dev", 48)):
        lines = []
        for _ in range(n):
            label = rng.randint(0, 1)
            words = [*rng.sample(filler, 4), rng.choice(good if label else bad)]
            rng.shuffle(words)
            lines.append(f"{' '.join(words)}\t{label}\n")
        (glue / f"{name}.tsv").write_text("sentence\tlabel\n" + "".join(lines))
    model_dir = root / "model"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *good, *bad,
                                                    *filler]) + "\n")
    tok = BertTokenizerFast(vocab=str(model_dir / "vocab.txt"), do_lower_case=True)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=48, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=96, max_position_embeddings=64)
    BertForSequenceClassification(cfg).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    study = yaml.safe_load(HEADLINE.read_text())
    study.update(name="joint_elastic_smoke", model=str(model_dir), search_space=ARMS["elastic_int8"],
                 teacher={"steps": 40, "batch_size": 8, "max_seq_len": 16, "lr": 1e-3},
                 recovery={"batch_size": 8, "max_seq_len": 16}, elastic={"steps": 2, "importance_batches": 1},
                 finalize={"steps": 2, "top_k": 1}, hardware={"threads": 1, "seq_len": 16},
                 latency={"warmup": 1, "repeats": 3, "min_time_s": 0.0, "idle_wait_s": 0.0}, eval={"batch_size": 32})
    study.pop("storage", None)
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def prepare_students(base: Any, data_dir: str, results: Path) -> None:
    """The teacher and both elastic students, trained or loaded (what the search prepares before its clock)."""
    from autosqueeze import load_space, prepare_study, progress_printer, settle_for_space

    for arm in ARMS:
        config = arm_config(base, arm, 0, results)
        space = load_space(config.search_space)
        config = settle_for_space(space, config)
        sc = prepare_study(config, data_dir, None, progress_printer(), space=space)
        print(f"{arm}: elastic student {sc.prepared['elastic']['student']} (exits: {config.elastic.exits})",
              flush=True)


def abba(arms: list[str], seeds: int) -> list[tuple[int, str]]:
    """(seed, arm) in ABBA order over seeds (A0 B0 B1 A1 A2 B2): machine drift hits both arms alike."""
    return [(seed, arm) for seed in range(seeds) for arm in (arms if seed % 2 == 0 else arms[::-1])]


def row_id(arm: str, seed: int, minutes: float) -> str:
    return f"{arm}/seed{seed}/{minutes:g}min"


def save_row(rows: dict[str, dict[str, Any]], rows_file: Path, out: Path, row: dict[str, Any]) -> dict[str, Any]:
    """Append ``row`` to ``rows.jsonl`` (a later line of the same id replaces it: ``read_rows``), keep it in
    ``rows`` and rewrite the table."""
    rows[row["id"]] = row
    with rows_file.open("a") as f:
        f.write(json.dumps(row, default=str) + "\n")
    write_table(out, list(rows.values()))
    return row


def finalize_rows(rows: dict[str, dict[str, Any]], rows_file: Path, out: Path, base: Any, data_dir: str,
                  minutes: float, args: argparse.Namespace) -> None:
    """``final`` for every row of this budget that lacks it (or was finalized with other thresholds), in the
    searches' ABBA order; each updated row is appended (``read_rows`` keeps the last line of an id)."""
    for seed, arm in abba(args.arms, args.seeds):
        key = row_id(arm, seed, minutes)
        row = rows.get(key)
        if row is None or (row.get("final") or {}).get("within_pts") == args.final_within:
            continue
        print(f"{key}: finalizing", flush=True)
        final = finalize_arm(arm_config(base, arm, seed, out), data_dir, minutes, args.final_within)
        save_row(rows, rows_file, out, {**row, "final": {
            **final, "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}})
        print(f"  {key}: final {_final_cell(final)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    p.add_argument("--study", default=str(HEADLINE), help="the base study file (its space is replaced per arm)")
    p.add_argument("--minutes", type=float, help="search wall time per arm and seed (default 10; --smoke 0.15)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    p.add_argument("--out", help="results folder (default: studies/joint_elastic/results; --smoke: a temp folder)")
    p.add_argument("--prepare", action="store_true", help="train or load the teacher and both students, then stop")
    p.add_argument("--finalize", action="store_true",
                   help="after the searches: finalize each study's smallest trials near the teacher (final sizes)")
    p.add_argument("--final-within", default=FINAL_WITHIN, type=parse_within, metavar="PTS[,PTS...]",
                   help=f"finalize the smallest trial within each of these many points of the teacher at search "
                        f"time (default {FINAL_WITHIN})")
    p.add_argument("--tables-only", action="store_true", help="rewrite table.md from rows.jsonl")
    p.add_argument("--smoke", action="store_true", help="a tiny model, data and study in a temp folder")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(args.out) if args.out else HERE / "results"
    study, data_dir, minutes = Path(args.study), args.data_dir, args.minutes or 10.0
    if args.smoke:
        root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="joint_elastic_smoke_"))
        os.environ["AUTOSQUEEZE_CACHE"] = str(root / "cache")  # never the real cache
        os.environ.setdefault("AUTOSQUEEZE_INT8_PROBE", "0")  # a tiny model's int8 speed is noise: keep the spaces
        study, data_dir, out, minutes = smoke_setup(root), str(root / "glue"), root / "results", args.minutes or 0.15
        print(f"smoke run in {root}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    rows_file = out / "rows.jsonl"
    rows = read_rows(rows_file)
    if args.tables_only:
        write_table(out, list(rows.values()))
        return 0

    from autosqueeze import hardware_fingerprint, load_study_config, resolve_data_dir

    base = load_study_config(study)
    data_dir = resolve_data_dir(data_dir or base.data_dir)
    if data_dir is None:
        print("error: no GLUE folder: give --data-dir (e.g. ../shared/data/glue) or set AUTOSQUEEZE_GLUE_DIR",
              file=sys.stderr)
        return 2
    if args.prepare:
        prepare_students(base, data_dir, out)
        return 0
    machine = hardware_fingerprint(base.hardware.threads, base.hardware.runtime)
    print("two elastic students: elastic_int8 slices the study's student as it is; joint_elastic's space takes "
          "exit heads, so its student is trained with elastic.exits (another cache key). Each is trained once, "
          "before its first study's first trial: training is never on the clock.", flush=True)
    t0 = time.time()
    for seed, arm in abba(args.arms, args.seeds):
        key = row_id(arm, seed, minutes)
        if key in rows:
            continue
        config = arm_config(base, arm, seed, out)
        print(f"[{time.time() - t0:6.0f} s] {arm} seed {seed}: {minutes:g} min of search", flush=True)
        stopped = run_arm(config, data_dir, 60 * minutes)
        if stopped == "failed":
            continue
        r = save_row(rows, rows_file, out, {**score(config, arm, seed, minutes, machine), "stopped": stopped})
        print(f"  {key}: {r['trials']} trials ({_fmt(r['trials_per_hour'], '.0f')}/hour), "
              f"hypervolume {r['hypervolume']:.4f}", flush=True)
    if args.finalize:
        finalize_rows(rows, rows_file, out, base, data_dir, minutes, args)
    write_table(out, list(rows.values()))
    print(f"results: {rows_file}, {out / 'table.md'} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
