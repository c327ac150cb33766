"""Training the elastic student: importance reordering, then sandwich-rule distillation.

Every step distils, on one batch, the largest sub-network (the whole student), the smallest
one, and ``random_subnets`` random ones from the teacher (soft logits at ``temperature`` plus
hidden-state MSE of each kept layer against the teacher layer it came from), accumulating
the gradients of all of them into the shared weights before one optimiser step — the
sandwich rule of slimmable networks / DynaBERT / once-for-all.

Options (study file ``elastic:``, all part of the student's cache key; the defaults are the
training above):

- ``inplace_distill`` / ``inplace_weight`` / ``inplace_hidden``: in-place distillation
  (once-for-all, Length-Adaptive Transformer): the largest sub-network runs first and its
  *detached* logits (and, with ``inplace_hidden``, hidden states) teach the smaller ones,
  mixed with the teacher's as ``(1 - w) * teacher + w * largest``. The largest learns from the
  teacher alone.
- ``schedule: progressive`` with ``width_phase``: progressive shrinking (DynaBERT): for the
  first ``width_phase`` of the steps every sampled sub-network keeps the full depth (only
  widths shrink); then width x depth as the sandwich rule samples it.
- ``layer_choice``: which layers a shallow sub-network keeps: ``even`` (spread evenly, as
  ``drop_layers`` does), ``first`` (the bottom ``k``), or ``mixed`` (each sampled sub-network
  one of the two at random, so a search may choose per trial with the elastic step's
  ``layer_set``).
- ``epochs``: the budget in passes over the training data instead of ``steps`` (not both),
  turned into steps from the training-set size and batch size (:func:`resolve_steps`).
- ``exits`` / ``exit_weight``: exit heads (early exit) trained with the sub-networks. The
  student gets one head per layer but the last (``heads[i]`` after layer ``i``, each first a
  copy of the reordered classifier head: dense -> activation -> output on the first token), and
  every sampled sub-network's intermediate exits -- after each of its kept layers but its last,
  the head of that layer -- are distilled from the teacher's logits (soft, at ``temperature``)
  beside its own classifier: exit ``j`` of ``n`` kept layers weighted ``exit_weight * j / n``
  (early_exit's joint training weights exit ``j`` by ``j``; here scaled so the last layer's
  classifier keeps weight 1 and the loss of a student without exits is unchanged). The
  gradients reach the backbone too, as in joint training: lower layers learn to be classified
  from. A narrower sub-network's heads read the first ``k`` hidden dimensions (their dense's
  first ``k`` input columns, what slicing keeps). Cost: one small head per intermediate kept
  layer on the first token only (the layers' hidden states are needed anyway when
  ``alpha_hidden`` > 0). Classification only. The heads are stored beside the student
  (``store.py``) and sliced with each sub-network by the ``elastic`` step for the recipe's
  ``early_exit`` step with ``training: elastic`` (no training per trial).

The teacher runs once per step under ``torch.no_grad()``; its soft targets (probabilities,
masked hidden states) are computed once per step and shared by every sub-network.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import ArchAdapter, get_adapter
from ..data import Batch, TaskData
from ..errors import ConfigError
from ..methods.context import MethodContext
from ..train import Progress, _lr_lambda, seed_everything
from .checkpoint import Checkpointing
from .reorder import hidden_importance, importance_scores, reorder, reorder_hidden
from .subnet import (
    Subnet,
    SubnetSpace,
    activate,
    elastic_mode,
    full_subnet,
    hidden_width,
    in_student_order,
    pick_layers,
    resolve_count,
)

EXITS_ATTR = "autosqueeze_elastic_exits"  # the exit heads' child module on a student trained with ``exits``
Timer = Callable[[str], contextlib.AbstractContextManager[Any]]
log = logging.getLogger(__name__)

DEFAULT_STEPS = 600  # when neither ``steps`` nor ``epochs`` is given
SCHEDULES = ("sandwich", "progressive")
LAYER_CHOICES = ("even", "first", "mixed")
# settings added after the first students were cached: left out of the cache key at their default
# so a student trained before they existed keeps its key (and is reused, not retrained)
_KEY_OPTIONAL = {"epochs": None, "inplace_distill": False, "inplace_weight": 0.5, "inplace_hidden": False,
                 "schedule": "sandwich", "width_phase": 0.5, "layer_choice": "even", "min_hidden": 1.0,
                 "exits": False, "exit_weight": 1.0}


@dataclass(frozen=True)
class ElasticSettings:
    """How the elastic student is trained (part of its cache key)."""

    steps: int | None = None  # sandwich steps (600 when neither steps nor epochs is given)
    epochs: float | None = None  # or: passes over the training data, turned into steps (not with steps)
    lr: float = 5e-5
    random_subnets: int = 2  # per step, besides the largest and the smallest
    min_layers: int | float = 0.34  # count, or fraction of the depth
    min_heads: int | float = 0.25  # count, or fraction of a layer's heads
    min_ffn: int | float = 0.125  # count, or fraction of a layer's FFN neurons
    ffn_step: int | float = 0.0625  # granularity of sampled FFN widths
    min_hidden: int | float = 0.5  # count, or fraction of the hidden width (1.0: the hidden width is not elastic)
    hidden_step: int | float = 0.0625  # granularity of sampled hidden widths
    temperature: float = 1.0
    alpha_hidden: float = 1.0  # weight of the hidden-state MSE (0: logits only)
    importance_batches: int = 8  # batches for the Taylor importance that orders heads and neurons
    bf16: bool = False  # bf16 autocast for the forward passes (faster on CPUs with bf16 units)
    seed: int = 0
    inplace_distill: bool = False  # the largest sub-network's detached outputs also teach the smaller ones
    inplace_weight: float = 0.5  # their weight in the mix with the teacher's (1.0: the largest alone)
    inplace_hidden: bool = False  # hidden states too (else the smaller ones match the teacher's hidden states)
    schedule: str = "sandwich"  # or "progressive": full depth only for the first width_phase of the steps
    width_phase: float = 0.5  # fraction of the steps that shrink width only (schedule: progressive)
    layer_choice: str = "even"  # layers a shallow sub-network keeps: even | first | mixed
    # train exit heads after every layer with the sub-networks (early_exit training: elastic); None (left out of
    # the study file): as the search space needs, on when it has such a step (methods.elastic.settle, the elastic
    # step's study hook, run by search.study.settle_for_space)
    exits: bool | None = None
    exit_weight: float = 1.0  # weight of the exits' distillation (exit j of n kept layers: exit_weight * j / n)

    def __post_init__(self) -> None:
        if self.steps is not None and self.epochs is not None:
            raise ValueError(f"elastic: give steps ({self.steps}) or epochs ({self.epochs}), not both")
        for name in ("steps", "random_subnets", "importance_batches", "seed"):
            value = getattr(self, name)
            if name == "steps" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"elastic.{name} must be an integer >= 0, got {value!r}")
        for name in ("min_layers", "min_heads", "min_ffn", "ffn_step", "min_hidden", "hidden_step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or (
                    isinstance(value, float) and value > 1):
                raise ValueError(f"elastic.{name} must be a count >= 1 or a fraction in (0, 1], got {value!r}")
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"elastic.{name} must be a number > 0, got {value!r}")
        if self.epochs is not None and (isinstance(self.epochs, bool) or not isinstance(self.epochs, (int, float))
                                        or not math.isfinite(self.epochs) or not self.epochs > 0):
            raise ValueError(f"elastic.epochs must be a number > 0, got {self.epochs!r}")
        if isinstance(self.alpha_hidden, bool) or not isinstance(self.alpha_hidden, (int, float)) or \
                self.alpha_hidden < 0:
            raise ValueError(f"elastic.alpha_hidden must be a number >= 0, got {self.alpha_hidden!r}")
        for name in ("inplace_weight", "width_phase"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"elastic.{name} must be a number in [0, 1], got {value!r}")
        if isinstance(self.exit_weight, bool) or not isinstance(self.exit_weight, (int, float)) or \
                not math.isfinite(self.exit_weight) or not self.exit_weight > 0:
            raise ValueError(f"elastic.exit_weight must be a number > 0, got {self.exit_weight!r}")
        for name in ("bf16", "inplace_distill", "inplace_hidden", "exits"):
            if name == "exits" and self.exits is None:
                continue
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"elastic.{name} must be true or false, got {getattr(self, name)!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"elastic.schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if self.layer_choice not in LAYER_CHOICES:
            raise ValueError(f"elastic.layer_choice must be one of {list(LAYER_CHOICES)}, got {self.layer_choice!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key_dict(self) -> dict[str, Any]:
        """What the cache key hashes: every setting, except the later-added ones left at their default
        (so students cached before they existed keep their keys) or without effect (``inplace_weight``
        without ``inplace_distill``, ...); ``steps`` as 600 when neither ``steps`` nor ``epochs`` is
        given (the old default, same student)."""
        d = self.to_dict()
        d["exits"] = bool(self.exits)  # left to the space and no space asking: the student without exits
        if not self.inplace_distill:  # no effect without in-place distillation / the progressive schedule
            d.pop("inplace_weight"), d.pop("inplace_hidden")
        if self.schedule != "progressive":
            d.pop("width_phase")
        if not self.exits:
            d.pop("exit_weight")
        if self.min_hidden == 1.0:  # hidden width not elastic: no hidden reordering, the student of before
            d.pop("hidden_step")
        if d["steps"] is None and d["epochs"] is None:
            d["steps"] = DEFAULT_STEPS
        if d["steps"] is None:
            del d["steps"]
        return {k: v for k, v in d.items() if not (k in _KEY_OPTIONAL and v == _KEY_OPTIONAL[k]
                                                     and type(v) is type(_KEY_OPTIONAL[k]))}


def steps_per_epoch(train_examples: int, batch_size: int) -> int:
    """Training batches in one pass over the data (``TaskData.train_batches`` reshuffles on the remainder)."""
    return max(1, train_examples // max(1, batch_size))


def resolve_steps(settings: ElasticSettings, train_examples: int, batch_size: int) -> int:
    """The number of sandwich steps: ``steps``, or ``epochs`` passes of ``train_examples`` at ``batch_size``."""
    if settings.epochs is not None:
        return max(1, round(settings.epochs * steps_per_epoch(train_examples, batch_size)))
    return DEFAULT_STEPS if settings.steps is None else settings.steps


def subnet_space(model: nn.Module, settings: ElasticSettings) -> SubnetSpace:
    full = full_subnet(model, get_adapter(model))
    depth, heads, neurons = len(full.layers), min(full.heads), min(full.neurons)
    return SubnetSpace(depth=depth, heads=heads, neurons=neurons,
                       min_depth=resolve_count("elastic.min_layers", settings.min_layers, depth),
                       min_heads=resolve_count("elastic.min_heads", settings.min_heads, heads),
                       min_neurons=resolve_count("elastic.min_ffn", settings.min_ffn, neurons),
                       neuron_step=resolve_count("elastic.ffn_step", settings.ffn_step, neurons),
                       **hidden_space(model, settings))


def hidden_space(model: nn.Module, settings: ElasticSettings) -> dict[str, Any]:
    """The hidden-width fields of the sampled space (none where the family's hidden width is not elastic)."""
    hidden = hidden_width(model, get_adapter(model))
    if hidden is None:
        return {}
    return {"hidden": hidden, "min_hidden": resolve_count("elastic.min_hidden", settings.min_hidden, hidden),
            "hidden_step": resolve_count("elastic.hidden_step", settings.hidden_step, hidden)}


@dataclass(frozen=True)
class Targets:
    """One batch's distillation targets (the teacher's, or the largest sub-network's, detached),
    computed once per step and shared by every sub-network."""

    logits: torch.Tensor  # float32
    probs: torch.Tensor | None  # softmax(logits / T); None for regression
    hidden: tuple[torch.Tensor, ...] | None  # hidden states (embeddings first), masked, float32
    mask: torch.Tensor  # attention mask as (batch, seq, 1) floats


def make_targets(logits: torch.Tensor, hidden: tuple[torch.Tensor, ...] | None, inputs: Batch,
                 settings: ElasticSettings) -> Targets:
    logits = logits.detach().float()
    mask = inputs["attention_mask"].unsqueeze(-1).float()
    probs = None if logits.shape[-1] == 1 else F.softmax(logits / settings.temperature, -1)
    masked = tuple(h.detach().float() * mask for h in hidden) if hidden is not None else None
    return Targets(logits, probs, masked, mask)


def logits_loss(logits: torch.Tensor, targets: Targets, settings: ElasticSettings) -> torch.Tensor:
    if targets.probs is None:  # regression: match the target's value
        return F.mse_loss(logits, targets.logits)
    T = settings.temperature
    return F.kl_div(F.log_softmax(logits / T, -1), targets.probs, reduction="batchmean") * T * T


def hidden_loss(hidden: tuple[torch.Tensor, ...], subnet: Subnet, targets: Targets) -> torch.Tensor:
    """Mean MSE of the embeddings and each kept layer's output against the full-depth layer it came from."""
    assert targets.hidden is not None
    pairs = [(0, 0)] + [(i + 1, t + 1) for i, t in enumerate(subnet.layers)]
    total = sum(F.mse_loss(hidden[s].float() * targets.mask, targets.hidden[t][..., :hidden[s].shape[-1]])
                for s, t in pairs)  # a narrower hidden width: the first dims (targets in the student's order)
    return total / len(pairs)  # type: ignore[return-value]


def distill_loss(out: Any, subnet: Subnet, teacher: Targets, settings: ElasticSettings,
                 largest: Targets | None = None) -> torch.Tensor:
    """A sub-network's loss from its outputs: soft logits (+ ``alpha_hidden`` x hidden MSE) against the
    teacher, mixed ``(1 - inplace_weight) : inplace_weight`` with the largest sub-network's detached
    outputs when ``largest`` is given (in-place distillation; hidden states only with ``inplace_hidden``)."""
    logits = out.logits.float()
    w = settings.inplace_weight if largest is not None else 0.0
    loss = logits_loss(logits, teacher, settings) if w < 1 else logits.new_zeros(())
    if largest is not None and w > 0:
        loss = (1 - w) * loss + w * logits_loss(logits, largest, settings)
    if teacher.hidden is not None and settings.alpha_hidden > 0:
        if largest is not None and settings.inplace_hidden and largest.hidden is not None:
            h = hidden_loss(out.hidden_states, subnet, teacher) if w < 1 else logits.new_zeros(())
            h = (1 - w) * h + w * hidden_loss(out.hidden_states, subnet, largest) if w > 0 else h
        else:
            h = hidden_loss(out.hidden_states, subnet, teacher)
        loss = loss + settings.alpha_hidden * h
    return loss


def exits_loss(heads: nn.ModuleList, hidden: tuple[torch.Tensor, ...], subnet: Subnet, targets: Targets,
               settings: ElasticSettings) -> torch.Tensor:
    """The sub-network's intermediate exits distilled from ``targets``' logits: the head of each kept
    layer but the last on that layer's output (``hidden[j + 1]``), exit ``j`` (1-based) of ``n``
    weighted ``exit_weight * j / n``."""
    n = len(subnet.layers)
    total = hidden[0].new_zeros((), dtype=torch.float32)
    for j, layer in enumerate(subnet.layers[:-1]):
        logits = heads[layer].prefix_forward(hidden[j + 1]).float()
        total = total + (j + 1) / n * logits_loss(logits, targets, settings)
    return settings.exit_weight * total


def subnet_loss(student: nn.Module, subnet: Subnet, inputs: Batch, t_logits: torch.Tensor,
                t_hidden: tuple[torch.Tensor, ...] | None, settings: ElasticSettings) -> torch.Tensor:
    """Distillation loss of one sub-network from the teacher (model already activated as ``subnet``)."""
    out = student(**inputs, output_hidden_states=t_hidden is not None)
    return distill_loss(out, subnet, make_targets(t_logits, in_student_order(student, t_hidden), inputs, settings),
                        settings)


def with_layers(subnet: Subnet, depth: int, how: str) -> Subnet:
    """``subnet`` with its number of layers chosen by ``how`` (``even``: as sampled; ``first``: the bottom ones)."""
    if how == "even":
        return subnet
    return Subnet(tuple(pick_layers(depth, len(subnet.layers), how)), subnet.heads, subnet.neurons, subnet.hidden)


def step_subnets(space: SubnetSpace, settings: ElasticSettings, rng: random.Random, step: int,
                 total: int) -> list[Subnet]:
    """The sub-networks one step trains: largest, smallest, ``random_subnets`` random ones. With the
    progressive schedule, all of them full depth during the width phase; ``layer_choice`` picks the
    layers a shallow one keeps (``mixed``: even or first at random, per sub-network)."""
    if settings.schedule == "progressive" and step < round(settings.width_phase * total):
        space = dataclasses.replace(space, min_depth=space.depth)
    subnets = [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(settings.random_subnets)]
    if settings.layer_choice == "even":
        return subnets
    return [s if len(s.layers) == space.depth else
            with_layers(s, space.depth, settings.layer_choice if settings.layer_choice != "mixed"
                        else rng.choice(("even", "first"))) for s in subnets]


def check_exits_task(data: TaskData) -> None:
    if data.task.is_regression or data.task.num_labels < 2:
        raise ConfigError(f"elastic.exits: exit heads need a classification task ({data.task.name} is a "
                          f"regression); set exits: false")


def add_exit_heads(student: nn.Module, adapter: ArchAdapter, data: TaskData) -> nn.ModuleList:
    """The student's exit heads (``exits``): one per layer but the last, copies of its (reordered)
    classifier head, registered as the child ``EXITS_ATTR`` so they train with it (the store saves
    them apart from the student's own weights)."""
    from ..methods.early_exit import new_exit_heads

    check_exits_task(data)
    depth = len(adapter.layers(student))
    if depth < 2:
        raise ConfigError(f"elastic.exits: a {depth}-layer model has no layer to exit after; set exits: false")
    heads = nn.ModuleList(new_exit_heads(student, adapter, depth - 1))
    student.add_module(EXITS_ATTR, heads)
    return heads


def _no_timer(name: str) -> contextlib.AbstractContextManager[Any]:
    return contextlib.nullcontext()


def train_elastic(teacher: nn.Module, data: TaskData, settings: ElasticSettings,
                  progress: Progress | None = None, timer: Timer | None = None,
                  checkpoint: Checkpointing | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The elastic student of ``teacher``: reordered by importance, then sandwich-distilled.

    ``timer(name)`` (optional, for profiling) wraps each phase of a step in a context manager:
    ``data``, ``teacher``, ``forward.<sub-network>``, ``backward.<sub-network>`` (``largest``,
    ``smallest``, ``random1``, ...), ``optimizer``. ``checkpoint``: the run saves its state there
    every few minutes and, started again, continues from it (the same student as an unbroken run)."""
    t0 = time.perf_counter()
    if settings.exits:  # before the minutes of importance scoring
        check_exits_task(data)
    seed_everything(settings.seed)
    timer = timer or _no_timer
    total = resolve_steps(settings, len(data.train), data.batch_size)
    if settings.epochs is not None:
        log.info("elastic: %g epoch(s) of %d training examples at batch %d = %d steps", settings.epochs,
                 len(data.train), data.batch_size, total)
    teacher.eval()
    student = copy.deepcopy(teacher)
    adapter = get_adapter(student)
    ctx = MethodContext(adapter=adapter, seed=settings.seed, teacher=teacher, train_batches=data.train_batches,
                        num_labels=data.task.num_labels, is_regression=data.task.is_regression)
    head_scores, neuron_scores = importance_scores(student, ctx, settings.importance_batches)
    orders = reorder(student, adapter, head_scores, neuron_scores)
    space = subnet_space(student, settings)
    if space.elastic_hidden:  # the hidden dimensions too, most important first (outputs unchanged)
        orders["hidden"] = [reorder_hidden(student, adapter, hidden_importance(student, ctx,
                                                                               settings.importance_batches))]
    rng = random.Random(settings.seed)
    heads = add_exit_heads(student, adapter, data) if settings.exits else None  # after the reordering
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.01},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=settings.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, int(0.06 * total)))
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if settings.bf16 else contextlib.nullcontext
    want_hidden = settings.alpha_hidden > 0  # the teacher's hidden states (targets)
    student_hidden = want_hidden or heads is not None  # the student's (its exits read each kept layer's)
    names = ["largest", "smallest"] + [f"random{i + 1}" for i in range(settings.random_subnets)]
    ema = {"largest": math.nan, "smallest": math.nan}
    start, earlier_s = 0, 0.0  # a resumed run: the steps and training seconds of the runs before
    if checkpoint is not None and (state := checkpoint.load(student, opt, sched, rng)) is not None:
        start, earlier_s = int(state["step"]), float(state["train_s"])
        ema = {k: float(v) for k, v in state["ema"].items()}
    student.train()
    batches: Iterator[Batch] = iter(data.train_batches(total, settings.seed + 7))
    for _ in range(start):  # a resumed run: the batches the earlier runs trained on (seconds to re-draw)
        next(batches)
    with elastic_mode(student, adapter):
        for step in range(start, total):
            with timer("data"):
                batch = next(batches)
                inputs = {k: v for k, v in batch.items() if k != "labels"}
            with timer("teacher"), torch.no_grad(), autocast():  # once per step, shared by every sub-network
                t_out = teacher(**inputs, output_hidden_states=want_hidden)
                t_targets = make_targets(t_out.logits, in_student_order(student, t_out.hidden_states)
                                         if want_hidden else None, inputs, settings)
            subnets = step_subnets(space, settings, rng, step, total)
            opt.zero_grad(set_to_none=True)
            largest: Targets | None = None
            for i, subnet in enumerate(subnets):
                with timer(f"forward.{names[i]}"), activate(student, adapter, subnet), autocast():
                    out = student(**inputs, output_hidden_states=student_hidden)
                    loss = distill_loss(out, subnet, t_targets, settings, largest)
                    if heads is not None:
                        loss = loss + exits_loss(heads, out.hidden_states, subnet, t_targets, settings)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"elastic training: loss became {loss.item()} at step {step}")
                with timer(f"backward.{names[i]}"):
                    (loss / len(subnets)).backward()
                if i == 0 and settings.inplace_distill:  # the largest teaches the others: detached, no gradient back
                    largest = make_targets(out.logits, out.hidden_states if want_hidden and settings.inplace_hidden
                                           else None, inputs, settings)
                if i < 2:
                    name = names[i]
                    ema[name] = loss.item() if math.isnan(ema[name]) else 0.9 * ema[name] + 0.1 * loss.item()
            with timer("optimizer"):
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
            if progress:
                progress("elastic", step + 1, total, dict(ema))
            if checkpoint is not None and checkpoint.due(step + 1, total):
                checkpoint.save(step + 1, student, opt, sched, rng,
                                {"ema": ema, "train_s": earlier_s + time.perf_counter() - t0})
    student.eval()
    info = {"orders": orders, "space": asdict(space), "loss": ema, "train_s": earlier_s + time.perf_counter() - t0,
            "steps": total, "epochs": total * data.batch_size / max(1, len(data.train))}
    if heads is not None:
        info["exits"] = {"heads": len(heads), "activation": heads[0].activation}
    return student, info
