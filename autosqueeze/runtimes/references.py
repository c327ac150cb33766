"""The three references as callables: the fp32 teacher in PyTorch, its PyTorch dynamic int8
(``quantize_dynamic``) and its ONNX Runtime dynamic int8 (what a user deploys without
autosqueeze), timed interleaved with any candidates by :mod:`autosqueeze.measure.references`.
The ONNX Runtime session runs with spinning off (its idle pool threads would otherwise steal
the next PyTorch call's cores).
"""
from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..measure.latency import HardwareProfile, fixed_threads, synthetic_inputs
from ..measure.timing import interleaved, summarize
from .deployment import Deployment

__all__ = ["reference_calls", "time_references", "torch_int8"]


def _vocab(model: nn.Module) -> int:
    return int(getattr(getattr(model, "config", None), "vocab_size", 1000))


def torch_int8(teacher: nn.Module) -> nn.Module:
    """A copy of ``teacher`` with PyTorch's dynamic int8 Linear layers (the ``quantize_dynamic`` method)."""
    from ..arch import get_adapter
    from ..methods import MethodContext, quantize_dynamic

    return quantize_dynamic.apply(copy.deepcopy(teacher), quantize_dynamic.QuantizeDynamicConfig(),
                                  MethodContext(adapter=get_adapter(teacher)))


@contextmanager
def reference_calls(teacher: nn.Module, profile: HardwareProfile,
                    inputs: dict[str, torch.Tensor] | None = None) -> Iterator[dict[str, Callable[[], Any]]]:
    """The three references as zero-argument calls on one batch (``inputs``, else a synthetic
    batch of the profile's shape), for :func:`interleaved` inside ``fixed_threads`` and
    ``torch.inference_mode``. The ONNX Runtime one needs the onnx extra."""
    from .ort import ort_dynamic_int8_session

    teacher.eval()
    batch = inputs if inputs is not None else synthetic_inputs(profile, _vocab(teacher))
    int8 = torch_int8(teacher)
    with tempfile.TemporaryDirectory(prefix="autosqueeze-refs-") as tmp:
        sess, names = ort_dynamic_int8_session(teacher, Path(tmp), profile)
        feed = {n: batch[n].numpy() for n in names if n in batch}
        for n in names:
            if n not in feed:  # token_type_ids
                feed[n] = np.zeros_like(batch["input_ids"].numpy())
        yield {"teacher_fp32": lambda: teacher(**batch), "teacher_torch_int8": lambda: int8(**batch),
               "teacher_ort_int8": lambda: sess.run(None, feed)}


def time_references(teacher: nn.Module, profile: HardwareProfile, rounds: int,
                    candidates: dict[str, nn.Module | Deployment] | None = None) -> dict[str, Any]:
    """:func:`summarize` of the references and ``candidates`` (PyTorch models, or models as a runtime
    deploys them: :func:`~autosqueeze.runtimes.deployment.deploy`'s, called alike), timed interleaved
    for ``rounds`` rounds (after ``max(5, rounds // 20)`` warm-up rounds) on one synthetic batch."""
    batch = synthetic_inputs(profile, _vocab(teacher))
    with reference_calls(teacher, profile, batch) as calls, fixed_threads(profile.threads), torch.inference_mode():
        for name, model in (candidates or {}).items():
            calls[name] = (lambda m: (lambda: m(**batch)))(model.eval())
        times = interleaved(calls, rounds, warmup=max(5, rounds // 20))
    out = summarize(times, list(candidates or {}))
    out["rounds"] = rounds
    return out
