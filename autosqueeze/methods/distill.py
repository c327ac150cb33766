"""Knowledge distillation: recover a compressed student from the (fine-tuned) teacher.

The loss mixes the teacher's soft logits (temperature ``T``), the gold labels, and
optionally hidden states (MSE) and attention maps (MSE) of mapped layers — the survey's
"multiple KD combined". The student is whatever the earlier recipe steps made of the
teacher (fewer layers, fewer heads …), so it starts from the teacher's weights.

- Layer map: student layer i is compared with the teacher layer it came from
  (``ctx.kept_layers``, set by ``drop_layers`` and ``elastic``); without it, uniformly.
- Attention maps exist only with eager attention: when ``alpha_attention > 0`` student and
  teacher are switched to ``eager`` for the duration of training and restored after.
  Where a student layer has fewer heads than its teacher layer (head pruning), the
  head-averaged maps are compared; with equal head counts, head by head.
- Hidden states must have the same width on both sides (our students are cut from the
  teacher); a different width raises MethodError (no learned projection).
- Teacher outputs are cached in ``ctx.teacher_outputs`` keyed by (teacher, batch seed, batch index),
  checked against the batch's token ids, so a second training step or a repeated
  application on the same batches skips the teacher forward. Logits are always cached;
  hidden states / attention maps only while the cache stays under ``CACHE_BUDGET_BYTES``.

Size and latency: unchanged (training changes weights only).
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..train import seed_everything, train_loop
from .common import has_quantized_layers
from .context import Batch, MethodContext, TeacherOutputCache
from .hooks import FinalBudget
from .registry import MethodError, Stage, register

log = logging.getLogger(__name__)
CACHE_BUDGET_BYTES = 256 * 2**20  # hidden states / attention maps cached only under this total


@dataclass(frozen=True)
class DistillConfig:
    steps: int = 300
    lr: float = 1e-4
    temperature: float = 2.0
    alpha_logits: float = 1.0  # weight of the soft-logit loss
    alpha_labels: float = 0.0  # weight of the gold-label loss
    alpha_hidden: float = 0.0  # weight of hidden-state MSE (needs equal hidden sizes)
    alpha_attention: float = 0.0  # weight of attention-map MSE (head-averaged where head counts differ)
    bf16: bool = False  # bf16 autocast for the forward passes (faster on CPUs with bf16 units, slower without)

    def __post_init__(self) -> None:
        if not isinstance(self.bf16, bool):
            raise ValueError(f"bf16 must be true or false, got {self.bf16!r}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if not self.lr > 0 or not self.temperature > 0:
            raise ValueError("lr and temperature must be > 0")
        weights = (self.alpha_logits, self.alpha_labels, self.alpha_hidden, self.alpha_attention)
        if min(weights) < 0 or sum(weights) == 0:
            raise ValueError("loss weights must be >= 0 and not all zero")


def _layer_map(student: nn.Module, teacher: nn.Module, ctx: MethodContext) -> list[int]:
    """Teacher layer index for each student layer: the kept indices when layers were dropped."""
    n_s, n_t = len(ctx.adapter.layers(student)), len(ctx.adapter.layers(teacher))
    kept = ctx.kept_layers
    if kept and len(kept) == n_s:
        return list(kept)
    return [round((i + 1) * n_t / n_s) - 1 for i in range(n_s)]


@contextlib.contextmanager
def eager_attention(*models: nn.Module) -> Iterator[None]:
    """Run ``models`` with eager attention (which returns attention maps), then restore."""
    before = [m.config._attn_implementation for m in models]
    try:
        for m in models:
            _set_attn(m, "eager")
        yield
    finally:
        for m, impl in zip(models, before):
            _set_attn(m, impl)


def _set_attn(model: nn.Module, impl: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(impl)
    else:
        model.config._attn_implementation = impl


def attention_loss(student_maps: torch.Tensor, teacher_maps: torch.Tensor) -> torch.Tensor:
    """MSE of attention maps (batch, heads, q, k); head-averaged when the head counts differ."""
    if student_maps.shape[1] != teacher_maps.shape[1]:
        return F.mse_loss(student_maps.mean(1), teacher_maps.mean(1))
    return F.mse_loss(student_maps, teacher_maps)


class TeacherOutputs:
    """Teacher forwards for numbered batches, cached in ``cache`` (``ctx.teacher_outputs``; see
    the module docstring)."""

    def __init__(self, teacher: nn.Module, cache: TeacherOutputCache, seed: int, hidden: bool, attn: bool) -> None:
        self.teacher, self.seed, self.hidden, self.attn = teacher, seed, hidden, attn
        self.store = cache
        self.hits = self.misses = 0

    def __call__(self, index: int, inputs: Batch) -> dict[str, Any]:
        key = (id(self.teacher), self.seed, index)
        entry = self.store.entries.get(key)
        if entry is not None and _same_inputs(entry["inputs"], inputs) and (
                not self.hidden or entry["hidden"] is not None) and (not self.attn or entry["attn"] is not None):
            self.hits += 1
            return entry
        self.misses += 1
        with torch.no_grad():
            out = self.teacher(**inputs, output_hidden_states=self.hidden, output_attentions=self.attn)
        entry = {"inputs": dict(inputs), "logits": out.logits.detach(),
                 "hidden": tuple(out.hidden_states) if self.hidden else None,
                 "attn": tuple(out.attentions) if self.attn and out.attentions else None}
        self._keep(key, entry)
        return entry

    def _keep(self, key: tuple, entry: dict[str, Any]) -> None:
        big = [t for name in ("hidden", "attn") for t in (entry[name] or ())]
        big_bytes = sum(t.numel() * t.element_size() for t in big)
        small = [entry["logits"], *entry["inputs"].values()]
        small_bytes = sum(t.numel() * t.element_size() for t in small)
        old = self.store.entries.get(key)
        if old is not None:
            self.store.nbytes -= old["bytes"]
        if big and self.store.nbytes + small_bytes + big_bytes > CACHE_BUDGET_BYTES:
            entry = {**entry, "hidden": None, "attn": None}  # keep logits only
            big_bytes = 0
        entry["bytes"] = small_bytes + big_bytes
        self.store.entries[key] = entry
        self.store.nbytes += entry["bytes"]


def _same_inputs(a: Batch, b: Batch) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def distill_loss(config: DistillConfig, teacher: nn.Module | TeacherOutputs, layer_map: list[int],
                 hidden_index: list[int] | None = None):
    """``loss_fn(student, batch)`` for train_loop; ``teacher`` a model or a (cached) TeacherOutputs
    (with TeacherOutputs the calls are numbered: the i-th call is the i-th batch of its seed).
    ``hidden_index``: the teacher hidden dimension of each student dimension (a student whose hidden
    width was reordered or cut, ``MethodContext.kept_hidden``); its hidden states are compared with
    those dimensions of the teacher's."""
    index = None if hidden_index is None else torch.as_tensor(hidden_index, dtype=torch.long)
    want_hidden, want_attn = config.alpha_hidden > 0, config.alpha_attention > 0
    if isinstance(teacher, nn.Module):
        teacher = TeacherOutputs(teacher, TeacherOutputCache(), seed=0, hidden=want_hidden, attn=want_attn)
        numbered = False
    else:
        numbered = True
    calls = [0]

    def loss_fn(student: nn.Module, batch: Batch) -> torch.Tensor:
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        number = calls[0] if numbered else -1  # batches arrive in order, one per call
        calls[0] += 1
        t_out = teacher(number, inputs)
        s_out = student(**inputs, output_hidden_states=want_hidden, output_attentions=want_attn)
        T = config.temperature
        loss = s_out.logits.new_zeros(())
        regression = labels.dtype.is_floating_point
        if config.alpha_logits:
            if regression:
                loss = loss + config.alpha_logits * F.mse_loss(s_out.logits, t_out["logits"])
            else:
                kd = F.kl_div(F.log_softmax(s_out.logits / T, -1), F.softmax(t_out["logits"] / T, -1),
                              reduction="batchmean")
                loss = loss + config.alpha_logits * kd * T * T
        if config.alpha_labels:
            gold = F.mse_loss(s_out.logits.squeeze(-1), labels) if regression else F.cross_entropy(s_out.logits, labels)
            loss = loss + config.alpha_labels * gold
        if want_hidden:  # hidden_states[0] is the embedding output
            pairs = [(0, 0)] + [(i + 1, t + 1) for i, t in enumerate(layer_map)]
            s_h, t_h = s_out.hidden_states, t_out["hidden"]
            if index is not None:  # the teacher's dimensions the student's are (reordered / cut hidden width)
                t_h = tuple(h.index_select(-1, index.to(h.device)) for h in t_h)
            if s_h[-1].shape[-1] != t_h[-1].shape[-1]:
                raise MethodError(f"hidden-state distillation needs equal hidden sizes (student "
                                  f"{s_h[-1].shape[-1]}, teacher {t_h[-1].shape[-1]}); set alpha_hidden: 0")
            mask = inputs["attention_mask"].unsqueeze(-1).to(s_h[0].dtype)
            h = sum(F.mse_loss(s_h[s] * mask, t_h[t] * mask) for s, t in pairs)
            loss = loss + config.alpha_hidden * h / len(pairs)
        if want_attn:
            if not s_out.attentions or s_out.attentions[0] is None or t_out["attn"] is None:
                raise MethodError("attention distillation needs attn_implementation='eager' on both models")
            a = sum(attention_loss(s_out.attentions[i], t_out["attn"][t]) for i, t in enumerate(layer_map))
            loss = loss + config.alpha_attention * a / len(layer_map)
        return loss

    loss_fn.teacher_outputs = teacher  # type: ignore[attr-defined]  # hit/miss counters for tests
    return loss_fn


