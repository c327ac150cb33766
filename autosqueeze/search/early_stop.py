"""Early stopping of trials that cannot reach the Pareto front (our rule; Optuna's pruners
do not work for multi-objective studies).

The rule. A trial's latency is known before it trains (the probe, see objective.py), so
the only question during recovery training is whether its accuracy can still matter. At a
few checkpoints (``checkpoints``: fractions of the trial's total training steps) the
partially trained float model is evaluated on a small fixed dev slice (the first
``dev_examples`` of the search's dev set) giving ``m`` at progress ``p``. The trial is
stopped when even an optimistic bound misses the front::

    m + slack * (1 - p) + z * sqrt(0.25 / n)  <  ref(L)

- ``ref(L)``: the best metric among the study's feasible, completed trials whose latency
  is at most this trial's latency ``L`` (read from the storage at each checkpoint, so
  trials of other workers count). A trial that reached the front at latency ``L`` would
  have to beat it; with no such trial (nothing as fast yet) the trial is never stopped.
- ``slack * (1 - p)``: what the remaining training may still add; it shrinks to zero as
  training completes (distillation curves rise fastest at the start, so a linear allowance
  is generous).
- ``z * sqrt(0.25 / n)``: the slice's sampling noise (``z`` standard errors of an accuracy
  measured on ``n`` examples, at its worst case p = 0.5). Calibrated for metrics in [0, 1]
  such as accuracy; for correlations / MCC it is a heuristic.

Why it is safe: the partial model is the float model *before* any later quantization or
early-exit step, which only lower accuracy, so ``m`` already errs high. Trials whose
latency is data dependent (early exit: the probe is the worst case, the real latency
lower) are never stopped, since their ``ref`` would be taken at too high a latency.

A stopped trial is recorded as a COMPLETE trial with ``status: stopped_early`` and its
values (the partial metric ``m`` on the slice, the probed latency). We do not mark it
PRUNED: Optuna's multi-objective samplers ignore (NSGA-II) or rank by intermediate values
(TPE, which multi-objective trials cannot report) pruned trials, whereas a COMPLETE
dominated point tells both samplers "this region is worse than the front at its latency",
which is exactly what the rule established. Reports exclude it from the front (its status
is not ``complete``). The history of every checkpoint (``m``, bound, ``ref``) is stored on
every trained trial, which lets the rule be audited and re-calibrated.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EarlyStopSettings:
    """When and how generously to check a training trial against the front."""

    enabled: bool = True
    checkpoints: tuple[float, ...] = (0.25, 0.5)  # fractions of the trial's training steps
    dev_examples: int = 256  # size of the dev slice evaluated at each checkpoint
    slack: float = 0.10  # metric the rest of the training may still add, at progress 0
    z: float = 2.0  # standard errors of slice noise allowed

    def __post_init__(self) -> None:
        if not all(0.0 < c < 1.0 for c in self.checkpoints):
            raise ValueError(f"checkpoints must be fractions in (0, 1), got {self.checkpoints}")
        if self.dev_examples < 1 or self.slack < 0 or self.z < 0:
            raise ValueError(f"invalid early-stop settings {self}")

    def margin(self, progress: float, n: int) -> float:
        return self.slack * max(0.0, 1.0 - progress) + self.z * math.sqrt(0.25 / max(1, n))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TrialStoppedEarly(Exception):
    """Raised from the training loop's ``should_stop`` when the rule stops a trial."""

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__(f"stopped early at {100 * record['progress']:.0f}% of training: metric "
                         f"{record['metric']:.4f} + margin {record['margin']:.4f} < front {record['reference']:.4f}")
        self.record = record


class EarlyStopper:
    """Hooked into one trial's training as ``ctx.should_stop`` (:meth:`step`, polled by
    ``train_loop`` after every optimiser step with the whole model): at the checkpoints it
    evaluates the model and raises :class:`TrialStoppedEarly` when the rule says so.
    (:meth:`step` is :meth:`hook` — which model — then :meth:`should_stop` — which step.)

    ``reference(latency_ms)`` gives ``ref(L)`` (None: nothing to compare with);
    ``evaluate(model)`` gives the metric on the dev slice of ``n`` examples.
    Several training runs in one recipe (distill, then QAT) count as one progress scale of
    ``total_steps``; a step for which no model was given (``should_stop`` alone) is not checked.
    """

    def __init__(self, settings: EarlyStopSettings, total_steps: int, latency_ms: float,
                 reference: Callable[[float], float | None], evaluate: Callable[[nn.Module], float], n: int) -> None:
        self.settings, self.total, self.latency_ms = settings, max(1, total_steps), latency_ms
        self.reference, self.evaluate, self.n = reference, evaluate, n
        self.model: nn.Module | None = None
        self.fresh = False
        self.offset = self.last = 0
        self.next_check = 0
        self.history: list[dict[str, Any]] = []

    def hook(self, model: nn.Module) -> None:
        self.model, self.fresh = model, True

    def step(self, model: nn.Module, done: int) -> bool:
        """``MethodContext.should_stop``: ``model`` has trained ``done`` steps of the current run."""
        self.hook(model)
        return self.should_stop(done)

    def should_stop(self, done: int) -> bool:
        if done < self.last:  # a new training run started
            self.offset += self.last
        self.last = done
        fresh, self.fresh = self.fresh, False
        progress = (self.offset + done) / self.total
        cps = self.settings.checkpoints
        if self.next_check >= len(cps) or progress < cps[self.next_check]:
            return False
        while self.next_check < len(cps) and progress >= cps[self.next_check]:
            self.next_check += 1
        if not fresh or self.model is None:
            return False
        self.check(self.model, progress)
        return False

    def check(self, model: nn.Module, progress: float) -> None:
        """Evaluate ``model`` now; raise :class:`TrialStoppedEarly` if it cannot reach the front."""
        ref = self.reference(self.latency_ms)
        was_training = model.training
        try:
            metric = float(self.evaluate(model))
        finally:
            model.train(was_training)
        margin = self.settings.margin(progress, self.n)
        record = {"step": self.offset + self.last, "progress": round(progress, 4), "metric": metric,
                  "margin": margin, "bound": metric + margin, "reference": ref}
        self.history.append(record)
        if ref is not None and metric == metric and metric + margin < ref:
            log.info("trial stopped early: %s", record)
            raise TrialStoppedEarly(record)


def total_training_steps(steps_params: list[tuple[str, dict[str, Any]]]) -> int:
    """Steps of the recipe's training, given as ``(method, params)`` pairs; the progress scale
    of :class:`EarlyStopper`. Every method whose config has ``steps`` trains that many: the
    recovery methods (``trains=True``: distill, qat) and early_exit's frozen or joint training
    of its exits (registered ``trains=False`` because it also builds structure)."""
    from ..methods import get_method

    return sum(int(getattr(get_method(method).make_config(params), "steps", 0) or 0)
               for method, params in steps_params)
