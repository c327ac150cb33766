"""The second fidelity: train the front's candidates at the study's final budget, measure again.

During the search a trial is judged cheaply (an elastic slice with no training, or a short
recovery). ``autosqueeze finalize`` takes the candidates that matter — the search-time
Pareto front, spread over latency, at most ``finalize.top_k`` of them — and trains each again
at full fidelity: distillation from the teacher (soft logits + hidden states) starting from
the sliced weights, for ``finalize.steps`` steps, followed by the recipe's later steps
(int8 ...). Each is then measured exactly like a trial (full dev set, latency paired with the
teacher in this process) and stored in the study (``report/fidelity.py``), one candidate at
a time, so an interrupted run resumes where it stopped. Finally Kendall's τ between the
search-time and final metrics says how far the search-time ranking can be trusted.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..methods import Stage, get_method, recovery_method
from ..recipe import Recipe, Step
from ..study_config import FinalizeSettings, StudyConfig
from ..train import Progress
from .objective import evaluate_recipe
from .pareto import kendall_tau, pareto_front
from .study_record import StudyRecord
from .trial_record import TrialRecord, trial_records

log = logging.getLogger(__name__)


def final_recipe(recipe: Recipe, settings: FinalizeSettings) -> Recipe:
    """The recipe trained at full fidelity: its recovery step (the registry's ``recovery_method``:
    ``distill``) at ``settings.steps``, or one inserted after the structural steps (a recipe that
    changes no structure, or with a method that trains itself at full fidelity, ``final_as_is``:
    QAT, is returned unchanged).

    Only training changes: every other step (the slice, a pruned vocabulary, the precision, the
    embedding tables, each with its params) stays as the search chose it, in its order, and so
    does the profile (the trial's runtime and ONNX Runtime graph); :func:`search_choices` of the
    result equals that of ``recipe`` (``run_finalize`` checks it)."""
    steps = list(recipe.steps)
    methods = [s.method for s in steps]
    recovery = recovery_method()
    assert recovery.recovery is not None  # what recovery_method finds
    if any(get_method(m).final_as_is for m in methods) or settings.steps == 0:
        return recipe
    if recovery.name in methods:
        i = methods.index(recovery.name)
        steps[i] = Step(recovery.name, recovery.recovery(steps[i].params, settings), steps[i].version)
    else:
        structural = [i for i, s in enumerate(steps) if get_method(s.method).stage < Stage.TRAIN]
        if not structural:
            return recipe
        steps.insert(structural[-1] + 1, Step(recovery.name, recovery.recovery(None, settings), recovery.version))
    return Recipe(steps=steps, base_model=recipe.base_model, task=recipe.task, seed=recipe.seed,
                  teacher=recipe.teacher, data=recipe.data, profile=recipe.profile, versions=recipe.versions,
                  notes=[*recipe.notes, f"final fidelity: distilled {settings.steps} steps from the teacher"])


def search_choices(recipe: Recipe) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
    """What a search chose that is not training: the non-training steps (method, params) in order,
    and the runtime. Finalization must leave it as it is."""
    steps = [(s.method, dict(s.params)) for s in recipe.steps if not get_method(s.method).trains]
    return steps, (recipe.profile or {}).get("runtime")


def pick_candidates(records: list[TrialRecord], top_k: int) -> list[TrialRecord]:
    """The search-time front (one per recipe), thinned to ``top_k`` points spread over latency."""
    seen: set[str] = set()
    front = []
    for r in pareto_front(records):  # the same steps deployed in another runtime are another point
        recipe = r.recipe or {}
        key = repr(([(s.get("method"), s.get("params")) for s in recipe.get("steps", [])],
                    (recipe.get("profile") or {}).get("runtime")))
        if key not in seen:
            seen.add(key)
            front.append(r)
    if len(front) <= top_k:
        return front
    if top_k == 1:
        return [max(front, key=lambda r: r.metric or 0.0)]
    idx = sorted({round(i * (len(front) - 1) / (top_k - 1)) for i in range(top_k)})
    return [front[i] for i in idx]


def chosen_candidates(records: list[TrialRecord], numbers: Sequence[int], study_name: str) -> list[TrialRecord]:
    """The trials ``numbers`` (each once, in the given order), each a completed feasible trial of the study."""
    from ..errors import UserError

    by_number = {r.number: r for r in records}
    out: list[TrialRecord] = []
    for n in dict.fromkeys(numbers):
        r = by_number.get(n)
        if r is None or r.metric is None or not r.feasible or r.recipe is None:
            known = sorted(k for k, v in by_number.items() if v.metric is not None and v.feasible)
            hint = (f"{len(known)} completed feasible trials, numbered {known[0]} to {known[-1]}" if known
                    else "it has no completed feasible trial")
            raise UserError(f"trial {n} is not a completed feasible trial of study {study_name!r} ({hint}); "
                            f"pick one from `autosqueeze report`")
        out.append(r)
    return out


def _trains_alike(recorded: dict[str, Any] | None, settings: FinalizeSettings) -> bool:
    """Whether a candidate finalized with ``recorded`` settings was trained as ``settings`` would train it:
    all but ``top_k`` (how many candidates, not how each is trained) equal, so a run with more candidates
    keeps the ones already done."""
    now = {k: v for k, v in asdict(settings).items() if k != "top_k"}
    return recorded is not None and {k: v for k, v in recorded.items() if k != "top_k"} == now


def run_finalize(config: StudyConfig, data_dir: str | None, *, storage: str | None = None,
                 top_k: int | None = None, steps: int | None = None, progress: Progress | None = None,
                 save_dir: Path | None = None, trials: Sequence[int] | None = None) -> dict[str, Any]:
    """Finalize the study's candidates (resumable); returns the summary stored in the study.

    The candidates are the search-time front thinned to ``top_k`` (:func:`pick_candidates`), or exactly
    the trials numbered ``trials`` when given (e.g. the smallest points near the teacher's metric).

    With ``save_dir`` each final model is also saved, as ``apply`` would, to ``save_dir/trial-<n>``.
    """
    from .deploy_choice import study_variant
    from .study import open_study, prepare, use_study_reference

    settings = config.finalize
    if top_k is not None or steps is not None:
        settings = FinalizeSettings(**{**asdict(settings), **({"top_k": top_k} if top_k is not None else {}),
                                       **({"steps": steps} if steps is not None else {})})
    study = open_study(config, storage, create=False)
    records = trial_records(study)
    candidates = chosen_candidates(records, trials, config.name) if trials else pick_candidates(records, settings.top_k)
    if not candidates:
        from ..errors import UserError

        raise UserError(f"study {config.name!r} has no completed feasible trial to finalize: run "
                        f"`autosqueeze search {config.path}` first")
    budget = StudyRecord.from_study(study).latency_budget_ms
    sc = prepare(config, data_dir, budget, progress)
    use_study_reference(study, sc)  # final latencies on the scale of the search's
    study_variant(study, sc, config.deploy)  # the graph the search recorded
    finals: dict[str, Any] = dict(StudyRecord.from_study(study).final or {})
    t0 = time.perf_counter()
    for k, record in enumerate(candidates):
        old = finals.get(str(record.number))
        if old and _trains_alike(old.get("settings"), settings):
            continue
        searched = record.to_recipe()
        recipe = final_recipe(searched, settings)
        if search_choices(recipe) != search_choices(searched):  # a finalized point is the search's, trained
            raise RuntimeError(f"finalize changed trial {record.number}'s non-training steps or runtime: "
                               f"{search_choices(searched)} became {search_choices(recipe)}")
        log.info("finalizing trial %d (%d/%d)", record.number, k + 1, len(candidates))
        keep: dict[str, Any] = {}
        result = evaluate_recipe(recipe, sc, keep=keep)
        recipe.measured = {**result.measurement.recorded(), "fidelity": "final"}
        if save_dir is not None and "built" in keep:
            from ..artifact import save_compressed

            save_compressed(keep["built"], recipe, sc.teacher.tokenizer, sc.teacher.model.config,
                            Path(save_dir) / f"trial-{record.number}", recipe.measured, check_plain=False)
        final = TrialRecord(recipe=recipe.to_dict(), methods=tuple(s.method for s in recipe.steps)).with_result(
            result.to_dict())
        finals[str(record.number)] = {**final.to_attrs(), "settings": asdict(settings), "search_metric": record.metric,
                                      "search_latency_ms": record.latency_ms}
        StudyRecord(final=finals).write(study)  # stored as it comes: a kill loses one candidate at most
    done = [(r, finals[str(r.number)]) for r in candidates
            if finals.get(str(r.number), {}).get("status") == "complete" and r.metric is not None]
    summary = {
        "settings": asdict(settings), "candidates": [r.number for r in candidates],
        "kendall_tau": kendall_tau([float(r.metric or 0.0) for r, _ in done], [float(f["metric"]) for _, f in done]),
        "finalized": len(done), "finalize_s": time.perf_counter() - t0,
    }
    StudyRecord(finalize=summary).write(study)
    return summary
