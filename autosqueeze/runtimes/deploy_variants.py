"""Choose a model's deployed ONNX graph by measurement: build the candidate variants, time them
paired with the fp32 PyTorch teacher, keep the fastest whose predictions match.

:func:`choose_variant` is the one call: for one model (and its recipe / float model, as
:func:`~autosqueeze.runtimes.onnx_export.export_for_deployment` takes them) it builds every
candidate of :func:`candidate_variants` (exporter, attention form, transformer fusions, int8
kernels, session level), times them round-robin with the fp32 PyTorch teacher on one batch of
the profile's shape (each round calls the teacher and every variant once, in an order rotated
from round to round; a variant's speedup is the median over rounds of teacher / variant, as
:mod:`autosqueeze.measure.references` times the references), checks each variant's predictions
on the given dev batches against the reference variant (the first candidate), and returns a
:class:`VariantChoice` whose ``variant`` is the fastest matching one. ``choice.to_dict()`` is
small and JSON-safe; :func:`~autosqueeze.runtimes.variants.set_active_variant` (or
``$AUTOSQUEEZE_DEPLOY_VARIANT`` pointing at a saved choice) makes trials, ``apply`` and
``bench`` deploy it.

"Matches" means within the runtime's int8 noise: a variant's prediction agreement with the
reference is at least ``min(agreement, noise_floor − 0.01)``, where the noise floor is the
reference's own agreement with the PyTorch model, and (with labels) its accuracy is within
``metric_tol`` of the reference's. Sessions run with spinning off (they alternate with
PyTorch calls, see :func:`~autosqueeze.runtimes.ort.make_session`).
"""
from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..measure.latency import HardwareProfile, fixed_threads, synthetic_inputs
from ..measure.timing import Ratio, time_rounds
from .onnx_base import OnnxUnavailable, OnnxUnsupported, one_line
from .onnx_export import export_for_deployment
from .variants import DEFAULT_VARIANT, LEGACY_VARIANT, PLAIN_VARIANT, DeployVariant

log = logging.getLogger(__name__)

__all__ = ["VariantChoice", "VariantResult", "build_variant", "candidate_variants", "choose_variant", "load_choice",
           "predictions", "time_sessions"]


def candidate_variants(*, fusion: bool = True, int8: bool = True) -> list[DeployVariant]:
    """The variants tried, the reference (today's default) first: exporters and attention forms,
    the BERT fusions, and the dynamic int8 kernels (per channel, ``reduce_range``, unsigned
    weights), and ONNX Runtime's ``extended`` level instead of ``all``."""
    out = [DEFAULT_VARIANT, LEGACY_VARIANT, PLAIN_VARIANT, DEFAULT_VARIANT.with_(exporter="dynamo")]
    if fusion:
        out.append(DEFAULT_VARIANT.with_(fusion="bert"))
    if int8:
        out += [DEFAULT_VARIANT.with_(int8={"per_channel": True}), DEFAULT_VARIANT.with_(int8={"reduce_range": True}),
                DEFAULT_VARIANT.with_(int8={"weight_type": "QUInt8"})]
    out.append(DEFAULT_VARIANT.with_(opt_level="extended"))
    return out


@dataclass
class VariantResult:
    """One candidate: what was built, how fast (paired with the fp32 teacher), whether it matches."""

    variant: dict[str, Any]
    label: str
    error: str | None = None
    speedup: dict[str, float] | None = None  # vs the fp32 PyTorch teacher: median, p10, p90 over rounds
    median_ms: float | None = None
    vs_reference: float | None = None  # median over rounds of reference / this variant
    agreement: float | None = None  # fraction of dev predictions equal to the reference variant's
    accuracy: float | None = None
    matches: bool | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class VariantChoice:
    """The chosen variant and every candidate's result."""

    variant: DeployVariant
    reference: DeployVariant
    results: list[VariantResult]
    noise_floor: float | None = None  # the reference's agreement with the PyTorch model
    rounds: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant.to_dict(), "label": self.variant.label, "reference": self.reference.to_dict(),
                "noise_floor": self.noise_floor, "rounds": self.rounds, "results": [asdict(r) for r in self.results]}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))


def load_choice(path_or_dict: str | Path | dict[str, Any]) -> DeployVariant:
    """The variant of a saved choice (a file written by :meth:`VariantChoice.save`, or its dict)."""
    data = path_or_dict if isinstance(path_or_dict, dict) else json.loads(Path(path_or_dict).read_text())
    return DeployVariant.from_dict(data.get("variant", data))


def build_variant(model: nn.Module, path: str | Path, variant: DeployVariant, *, float_model: nn.Module | None = None,
                  recipe: Any = None) -> tuple[Path | None, str | None, list[str]]:
    """(path, None, notes) of ``model`` exported as ``variant`` deploys it, or (None, error, [])."""
    try:
        info = export_for_deployment(model, path, float_model=float_model, recipe=recipe, variant=variant)
    except OnnxUnavailable:
        raise
    except (OnnxUnsupported, ValueError, RuntimeError) as err:
        return None, one_line(err), []
    return Path(info.path), None, list(info.notes)


