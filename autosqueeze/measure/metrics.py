"""Task metric of a model on dev examples (the task's official GLUE metrics)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..capabilities import ExitStats
from ..data import TaskData
from ..tasks import Example, compute_metrics
from .latency import needs_real_inputs


def predict(model: nn.Module, data: TaskData, examples: Sequence[Example], batch_size: int = 64) -> np.ndarray:
    """Class indices (or regression scores) for ``examples``, in order."""
    model.eval()
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for batch in data.eval_batches(examples, batch_size):
            batch.pop("labels")
            logits = model(**batch).logits.float()
            out.append(logits.squeeze(-1).numpy() if data.task.is_regression else logits.argmax(-1).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def evaluate(
    model: nn.Module, data: TaskData, extra: Mapping[str, Sequence[Example]] | None = None, batch_size: int = 64
) -> dict[str, float]:
    """Official metrics on ``data.dev``; each extra split adds ``<metric>_<split>`` keys."""
    labels = np.asarray([e.label for e in data.dev])
    result = compute_metrics(data.task, predict(model, data, data.dev, batch_size), labels)
    for split, examples in (extra or {}).items():
        lab = np.asarray([e.label for e in examples])
        for k, v in compute_metrics(data.task, predict(model, data, examples, batch_size), lab).items():
            result[f"{k}_{split}"] = v
    return {k: float(v) for k, v in result.items()}


def evaluate_deployed(model: nn.Module, data: TaskData, extra: Mapping[str, Sequence[Example]] | None,
                      batch_size: int, profile_batch_size: int) -> tuple[dict[str, float], dict | None]:
    """Metrics as deployed, and the exit statistics of a dynamic-inference model.

    A model whose output depends on how examples are batched (early exit: a batch leaves
    only when all its examples may) is evaluated at the profile's batch size, and its exit
    statistics are those of this evaluation alone (reset before, read after).
    """
    if not needs_real_inputs(model):
        return evaluate(model, data, extra, batch_size), None
    if not isinstance(model, ExitStats):
        return evaluate(model, data, extra, profile_batch_size), None
    model.autosqueeze_reset_exit_stats()  # the early-exit model counts the layers its calls run
    metrics = evaluate(model, data, extra, profile_batch_size)
    return metrics, model.autosqueeze_exit_stats()


def majority_reference(data: TaskData, extra: Mapping[str, Sequence[Example]] | None = None) -> dict[str, Any]:
    """The floor a model must clear: the official metrics (keys as :func:`evaluate`'s) of always
    predicting the dev set's most frequent class, or its mean score for a regression task."""
    labels = np.asarray([e.label for e in data.dev])
    if data.task.is_regression:
        value: float = float(labels.mean()) if labels.size else 0.0
        predicts = f"the mean score {value:.3g}"
    else:
        value = int(np.bincount(labels.astype(int), minlength=data.task.num_labels).argmax())
        predicts = f"class {data.task.label_names[value]!r}"

    def score(examples: Sequence[Example]) -> dict[str, float]:
        lab = np.asarray([e.label for e in examples])
        return compute_metrics(data.task, np.full(lab.shape, value), lab)

    metrics = score(data.dev)
    for split, examples in (extra or {}).items():
        metrics.update({f"{k}_{split}": v for k, v in score(examples).items()})
    return {"metric": metrics[data.task.main_metric], "metrics": metrics, "predicts": predicts,
            "dev_examples": len(data.dev)}
