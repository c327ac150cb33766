"""Knowledge distillation: recover a compressed student from the (fine-tuned) teacher.

The loss mixes the teacher's soft logits (temperature ``T``), the gold labels, and
optionally hidden states (MSE) and attention maps (MSE) of mapped layers — the survey's
"multiple KD combined". The student is whatever the earlier recipe steps made of the
teacher (fewer layers, fewer heads …), so it starts from the teacher's weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..train import seed_everything, train_loop
from .common import has_quantized_layers
from .context import Batch, MethodContext
from .registry import MethodError, Stage, register


@dataclass(frozen=True)
class DistillConfig:
    steps: int = 300
    lr: float = 1e-4
    temperature: float = 2.0
    alpha_logits: float = 1.0  # weight of the soft-logit loss
    alpha_labels: float = 0.0  # weight of the gold-label loss
    alpha_hidden: float = 0.0  # weight of hidden-state MSE (needs equal hidden sizes)
    alpha_attention: float = 0.0  # weight of attention-map MSE (needs equal head counts)

    def __post_init__(self) -> None:
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
    kept = ctx.cache.get("kept_layers")
    if kept and len(kept) == n_s:
        return list(kept)
    return [round((i + 1) * n_t / n_s) - 1 for i in range(n_s)]


def distill_loss(config: DistillConfig, teacher: nn.Module, layer_map: list[int]):
    want_hidden, want_attn = config.alpha_hidden > 0, config.alpha_attention > 0

    def loss_fn(student: nn.Module, batch: Batch) -> torch.Tensor:
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        extra = {"output_hidden_states": want_hidden, "output_attentions": want_attn}
        with torch.no_grad():
            t_out = teacher(**inputs, **extra)
        s_out = student(**inputs, **extra)
        T = config.temperature
        loss = torch.zeros(())
        regression = labels.dtype.is_floating_point
        if config.alpha_logits:
            if regression:
                loss = loss + config.alpha_logits * F.mse_loss(s_out.logits, t_out.logits)
            else:
                kd = F.kl_div(F.log_softmax(s_out.logits / T, -1), F.softmax(t_out.logits / T, -1),
                              reduction="batchmean")
                loss = loss + config.alpha_logits * kd * T * T
        if config.alpha_labels:
            gold = F.mse_loss(s_out.logits.squeeze(-1), labels) if regression else F.cross_entropy(s_out.logits, labels)
            loss = loss + config.alpha_labels * gold
        if want_hidden:  # hidden_states[0] is the embedding output
            pairs = [(0, 0)] + [(i + 1, t + 1) for i, t in enumerate(layer_map)]
            mask = inputs["attention_mask"].unsqueeze(-1).float()
            h = sum(F.mse_loss(s_out.hidden_states[s] * mask, t_out.hidden_states[t] * mask) for s, t in pairs)
            loss = loss + config.alpha_hidden * h / len(pairs)
        if want_attn:
            if not s_out.attentions or s_out.attentions[0] is None:
                raise MethodError("attention distillation needs attn_implementation='eager' on both models")
            a = sum(F.mse_loss(s_out.attentions[i], t_out.attentions[t]) for i, t in enumerate(layer_map))
            loss = loss + config.alpha_attention * a / len(layer_map)
        return loss

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
    loss_fn = distill_loss(config, ctx.teacher, _layer_map(model, ctx.teacher, ctx))
    stats = train_loop(
        model, ctx.batches(config.steps, seed_offset=1), loss_fn, steps=config.steps, lr=config.lr,
        progress=ctx.progress, what="distill", should_stop=ctx.cache.get("should_stop"),
        post_step=ctx.post_step_hooks,
    )
    ctx.decisions["steps_done"] = int(stats["steps"])
    return model


SPEC = register(
    "distill",
    DistillConfig,
    apply,
    stage=Stage.TRAIN,
    trains=True,
    family="knowledge distillation",
    summary="recover from the teacher: soft logits, labels, hidden states, attention maps",
)
