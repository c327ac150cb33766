"""Training the elastic student: importance reordering, then sandwich-rule distillation.

Every step distils, on one batch, the largest sub-network (the whole student), the smallest
one, and ``random_subnets`` random ones from the teacher (soft logits at ``temperature`` plus
hidden-state MSE of each kept layer against the teacher layer it came from), accumulating
the gradients of all of them into the shared weights before one optimiser step — the
sandwich rule of slimmable networks / DynaBERT / once-for-all.
"""
from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import get_adapter
from ..data import Batch, TaskData
from ..methods.context import MethodContext
from ..train import _lr_lambda, seed_everything
from .reorder import importance_scores, reorder
from .subnet import Subnet, SubnetSpace, activate, elastic_mode, full_subnet, resolve_count

Progress = Callable[[str, int, int, dict[str, float]], None]


@dataclass(frozen=True)
class ElasticSettings:
    """How the elastic student is trained (part of its cache key)."""

    steps: int = 600
    lr: float = 5e-5
    random_subnets: int = 2  # per step, besides the largest and the smallest
    min_layers: int | float = 0.34  # count, or fraction of the depth
    min_heads: int | float = 0.25  # count, or fraction of a layer's heads
    min_ffn: int | float = 0.125  # count, or fraction of a layer's FFN neurons
    ffn_step: int | float = 0.0625  # granularity of sampled FFN widths
    temperature: float = 1.0
    alpha_hidden: float = 1.0  # weight of the hidden-state MSE (0: logits only)
    importance_batches: int = 8  # batches for the Taylor importance that orders heads and neurons
    bf16: bool = False  # bf16 autocast for the forward passes (faster on CPUs with bf16 units)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "random_subnets", "importance_batches", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"elastic.{name} must be an integer >= 0, got {value!r}")
        for name in ("min_layers", "min_heads", "min_ffn", "ffn_step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or (
                    isinstance(value, float) and value > 1):
                raise ValueError(f"elastic.{name} must be a count >= 1 or a fraction in (0, 1], got {value!r}")
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"elastic.{name} must be a number > 0, got {value!r}")
        if isinstance(self.alpha_hidden, bool) or not isinstance(self.alpha_hidden, (int, float)) or \
                self.alpha_hidden < 0:
            raise ValueError(f"elastic.alpha_hidden must be a number >= 0, got {self.alpha_hidden!r}")
        if not isinstance(self.bf16, bool):
            raise ValueError(f"elastic.bf16 must be true or false, got {self.bf16!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def subnet_space(model: nn.Module, settings: ElasticSettings) -> SubnetSpace:
    full = full_subnet(model, get_adapter(model))
    depth, heads, neurons = len(full.layers), min(full.heads), min(full.neurons)
    return SubnetSpace(depth=depth, heads=heads, neurons=neurons,
                       min_depth=resolve_count("elastic.min_layers", settings.min_layers, depth),
                       min_heads=resolve_count("elastic.min_heads", settings.min_heads, heads),
                       min_neurons=resolve_count("elastic.min_ffn", settings.min_ffn, neurons),
                       neuron_step=resolve_count("elastic.ffn_step", settings.ffn_step, neurons))


def subnet_loss(student: nn.Module, subnet: Subnet, inputs: Batch, t_logits: torch.Tensor,
                t_hidden: tuple[torch.Tensor, ...] | None, settings: ElasticSettings) -> torch.Tensor:
    """Distillation loss of one sub-network (model already activated as ``subnet``)."""
    want_hidden = t_hidden is not None
    out = student(**inputs, output_hidden_states=want_hidden)
    logits = out.logits.float()
    if t_logits.shape[-1] == 1:  # regression: match the teacher's value
        loss = F.mse_loss(logits, t_logits)
    else:
        T = settings.temperature
        loss = F.kl_div(F.log_softmax(logits / T, -1), F.softmax(t_logits / T, -1), reduction="batchmean") * T * T
    if want_hidden:
        assert t_hidden is not None
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        pairs = [(0, 0)] + [(i + 1, t + 1) for i, t in enumerate(subnet.layers)]
        hidden = sum(F.mse_loss(out.hidden_states[s].float() * mask, t_hidden[t] * mask) for s, t in pairs)
        loss = loss + settings.alpha_hidden * hidden / len(pairs)
    return loss


def train_elastic(teacher: nn.Module, data: TaskData, settings: ElasticSettings,
                  progress: Progress | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The elastic student of ``teacher``: reordered by importance, then sandwich-distilled."""
    t0 = time.perf_counter()
    seed_everything(settings.seed)
    teacher.eval()
    student = copy.deepcopy(teacher)
    adapter = get_adapter(student)
    ctx = MethodContext(adapter=adapter, seed=settings.seed, teacher=teacher, train_batches=data.train_batches,
                        num_labels=data.task.num_labels, is_regression=data.task.is_regression)
    head_scores, neuron_scores = importance_scores(student, ctx, settings.importance_batches)
    orders = reorder(student, adapter, head_scores, neuron_scores)
    space = subnet_space(student, settings)
    rng = random.Random(settings.seed)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.01},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=settings.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(settings.steps, int(0.06 * settings.steps)))
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if settings.bf16 else contextlib.nullcontext
    want_hidden = settings.alpha_hidden > 0
    ema = {"largest": math.nan, "smallest": math.nan}
    student.train()
    with elastic_mode(student, adapter):
        for step, batch in enumerate(data.train_batches(settings.steps, settings.seed + 7)):
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            with torch.no_grad(), autocast():
                t_out = teacher(**inputs, output_hidden_states=want_hidden)
            t_logits = t_out.logits.float()
            t_hidden = tuple(h.float() for h in t_out.hidden_states) if want_hidden else None
            subnets = [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(settings.random_subnets)]
            opt.zero_grad(set_to_none=True)
            for i, subnet in enumerate(subnets):
                with activate(student, adapter, subnet), autocast():
                    loss = subnet_loss(student, subnet, inputs, t_logits, t_hidden, settings)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"elastic training: loss became {loss.item()} at step {step}")
                (loss / len(subnets)).backward()
                if i < 2:
                    name = ("largest", "smallest")[i]
                    ema[name] = loss.item() if math.isnan(ema[name]) else 0.9 * ema[name] + 0.1 * loss.item()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            if progress:
                progress("elastic", step + 1, settings.steps, dict(ema))
    student.eval()
    info = {"orders": orders, "space": asdict(space), "loss": ema, "train_s": time.perf_counter() - t0,
            "steps": settings.steps}
    return student, info
