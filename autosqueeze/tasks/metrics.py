"""Official GLUE metrics, in numpy only (no scipy / sklearn).

Degenerate inputs (a constant prediction or label vector) give 0.0 for MCC and correlations,
never NaN, so a search objective always receives a finite number.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike

from .specs import TaskSpec, get_task

__all__ = [
    "accuracy",
    "f1_binary",
    "matthews_correlation",
    "pearson",
    "spearmanr",
    "rankdata",
    "compute_metrics",
]


def _pair(predictions: ArrayLike, labels: ArrayLike, dtype: type = np.int64) -> tuple[np.ndarray, np.ndarray]:
    p: np.ndarray = np.asarray(predictions).reshape(-1).astype(dtype)
    y: np.ndarray = np.asarray(labels).reshape(-1).astype(dtype)
    if p.shape != y.shape:
        raise ValueError(f"predictions ({p.size}) and labels ({y.size}) differ in length")
    if p.size == 0:
        raise ValueError("cannot compute a metric on zero examples")
    return p, y


def accuracy(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of predictions equal to the label."""
    p, y = _pair(predictions, labels)
    return float(np.mean(p == y))


def f1_binary(predictions: ArrayLike, labels: ArrayLike, positive: int = 1) -> float:
    """Binary F1 of the ``positive`` class; 0.0 when there is no true positive."""
    p, y = _pair(predictions, labels)
    tp = float(np.sum((p == positive) & (y == positive)))
    fp = float(np.sum((p == positive) & (y != positive)))
    fn = float(np.sum((p != positive) & (y == positive)))
    if tp == 0.0:
        return 0.0
    return 2.0 * tp / (2.0 * tp + fp + fn)


def matthews_correlation(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Matthews correlation coefficient (multi-class form, equal to the binary one for 2 classes)."""
    p, y = _pair(predictions, labels)
    classes, inverse = np.unique(np.concatenate([y, p]), return_inverse=True)
    k = classes.size
    cm = np.zeros((k, k), dtype=np.float64)
    np.add.at(cm, (inverse[: y.size], inverse[y.size :]), 1.0)  # rows: true, cols: predicted
    t = cm.sum(axis=1)
    pk = cm.sum(axis=0)
    c = np.trace(cm)
    s = cm.sum()
    cov_yp = c * s - float(t @ pk)
    cov_pp = s * s - float(pk @ pk)
    cov_yy = s * s - float(t @ t)
    denom = cov_pp * cov_yy
    if denom <= 0.0:
        return 0.0
    return float(cov_yp / np.sqrt(denom))


def pearson(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Pearson correlation; 0.0 when either side is constant."""
    p, y = _pair(predictions, labels, dtype=np.float64)
    pc = p - p.mean()
    yc = y - y.mean()
    denom = float(np.sqrt(np.sum(pc * pc) * np.sum(yc * yc)))
    if denom == 0.0 or not np.isfinite(denom):
        return 0.0
    return float(np.clip(np.sum(pc * yc) / denom, -1.0, 1.0))


def rankdata(values: ArrayLike) -> np.ndarray:
    """1-based ranks with ties given their average rank (scipy's ``method="average"``)."""
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    # Start index of each run of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]])
    ends = np.r_[starts[1:], a.size]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based positions starts+1 .. ends
    ranks = np.empty(a.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearmanr(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Spearman rank correlation (Pearson on average-tie ranks); 0.0 when either side is constant."""
    p, y = _pair(predictions, labels, dtype=np.float64)
    return pearson(rankdata(p), rankdata(y))


_METRICS: dict[str, Callable[[ArrayLike, ArrayLike], float]] = {
    "accuracy": accuracy,
    "f1": f1_binary,
    "matthews_correlation": matthews_correlation,
    "pearson": pearson,
    "spearmanr": spearmanr,
}


def compute_metrics(task: TaskSpec | str, predictions: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """Score ``predictions`` against ``labels`` with the task's official metrics.

    ``predictions`` are class indices, or float scores for STS-B. A 2-D array of logits
    (n, num_labels) is also accepted: classification takes its argmax, regression squeezes it.
    Returns exactly ``task.metric_names`` as keys, with float values.
    """
    spec = get_task(task)
    preds = np.asarray(predictions)
    if preds.ndim == 2:
        if spec.is_regression:
            if preds.shape[1] != 1:
                raise ValueError(f"{spec.name}: expected (n,) or (n, 1) scores, got {preds.shape}")
            preds = preds[:, 0]
        else:
            preds = preds.argmax(axis=-1)
    elif preds.ndim > 2:
        raise ValueError(f"predictions must be 1-D or 2-D, got shape {preds.shape}")
    return {name: float(_METRICS[name](preds, labels)) for name in spec.metric_names}