def _session(path: Path, variant: DeployVariant, profile: HardwareProfile) -> Any:
    from .ort import make_session

    return make_session(path, profile, spinning=False, opt_level=variant.opt_level)


def time_sessions(calls: dict[str, Callable[[], Any]], rounds: int, warmup: int = 3,
                  block: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
                  block_rounds: int = 5) -> dict[str, list[float]]:
    """Milliseconds per call of each callable, round-robin, the order rotated every round;
    ``block`` (e.g. pausing other work) wraps every ``block_rounds`` rounds."""
    ms = time_rounds({name: (lambda c: (lambda _round: c()))(call) for name, call in calls.items()},
                     warmup=warmup, repeats=rounds, order="rotate", block=block, block_rounds=block_rounds)
    return {name: t.tolist() for name, t in ms.items()}


def predictions(session: Any, batches: Sequence[dict[str, torch.Tensor]]) -> np.ndarray:
    """Argmax predictions of an ONNX Runtime session on ``batches``."""
    from .ort import _feed

    out = [np.asarray(session.run(["logits"], _feed(session, b))[0]).argmax(-1) for b in batches]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _torch_predictions(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> np.ndarray:
    with torch.inference_mode():
        out = [model(**b).logits.float().argmax(-1).numpy() for b in batches]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _ratio(ref: list[float], cand: list[float]) -> dict[str, float]:
    return Ratio.of(ref, cand).to_dict()


def choose_variant(model: nn.Module, teacher: nn.Module, profile: HardwareProfile, folder: str | Path, *,
                   float_model: nn.Module | None = None, recipe: Any = None,
                   candidates: Sequence[DeployVariant] | None = None, rounds: int = 30,
                   eval_batches: Sequence[dict[str, torch.Tensor]] | None = None, labels: Sequence[int] | None = None,
                   agreement: float = 0.99, metric_tol: float = 0.01,
                   block: Callable[[], contextlib.AbstractContextManager[Any]] | None = None) -> VariantChoice:
    """Build, time and check the ``candidates`` (default :func:`candidate_variants`; the first is
    the reference) of ``model`` in ``folder``; see the module docstring."""
    cands = list(candidates or candidate_variants())
    if not cands:
        raise ValueError("no candidate variants")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    results: list[VariantResult] = []
    sessions: dict[str, Any] = {}
    for i, v in enumerate(cands):
        res = VariantResult(v.to_dict(), v.label)
        path, res.error, res.notes = build_variant(model, folder / f"variant{i}.onnx", v, float_model=float_model,
                                                   recipe=recipe)
        if path is not None:
            sessions[v.label] = _session(path, v, profile)
        results.append(res)
    ref_label = cands[0].label
    if ref_label not in sessions:
        raise OnnxUnsupported(f"the reference variant {ref_label} does not build: {results[0].error}")
    noise: float | None = None
    if eval_batches:
        ref_pred = predictions(sessions[ref_label], eval_batches)
        noise = float(np.mean(ref_pred == _torch_predictions(model, eval_batches)))
        need = min(agreement, noise - 0.01)
        y = None if labels is None else np.asarray(labels)
        ref_acc = None if y is None else float(np.mean(ref_pred == y))
        for res in results:
            if res.label not in sessions:
                continue
            pred = predictions(sessions[res.label], eval_batches)
            res.agreement = float(np.mean(pred == ref_pred))
            res.accuracy = None if y is None else float(np.mean(pred == y))
            res.matches = res.agreement >= need and (
                ref_acc is None or res.accuracy is None or abs(res.accuracy - ref_acc) <= metric_tol)
    vocab = int(getattr(getattr(teacher, "config", None), "vocab_size", 1000))
    batch = synthetic_inputs(profile, vocab)
    from .ort import _feed

    calls: dict[str, Callable[[], Any]] = {"teacher_fp32": lambda: teacher(**batch)}
    for label, sess in sessions.items():
        calls[label] = (lambda s, f: (lambda: s.run(None, f)))(sess, _feed(sess, batch))
    teacher.eval()
    with fixed_threads(profile.threads), torch.inference_mode():
        times = time_sessions(calls, rounds, block=block)
    for res in results:
        if res.label in times:
            res.speedup = _ratio(times["teacher_fp32"], times[res.label])
            res.median_ms = float(np.median(times[res.label]))
            res.vs_reference = _ratio(times[ref_label], times[res.label])["median"]
    ok = [r for r in results if r.speedup is not None and r.matches is not False]
    best = max(ok, key=lambda r: r.speedup["median"] if r.speedup else 0.0)
    return VariantChoice(DeployVariant.from_dict(best.variant), cands[0], results, noise, rounds)