def apply(model: nn.Module, config: DistillConfig, ctx: MethodContext) -> nn.Module:
    if ctx.probe or ctx.replay or config.steps == 0:
        return model  # training changes weights only
    if ctx.teacher is None:
        raise MethodError("distill needs a teacher model in the context")
    if has_quantized_layers(model):
        raise MethodError("distill: cannot train a model whose layers are already int8; put quantization last")
    seed_everything(ctx.seed)
    ctx.teacher.eval()
    seed_offset = 1
    want_hidden, want_attn = config.alpha_hidden > 0, config.alpha_attention > 0
    outputs = TeacherOutputs(ctx.teacher, ctx.teacher_outputs, ctx.seed + seed_offset, want_hidden, want_attn)
    loss_fn = distill_loss(config, outputs, _layer_map(model, ctx.teacher, ctx), ctx.kept_hidden)
    switch = eager_attention(model, ctx.teacher) if want_attn else contextlib.nullcontext()
    with switch:
        stats = train_loop(
            model, ctx.batches(config.steps, seed_offset=seed_offset), loss_fn, steps=config.steps, lr=config.lr,
            progress=ctx.progress, what="distill", bf16=config.bf16, **ctx.training_callbacks(model),
        )
    log.debug("distill: teacher outputs %d cached, %d computed", outputs.hits, outputs.misses)
    ctx.decisions["steps_done"] = int(stats["steps"])
    return model


def final_params(params: Mapping[str, Any] | None, budget: FinalBudget) -> dict[str, Any]:
    """The recovery step at finalize's full fidelity: the recipe's own distill step trained ``budget.steps``
    steps, or (``params`` None) a new one distilling soft logits and hidden states at the budget's
    lr and temperature. ``bf16`` is set only when on: recipes finalized before keep their form."""
    bf16 = {"bf16": True} if budget.bf16 else {}
    if params is not None:
        return {**params, "steps": budget.steps, **bf16}
    return {"steps": budget.steps, "lr": budget.lr, "temperature": budget.temperature, "alpha_logits": 1.0,
            "alpha_hidden": budget.alpha_hidden, **bf16}


SPEC = register(
    "distill",
    DistillConfig,
    apply,
    stage=Stage.TRAIN,
    trains=True,
    family="knowledge distillation",
    summary="recover from the teacher: soft logits, labels, hidden states, attention maps",
    recovery=final_params,
)
