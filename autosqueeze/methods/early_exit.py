"""Early exit (dynamic inference): stop computing layers once the prediction is confident.

An exit head (a copy of the model's own classifier head: CLS token → dense → activation →
output) sits after every encoder layer except the last, which keeps the model's own
classifier. ``training`` says how the exits learn (``steps``, ``lr``):

- ``frozen`` (DeeBERT's second stage): each head is distilled from the model's own final
  logits; the backbone gets no gradient, so it stays exactly as it was. Cheap, but the
  lower layers were never trained to be classified from, so few inputs leave early.
- ``joint`` (BERxiT / PABEE-style): backbone, classifier and every exit head are trained
  together on the weighted sum of the exit losses, exit i (1-based, the final classifier
  being exit ``depth``) weighted by i; each exit's loss is ``alpha_distill`` × the
  distillation loss from the teacher's logits (temperature ``temperature``; the gold labels
  alone when there is no teacher) + (1 − ``alpha_distill``) × cross-entropy on the gold
  labels. The lower layers learn to be classified from, which is what makes exits pay.
  Post-step hooks (pruning masks, the trial's early stopper) see the whole model.
- ``elastic`` (no training): the heads the elastic student trained along with its
  sub-networks (study file ``elastic: {exits: true}``; ``autosqueeze.elastic``), sliced by the
  recipe's ``elastic`` step with the sub-network (its kept layers, its hidden width) and handed
  over in ``ctx.exit_heads``; ``steps``, ``lr``, ``alpha_distill`` and ``temperature`` play no
  part (``steps`` reads 0). A step between ``elastic`` and ``early_exit`` that changes the
  depth or the hidden width is refused (the heads' count and shapes no longer fit); one that
  trains the backbone (finalize's ``distill``) leaves the heads as the student trained them.
  Only ``rule``, ``threshold`` and ``patience`` are then per-trial choices: an elastic search
  tries exit rules and thresholds at no training cost. On a one-layer sub-network (no layer to
  exit after) the step leaves the model as it is.

``frozen`` and ``joint`` honour the trial's early stopper and post-step hooks, which see the whole model
(``ctx.training_callbacks``). ``lr`` defaults to 5e-4 (frozen: heads only) or 1e-4 (joint).
At inference a batch leaves at layer i when

- ``rule: entropy`` — every example's prediction entropy, normalised by log(num_labels) to
  [0, 1], is <= ``threshold`` (DeeBERT). ``threshold: 0`` turns exits off (the heads are
  not even run: exactly the base model); 1 always exits after the first layer;
- ``rule: patience`` — every example's predicted class has stayed the same for ``patience``
  consecutive exit heads (PABEE).

The model's ``forward`` is replaced (on the instance) by one that runs the embeddings and
the layers one by one, so the layers after the exit are really not computed. It returns an
object with ``.logits`` as before; each call records how many layers it ran (the model is a
``capabilities.ExitStats`` one): ``model.autosqueeze_exit_stats()`` → ``{"mean_exit_layer", "calls", ...}`` (layers run,
1..depth) and ``model.autosqueeze_reset_exit_stats()``. In training mode, or when hidden
states / attentions are asked for, the full-depth forward of the model's class runs.

Structure without data: in replay and probe mode ``apply`` builds the heads (untrained
copies of the classifier head) and skips training, so the method is registered with
``trains=False`` (apply_recipe would otherwise skip it and the structure would be missing).
In probe mode the untrained heads would exit arbitrarily, so exits are disabled there (the
heads are not run): the probe's latency is that of the full-depth model, the worst case
but for the exit checks' small overhead. ``training: elastic`` is the exception: its heads come
trained, the probe is the final model with its exits on, and the registry counts the step as
data-free for that config (``data_free_when``: a trial builds it once, times it once).

Size: + (depth−1) · (hidden² + hidden·(labels+1) + labels) parameters, none in the
embeddings. Latency: data dependent — the profile's latency must be measured on real dev
batches at the profile's batch size (a ``capabilities.RealInputs`` model: ``needs_real_inputs(model)``), and
the task metric depends on the batch size too (a batch exits only when all its examples may).
Classification only (entropy is not defined for a regression score). Not exportable to ONNX
(data-dependent control flow).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import MethodType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from ..arch import ArchAdapter, get_adapter
from ..capabilities import attach_exit_stats, mark_real_inputs
from ..measure.latency import needs_real_inputs as needs_real_inputs  # the one predicate, also here for callers
from ..train import seed_everything, train_loop
from .common import has_quantized_layers
from .context import MethodContext
from .distill import TeacherOutputs
from .registry import MethodError, Stage, register

RULES = ("entropy", "patience")
TRAINING = ("frozen", "joint", "elastic")
ATTR = "autosqueeze_exit"  # the EarlyExit child module on the task model
_ACTIVATIONS = {"tanh": torch.tanh, "gelu": F.gelu, "relu": F.relu}
# Classifier head of each family: (dense, output, activation), paths relative to the task
# model ("{base}" = the backbone attribute). In eval mode (no dropout) logits = out(act(dense(h[:, 0]))).
_HEADS = {
    "bert": ("{base}.pooler.dense", "classifier", "tanh"),
    "roberta": ("classifier.dense", "classifier.out_proj", "tanh"),
    "electra": ("classifier.dense", "classifier.out_proj", "gelu"),
    "distilbert": ("pre_classifier", "classifier", "relu"),
    "mpnet": ("classifier.dense", "classifier.out_proj", "tanh"),
    "deberta-v2": ("pooler.dense", "classifier", "gelu"),  # ContextPooler with pooler_hidden_act gelu
}


@dataclass(frozen=True)
class EarlyExitConfig:
    threshold: float = 0.3  # rule entropy: exit when normalised entropy <= threshold (0: never)
    rule: str = "entropy"
    patience: int = 2  # rule patience: unchanged predictions over this many consecutive heads
    steps: int = 200  # training steps (heads only, or backbone and heads: ``training``)
    lr: float | None = None  # None: 5e-4 frozen, 1e-4 joint
    training: str = "frozen"  # frozen | joint | elastic (the elastic student's heads, no training)
    alpha_distill: float = 0.5  # joint: weight of distillation from the teacher vs gold labels
    temperature: float = 2.0  # joint: distillation temperature

    def __post_init__(self) -> None:
        if self.training not in TRAINING:
            raise ValueError(f"training must be one of {TRAINING}, got {self.training!r}")
        if not 0.0 <= self.alpha_distill <= 1.0:
            raise ValueError(f"alpha_distill must be in [0, 1], got {self.alpha_distill}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold is a normalised entropy in [0, 1], got {self.threshold}")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.training == "elastic":  # the heads come trained with the elastic student: nothing to train
            object.__setattr__(self, "steps", 0)

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-4 if self.training == "joint" else 5e-4)


class ExitHead(nn.Module):
    """CLS token → dense → activation → output: the shape of the model's own classifier head."""

    def __init__(self, dense: nn.Linear, out: nn.Linear, activation: str) -> None:
        super().__init__()
        self.dense, self.out, self.activation = dense, out, activation

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.out(_ACTIVATIONS[self.activation](self.dense(hidden_states[:, 0])))

    def prefix_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The head on hidden states of a narrower width ``k`` (an elastic sub-network's, in training):
        the first ``k`` input columns of ``dense``, as slicing the head to that width keeps."""
        k = hidden_states.shape[-1]
        x = F.linear(hidden_states[:, 0], self.dense.weight[:, :k], self.dense.bias)
        return self.out(_ACTIVATIONS[self.activation](x))


class EarlyExit(nn.Module):
    """The exit heads (``heads[i]`` after layer i), the exit rule and the exit counters."""

    def __init__(self, heads: list[ExitHead], config: EarlyExitConfig, num_labels: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.rule, self.threshold, self.patience = config.rule, config.threshold, config.patience
        self.enabled = True  # False in probe mode (untrained heads)
        self.log_labels = math.log(num_labels)
        self.reset_stats()

    def reset_stats(self) -> None:
        self.calls, self.layers_run = 0, 0
        self.histogram = [0] * (len(self.heads) + 1)  # calls that ran 1..depth layers

    def stats(self) -> dict[str, Any]:
        depth = len(self.heads) + 1
        mean = self.layers_run / self.calls if self.calls else float("nan")
        return {"mean_exit_layer": mean, "calls": self.calls, "depth": depth,
                "mean_depth_fraction": mean / depth, "histogram": list(self.histogram)}

    def record(self, layers: int) -> None:
        self.calls += 1
        self.layers_run += layers
        self.histogram[layers - 1] += 1

    def can_exit(self) -> bool:
        """False when no batch can ever leave early (probe mode, or entropy threshold 0)."""
        return self.enabled and not (self.rule == "entropy" and self.threshold <= 0.0)

    def should_exit(self, logits: torch.Tensor, state: dict[str, Any]) -> bool:
        """Whether the whole batch may leave with these logits (``state`` carries patience)."""
        if not self.can_exit():
            return False
        if self.rule == "entropy":
            logp = F.log_softmax(logits.float(), -1)
            entropy = -(logp.exp() * logp).sum(-1) / self.log_labels
            return bool((entropy <= self.threshold).all())
        pred = logits.argmax(-1)
        prev = state.get("pred")
        count = torch.zeros_like(pred) if prev is None else torch.where(pred == prev, state["count"] + 1, 0)
        state["pred"], state["count"] = pred, count
        return bool((count >= self.patience).all())


# --- running the backbone layer by layer ------------------------------------------------
def _embed(model: nn.Module, adapter: ArchAdapter, inputs: dict[str, Any]) -> tuple[torch.Tensor, Any]:
    """Embedding output and what each layer needs (mask, shared position bias), as the backbone builds them."""
    return adapter.embed(model, inputs)


def _head_parts(model: nn.Module, adapter: ArchAdapter) -> tuple[nn.Module, nn.Module, str]:
    if adapter.family not in _HEADS:
        raise MethodError(f"early_exit: no exit-head layout is known for {adapter.family} models")
    dense_path, out_path, act = _HEADS[adapter.family]
    if adapter.family == "deberta-v2" and getattr(model.config, "pooler_hidden_act", "gelu") != "gelu":
        raise MethodError(f"early_exit: deberta-v2 pooler activation {model.config.pooler_hidden_act!r} is not "
                          f"supported (gelu is)")
    try:
        dense = model.get_submodule(dense_path.format(base=adapter.base_attr))
        out = model.get_submodule(out_path)
    except AttributeError as err:
        raise MethodError(f"early_exit: the model has no sequence-classification head where a "
                          f"{adapter.family} model keeps it ({err})") from None
    return dense, out, act


def final_logits(model: nn.Module, adapter: ArchAdapter, hidden: torch.Tensor) -> torch.Tensor:
    """The model's own classifier on the last hidden states (eval mode: no dropout)."""
    dense, out, act = _head_parts(model, adapter)
    return out(_ACTIVATIONS[act](dense(hidden[:, 0])))


def all_layer_outputs(model: nn.Module, adapter: ArchAdapter,
                      inputs: dict[str, Any]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every layer's output and the final logits, computed like the early-exit forward."""
    hidden, mask = _embed(model, adapter, inputs)
    outs = []
    for layer in adapter.layers(model):
        hidden = adapter.run_layer(layer, hidden, mask)
        outs.append(hidden)
    return outs, final_logits(model, adapter, hidden)


def _early_exit_forward(self: nn.Module, input_ids: torch.Tensor | None = None,
                        attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                        **kwargs: Any) -> Any:
    """Replacement ``forward`` of a task model with exit heads (bound to the instance)."""
    ee: EarlyExit = getattr(self, ATTR)
    full_depth = self.training or kwargs.get("output_hidden_states") or kwargs.get("output_attentions")
    if full_depth:
        return type(self).forward(self, input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
    kwargs.pop("return_dict", None)
    unknown = set(kwargs) - {"token_type_ids", "position_ids", "inputs_embeds"}
    if unknown:
        raise TypeError(f"early-exit forward got unexpected argument(s) {sorted(unknown)}")
    adapter = get_adapter(self)
    hidden, mask = _embed(self, adapter, {"input_ids": input_ids, "attention_mask": attention_mask, **kwargs})
    layers = adapter.layers(self)
    state: dict[str, Any] = {}
    logits = None
    checks = ee.can_exit()  # when no exit is possible the heads are not even run
    for i, layer in enumerate(layers):
        hidden = adapter.run_layer(layer, hidden, mask)
        if checks and i < len(layers) - 1:
            head_logits = ee.heads[i](hidden)
            if ee.should_exit(head_logits, state):
                logits = head_logits
                break
    if logits is None:
        logits = final_logits(self, adapter, hidden)
    ee.record(i + 1)
    loss = F.cross_entropy(logits, labels) if labels is not None else None
    return SequenceClassifierOutput(loss=loss, logits=logits)


def exit_stats(model: nn.Module) -> dict[str, Any]:
    """Exit counters of an early-exit model: mean layers run per call, calls, histogram."""
    return getattr(model, ATTR).stats()


def reset_exit_stats(model: nn.Module) -> None:
    getattr(model, ATTR).reset_stats()


# --- apply ----------------------------------------------------------------------------
def new_exit_heads(model: nn.Module, adapter: ArchAdapter, count: int) -> list[ExitHead]:
    """``count`` exit heads, each a copy of the model's own classifier head (its current weights)."""
    dense, out, act = _head_parts(model, adapter)
    if not (isinstance(dense, nn.Linear) and isinstance(out, nn.Linear)):
        raise MethodError("early_exit: the classifier head must be float nn.Linear layers (put quantization last)")
    return [ExitHead(_copy_linear(dense), _copy_linear(out), act) for _ in range(count)]


def _build(model: nn.Module, config: EarlyExitConfig, ctx: MethodContext) -> EarlyExit:
    adapter = ctx.adapter
    depth = len(adapter.layers(model))
    if depth < 2:
        raise MethodError(f"early_exit needs at least 2 encoder layers, the model has {depth}")
    heads = new_exit_heads(model, adapter, depth - 1)
    if config.training == "elastic" and not ctx.replay:  # replay: the saved weights fill the heads in
        _load_elastic_heads(heads, ctx)
    return EarlyExit(heads, config, heads[0].out.out_features)


def _load_elastic_heads(heads: list[ExitHead], ctx: MethodContext) -> None:
    """The elastic student's trained heads (sliced by the ``elastic`` step) into ``heads``."""
    given = ctx.exit_heads
    if given is None:
        if ctx.probe:  # structure only (space validation has no student): untrained copies, exits disabled
            return
        raise MethodError("early_exit training: elastic takes the exit heads of the elastic student, and this "
                          "recipe's elastic step handed over none: put early_exit right after an elastic step whose "
                          "student was trained with elastic.exits: true")
    if len(given) != len(heads):
        raise MethodError(f"early_exit training: elastic: the elastic step handed over {len(given)} exit head(s) "
                          f"for a {len(heads) + 1}-layer model (a step between them changed the depth?)")
    for head, state in zip(heads, given):
        try:
            head.load_state_dict(state, strict=True)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise MethodError(f"early_exit training: elastic: the student's exit heads do not fit this model (a step "
                              f"between elastic and early_exit changed the hidden width?): {first}") from None


def _copy_linear(lin: nn.Linear) -> nn.Linear:
    new = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None,
                    device=lin.weight.device, dtype=lin.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(lin.weight)
        if lin.bias is not None:
            new.bias.copy_(lin.bias)
    return new


def _train_heads(model: nn.Module, ee: EarlyExit, config: EarlyExitConfig, ctx: MethodContext) -> int:
    """Distil each head from the model's own final logits; the backbone gets no gradient."""
    model.eval()

    def loss_fn(heads: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            outs, final = all_layer_outputs(model, ctx.adapter, inputs)
            target = F.softmax(final.float(), -1)
        losses = [F.kl_div(F.log_softmax(head(h).float(), -1), target, reduction="batchmean")
                  for head, h in zip(heads, outs)]
        return torch.stack(losses).mean()

    seed_everything(ctx.seed)
    stats = train_loop(ee.heads, ctx.batches(config.steps, seed_offset=2), loss_fn, steps=config.steps,
                       lr=config.learning_rate(), progress=ctx.progress, what="early_exit",
                       **ctx.training_callbacks(model))  # the hooks and the stopper see the whole model
    model.eval()
    return int(stats["steps"])


def exit_losses(logits: list[torch.Tensor], labels: torch.Tensor, teacher_logits: torch.Tensor | None,
                config: EarlyExitConfig) -> torch.Tensor:
    """Each exit's loss (one value per exit, the final classifier last): distillation from
    ``teacher_logits`` and/or cross-entropy on ``labels``, mixed by ``alpha_distill``."""
    alpha = config.alpha_distill if teacher_logits is not None else 0.0
    T = config.temperature
    target = F.softmax(teacher_logits.float() / T, -1) if teacher_logits is not None else None
    out = []
    for z in logits:
        loss = (1.0 - alpha) * F.cross_entropy(z.float(), labels) if alpha < 1.0 else z.new_zeros(())
        if alpha > 0.0:
            kd = F.kl_div(F.log_softmax(z.float() / T, -1), target, reduction="batchmean")
            loss = loss + alpha * kd * T * T
        out.append(loss)
    return torch.stack(out)


def _train_joint(model: nn.Module, ee: EarlyExit, config: EarlyExitConfig, ctx: MethodContext) -> int:
    """Backbone, classifier and exit heads trained together (weighted sum of the exits' losses)."""
    if has_quantized_layers(model):
        raise MethodError("early_exit: joint training cannot train int8 layers; put quantization after it")
    adapter = ctx.adapter
    depth = len(adapter.layers(model))
    weights = torch.arange(1, depth + 1, dtype=torch.float32)
    weights = weights / weights.sum()
    seed_offset = 2
    teacher = None
    if ctx.teacher is not None and config.alpha_distill > 0:
        ctx.teacher.eval()
        teacher = TeacherOutputs(ctx.teacher, ctx.teacher_outputs, ctx.seed + seed_offset, hidden=False, attn=False)
    calls = [0]

    def loss_fn(m: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        t_logits = teacher(calls[0], inputs)["logits"] if teacher is not None else None
        calls[0] += 1
        outs, final = all_layer_outputs(m, adapter, inputs)
        logits = [head(h) for head, h in zip(ee.heads, outs)] + [final]
        return (weights * exit_losses(logits, batch["labels"], t_logits, config)).sum()

    seed_everything(ctx.seed)
    stats = train_loop(model, ctx.batches(config.steps, seed_offset=seed_offset), loss_fn, steps=config.steps,
                       lr=config.learning_rate(), progress=ctx.progress, what="early_exit",
                       **ctx.training_callbacks(model))
    model.eval()
    return int(stats["steps"])


def apply(model: nn.Module, config: EarlyExitConfig, ctx: MethodContext) -> nn.Module:
    if ctx.is_regression or getattr(model.config, "num_labels", 2) < 2:
        raise MethodError("early_exit supports classification only: prediction entropy/agreement is "
                          "not defined for a regression score")
    if hasattr(model, ATTR):
        raise MethodError("early_exit: the model already has exit heads")
    if getattr(model.config, "is_decoder", False):
        raise MethodError("early_exit: decoder (causal) models are not supported")
    if config.training == "elastic" and len(ctx.adapter.layers(model)) < 2:
        return model  # a one-layer sub-network has no layer to exit after: exactly the model (a search may pick it)
    ee = _build(model, config, ctx)
    model.add_module(ATTR, ee)
    trained = config.training == "elastic" and not ctx.replay and ctx.exit_heads is not None  # the student's
    ee.enabled = not ctx.probe or trained  # untrained heads in a probe would exit arbitrarily
    model.forward = MethodType(_early_exit_forward, model)  # before training: an early stopper sees the exits
    attach_exit_stats(model, ee.stats, ee.reset_stats)  # capabilities.ExitStats: what measure.metrics reads
    mark_real_inputs(model)  # capabilities.RealInputs: what measure.latency.needs_real_inputs reads
    if not (ctx.probe or ctx.replay) and config.steps > 0:
        train = _train_joint if config.training == "joint" else _train_heads
        ctx.decisions["steps_done"] = train(model, ee, config, ctx)
        ee.reset_stats()  # calls made while training (an early stopper's) are not the model's
    model.eval()
    return model


SPEC = register(
    "early_exit",
    EarlyExitConfig,
    apply,
    stage=Stage.EXIT,
    trains=False,  # builds structure (heads + forward) even in probe/replay; trains only otherwise
    family="dynamic inference",
    summary="exit heads after each layer; a batch stops at the first confident layer (entropy or patience)",
    data_free_when=lambda config: config.training == "elastic",  # the student's heads: the probe is the model
    runtime_limits=lambda config: {"onnxruntime": "early exit decides its depth per batch: an ONNX graph would "
                                                  "freeze one path"},
)
