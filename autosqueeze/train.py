"""Fine-tuning and recovery distillation loops (CPU friendly, deterministic for a seed)."""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .data import Batch
from .typecheck import seed_problem

log = logging.getLogger(__name__)
# a training run's progress: (what, steps done, steps in all, running stats), called after each step
Progress = Callable[[str, int, int, dict[str, float]], None]


def progress_printer(every_s: float = 30.0) -> Progress:
    """A :data:`Progress` that prints one line (what, steps done of all, the running stats) at most
    every ``every_s`` seconds and at each run's last step: for scripts without a progress bar."""
    last = {"t": 0.0}

    def report(what: str, done: int, total: int, stats: dict[str, float]) -> None:
        if time.time() - last["t"] > every_s or done == total:
            last["t"] = time.time()
            print(f"  {what} {done}/{total} " + " ".join(f"{k}={v:.4f}" for k, v in stats.items()), flush=True)

    return report


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings (AdamW, linear warm-up then linear decay)."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-4
    max_seq_len: int = 64
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    seed: int = 0
    train_subset: int | None = None
    threads: int | None = None  # None: all cores; fixed for reproducibility across runs
    bf16: bool = False  # bf16 autocast for the training passes (2.5x a step on CPUs with bf16 units, slower without)

    def __post_init__(self) -> None:
        if not isinstance(self.bf16, bool):
            raise ValueError(f"bf16 must be true or false, got {self.bf16!r}")
        if self.steps < 0 or self.batch_size < 1 or self.max_seq_len < 8 or not self.lr > 0:
            raise ValueError(f"invalid training settings: {self}")
        if self.train_subset is not None and self.train_subset < 1:
            raise ValueError(f"train_subset must be >= 1, got {self.train_subset}")
        if seed_problem(self.seed):
            raise ValueError(f"seed {seed_problem(self.seed)}")

    def to_dict(self) -> dict[str, Any]:
        """Every setting (the teacher's cache key hashes it); ``bf16`` only when on, so teachers cached
        before it existed keep their keys."""
        d = asdict(self)
        if not self.bf16:
            d.pop("bf16")
        return d


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _lr_lambda(steps: int, warmup: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return f


def train_loop(
    model: nn.Module,
    batches: Iterator[Batch],
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor],
    *,
    steps: int,
    lr: float,
    warmup_ratio: float = 0.06,
    weight_decay: float = 0.01,
    progress: Progress | None = None,
    what: str = "train",
    should_stop: Callable[[int], bool] | None = None,
    post_step: list[Callable[[nn.Module], None]] | None = None,
    bf16: bool = False,
) -> dict[str, float]:
    """Run ``steps`` optimiser steps; ``loss_fn(model, batch)`` gives the loss.

    A non-finite loss stops training with FloatingPointError (the trial fails with a reason).
    ``should_stop(step)`` is polled every step and ends training early when it says so.
    ``post_step`` callbacks run after every optimiser step (e.g. re-apply pruning masks).
    ``bf16``: the loss (forward passes) under CPU bf16 autocast; weights, gradients and the optimiser
    stay fp32.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps, int(warmup_ratio * steps)))
    model.train()
    ema = math.nan
    done = 0
    for step, batch in enumerate(batches):
        if step >= steps:
            break
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = loss_fn(model, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{what}: loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        for hook in post_step or ():
            hook(model)
        ema = loss.item() if math.isnan(ema) else 0.9 * ema + 0.1 * loss.item()
        done = step + 1
        if progress:
            progress(what, done, steps, {"loss": ema})
        if should_stop and should_stop(done):
            log.info("%s: stopped early at step %d/%d", what, done, steps)
            break
    model.eval()
    return {"loss": ema, "steps": done}


def task_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Cross-entropy (classification) or MSE (regression) on the gold labels."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits
    if labels.dtype.is_floating_point:
        return F.mse_loss(logits.squeeze(-1), labels)
    return F.cross_entropy(logits, labels)


def finetune(
    model: nn.Module, batches: Iterator[Batch], settings: TrainSettings, progress: Progress | None = None
) -> dict[str, float]:
    """Fine-tune ``model`` on task labels for ``settings.steps`` steps."""
    seed_everything(settings.seed)
    return train_loop(
        model, batches, task_loss, steps=settings.steps, lr=settings.lr, warmup_ratio=settings.warmup_ratio,
        weight_decay=settings.weight_decay, progress=progress, what="finetune", bf16=settings.bf16,
    )
