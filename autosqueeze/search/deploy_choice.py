"""The study's ONNX Runtime graph: which export, fusions and int8 kernels its trials deploy with.

A study file's ``deploy:`` setting (absent / ``measure``, ``default``, ``plain``, ``legacy`` or
a variant mapping, see :func:`autosqueeze.runtimes.variants.parse_deploy_setting`) is resolved
once per study, when its first search process starts, and recorded in the study
(``deploy_variant``: the variant, how it was chosen and, when measured, every candidate's
paired speedup and prediction agreement) beside the machine's fingerprint. ``measure`` (the default) times the
candidates of :func:`~autosqueeze.runtimes.deploy_variants.candidate_variants` on the study's
int8 teacher, paired with its fp32 PyTorch teacher on this machine, and keeps the fastest whose
dev predictions match within the runtime's int8 noise. Every later process (a resume, another
worker, ``finalize``) reads the recorded choice instead of measuring again. The variant is made
this process's default (:func:`~autosqueeze.runtimes.variants.set_active_variant`) and written
into each trial's recipe (``profile.deploy_variant``), so ``apply`` and ``bench`` deploy the
graph the search measured. A study that cannot deploy in ONNX Runtime records nothing.
"""
from __future__ import annotations

import dataclasses
import logging
import tempfile
from typing import Any

import optuna

from ..recipe import Recipe, Step
from ..runtimes.variants import DEFAULT_VARIANT, DeployVariant, parse_deploy_setting, set_active_variant
from .study_record import StudyRecord

log = logging.getLogger(__name__)
ATTR = "deploy_variant"
ORT = "onnxruntime"
DEV_EXAMPLES = 512  # dev sentences the candidates' predictions are compared on


def study_variant(study: optuna.Study, sc: Any, setting: Any) -> DeployVariant | None:
    """The study's recorded variant, or ``setting`` resolved (measured when it says so) and recorded;
    made this process's default and kept on ``sc.deploy_variant``. None (and nothing recorded)
    when the study deploys in PyTorch only."""
    if ORT not in (sc.runtimes or (sc.profile.runtime,)):
        return None
    recorded = StudyRecord.from_study(study).deploy_variant
    if recorded:
        variant = DeployVariant.from_dict(recorded["variant"])
    else:
        chosen = parse_deploy_setting(setting)
        if chosen == "measure":
            try:
                record = measure_variant(sc)
            except Exception as err:  # the graph still deploys: the built-in default, and the study says why
                why = " ".join(str(err).split())[:300] or type(err).__name__
                log.warning("could not measure the deploy variants (%s): the built-in default deploys", why)
                record = {"how": f"default (measuring failed: {why})", "variant": DEFAULT_VARIANT.to_dict(),
                          "label": DEFAULT_VARIANT.label}
        else:
            assert isinstance(chosen, DeployVariant)
            record = {"how": "default" if setting in (None, "default") else "study file",
                      "variant": chosen.to_dict(), "label": chosen.label}
        StudyRecord(deploy_variant=record).write(study)
        variant = DeployVariant.from_dict(record["variant"])
        log.info("deployed ONNX Runtime graph (%s): %s", record["how"], variant.label)
    set_active_variant(variant)
    sc.deploy_variant = variant.to_dict()
    return variant


def measure_variant(sc: Any) -> dict[str, Any]:
    """Time the candidate variants of the study's int8 teacher on this machine (paired with the fp32
    teacher, as trials are timed) and check their dev predictions; the record to store."""
    from ..builder import replay
    from ..methods import int8_reference
    from ..runtimes.deploy_variants import choose_variant

    teacher = sc.teacher.model.eval()
    recipe = Recipe(steps=[Step(int8_reference().name, {})])  # the study's int8 reference: the teacher, int8
    float_model = replay(recipe, teacher, [{}], part="float").eval()
    deployed = replay(recipe, float_model, [{}], part="quantize").eval()
    dev = sc.data.dev[:DEV_EXAMPLES]
    batches = [sc.data.encode(dev[i:i + 32]) for i in range(0, len(dev), 32)]
    labels = None if sc.data.task.is_regression else [int(e.label) for e in dev]
    inputs = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
    profile = dataclasses.replace(sc.profile, runtime=ORT)
    with tempfile.TemporaryDirectory(prefix="autosqueeze-deploy-") as folder:
        choice = choose_variant(deployed, teacher, profile, folder, float_model=float_model, recipe=recipe,
                                rounds=max(10, sc.latency_settings.repeats // 2), eval_batches=inputs or None,
                                labels=labels if inputs else None)
    return {"how": "measured", **choice.to_dict()}
