"""What this machine cannot run faster, probed once per study, and the steps a space drops for it.

A step whose kernels this machine lacks spends trials on points that cannot win: bf16
(``cast_precision`` with ``dtype: bf16``, ``quantize_weights`` with ``compute: bf16``; the units
a method's params compute with are the registry's, ``MethodSpec.units``) on a CPU without bf16
units runs slower than the fp32 teacher (0.2–0.7x measured on AVX2 CPUs), while it is 1.5–1.7x
on CPUs with AMX. The probe (:func:`probe_machine`, from the fingerprint's CPU flags) is recorded with the study's
fingerprint (``fingerprint.probe``) when the study is created, and the study drops such steps
from its space before the first trial (:func:`drop_slow_steps`), saying so in one log line.
The study's dynamic int8 references (the teacher's PyTorch and ONNX Runtime int8 copies, timed
once per study, paired with the fp32 teacher) join the probe as ``int8_speedup``: where no runtime
the study deploys with runs int8 faster than fp32, the steps of the references' method (the registry's
``int8_reference``: ``quantize_dynamic``) are dropped the same way;
where only some do, a trial whose recipe quantizes is not offered the others
(:func:`int8_not_faster`, read by ``search.space.suggest_runtime``).
A study created before the probe existed records none and keeps its space as it was (its
trials' parameters must keep their choices).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..methods import get_method
from .space import SearchSpace, SpaceError, StepSpace, param_choices

log = logging.getLogger(__name__)
__all__ = ["drop_slow_steps", "int8_not_faster", "missing_units", "probe_machine", "slow_steps"]


UNITS_RULE = "registry"  # a probe recorded with it drops every step whose units the CPU lacks (MethodSpec.units)


def probe_machine(device: str = "cpu", features: list[str] | tuple[str, ...] | None = None) -> dict[str, Any]:
    """What the study's machine runs fast: ``{"device", "bf16_units", "units_rule"}`` (``bf16_units``
    None: unknown). ``features`` (CPU flags) default to this machine's (runtimes.fingerprint.cpu_info).
    ``units_rule`` says which steps a missing unit drops: every step whose params compute with it (the
    registry's ``MethodSpec.units``); a probe recorded without it (a study created before) drops the
    bf16 casts only, as it did then, so a resumed study's space keeps its choices."""
    from ..runtimes.fingerprint import cpu_has_bf16

    return {"device": device, "bf16_units": cpu_has_bf16(features) if device == "cpu" else None,
            "units_rule": UNITS_RULE}


UNIT_WHY = {"bf16": "bf16 on a CPU without bf16 units (no avx512_bf16 / amx_bf16) runs slower than fp32"}


def missing_units(step: StepSpace, probe: Mapping[str, Any]) -> list[str]:
    """The units every choice of ``step`` computes with (the registry's ``MethodSpec.units``: bf16 for
    ``cast_precision`` dtype bf16 or ``quantize_weights`` compute bf16) that the probe says this CPU
    lacks (``<unit>_units: false``; unknown counts as present)."""
    spec = get_method(step.method)
    if probe.get("units_rule") != UNITS_RULE and not spec.legacy_units:
        return []  # a study's probe from before the rule: its space stays as it was created (bf16 casts dropped)
    needed = [set(spec.units(params)) for params in param_choices(step)]
    always = set.intersection(*needed) if needed else set()
    return sorted(u for u in always if probe.get(f"{u}_units") is False)


def int8_not_faster(probe: Mapping[str, Any] | None) -> dict[str, float]:
    """Runtime -> its dynamic int8 reference's speedup over the fp32 teacher, for the runtimes where
    that is not faster (< 1.0). From the study's references, recorded in the probe as ``int8_speedup``."""
    speedups = (probe or {}).get("int8_speedup") or {}
    return {str(r): float(x) for r, x in speedups.items() if x is not None and float(x) < 1.0}


def slow_steps(space: SearchSpace, probe: Mapping[str, Any] | None,
               runtimes: tuple[str, ...] | list[str] = ()) -> dict[str, str]:
    """Step id -> why the probed machine cannot run it faster than the teacher (empty: none, or no probe):
    bf16 without bf16 units; dynamic int8 when no runtime of ``runtimes`` runs its int8 teacher faster."""
    if not probe or probe.get("device", "cpu") != "cpu":
        return {}
    out: dict[str, str] = {s.id: "; ".join(UNIT_WHY.get(u, f"{u} without {u} units") for u in units)
                           for s in space.steps for units in [missing_units(s, probe)] if units}
    slow8 = int8_not_faster(probe)
    if runtimes and all(r in slow8 for r in runtimes):
        why = ", ".join(f"{r} {slow8[r]:.2f}x" for r in runtimes)
        out.update({s.id: f"dynamic int8 runs no faster than the fp32 teacher on this machine ({why})"
                    for s in space.steps if get_method(s.method).int8_reference})
    return out


def drop_slow_steps(space: SearchSpace, probe: Mapping[str, Any] | None,
                    runtimes: tuple[str, ...] | list[str] = ()) -> SearchSpace:
    """``space`` less the steps the probed machine cannot run faster (one warning line says which and
    why). A step every trial needs (not optional, and not one of several choices) stays; a space left
    with nothing to try is a SpaceError."""
    slow = slow_steps(space, probe, runtimes)
    if not slow:
        return space
    groups = space.groups()

    def needed(sid: str) -> bool:  # every trial has it: not optional, and no other choice of its group survives
        step = space.step(sid)
        return not step.optional and not (step.choice and any(m.id not in slow for m in groups[step.choice]))

    kept = {sid for sid in slow if needed(sid)}
    gone = set(slow) - kept
    smaller = space.without(gone)
    if not smaller.steps:
        raise SpaceError(f"{space.path}: every step runs slower on this machine than the teacher "
                         f"({'; '.join(f'{sid}: {why}' for sid, why in slow.items())}); use another space")
    what = ", ".join(f"{sid} ({space.step(sid).method})" for sid in sorted(gone))
    why = "; ".join(sorted(set(slow.values())))
    keep = f"; kept {', '.join(sorted(kept))}: every trial needs it" if kept else ""
    log.warning("search space %s: dropped %s before the search: %s%s", space.path.name, what or "nothing", why, keep)
    return smaller
