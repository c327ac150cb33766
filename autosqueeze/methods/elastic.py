"""Elastic slicing: take a sub-network of the trained elastic student (no training in the trial).

The elastic student (``autosqueeze.elastic``) is the teacher with every layer's heads and
FFN neurons sorted by importance and then distilled with the sandwich rule, so each "first
k heads / neurons of evenly spread layers" sub-network is already trained. This step loads
that student's weights (by its cache key, ``student``) into the model and cuts the
sub-network out for real with the code structured pruning uses: ``layers`` encoder layers
(a count, or a fraction of the depth; spread evenly as ``drop_layers`` ``even``), and per
kept layer ``heads_keep`` heads and ``ffn_keep`` FFN neurons (a count, a fraction, or a
per-kept-layer list), and ``hidden_keep`` hidden dimensions (d_model: a count or a fraction of
the model's own width, one value for the whole network; the student's hidden dimensions are in
importance order too, so these are its most important ones). It must be the recipe's first
step (it replaces the weights).

A narrower hidden width is cut everywhere the residual stream is (embedding columns, every
LayerNorm, the input columns of Q, K, V and FFN up, the output rows of the attention output and
FFN down, the input columns of the pooler -- its output keeps the full width, so the classifier
is unchanged -- or of the classifier head's first projection) and ``config.hidden_size``
follows; the attention's inner width (heads x head size) is independent of it. BERT, RoBERTa,
ELECTRA (embeddings not projected), DistilBERT, MPNet and DeBERTa-v2/v3 (shared relative
embeddings); other families and layouts refuse ``hidden_keep`` below the full width in one line.

Exits: a student trained with exit heads (study file ``elastic: {exits: true}``) has one per
layer; this step slices the sub-network's (the head of each kept layer but the last, its input
cut to ``hidden_keep``) and hands them to a following ``early_exit`` step with
``training: elastic`` (``ctx.exit_heads``), which installs them with its ``rule`` /
``threshold`` / ``patience``: exits at no training per trial. Without that step the heads are
not used and the model is exactly as without them.

Replay (loading a saved model) redoes the structure from the recorded decisions without the
student (the exit heads' weights are in the saved folder). A search fills ``student`` in; a
recipe without it cannot be applied.

The student is the step's study hook (``STUDY``, in its registry entry): a study settles the
study file's ``elastic:`` settings against its space (``exits`` on where an ``early_exit`` step
takes the student's heads), trains or finds the student once before its first trial and fills
its key into every trial's ``elastic`` step; ``apply`` rebuilds a student this machine lacks
from what the recipe recorded of it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from ..arch import ArchAdapter, get_adapter
from ..elastic.subnet import (
    LAYER_SETS,
    Subnet,
    per_layer,
    pick_layers,
    resolve_count,
    slice_exit_heads,
    slice_subnet,
)
from ..errors import ConfigError
from .context import MethodContext
from .hooks import PlannedStep, Prepared, StudyHook, StudyInputs
from .registry import MethodError, Stage, register

if TYPE_CHECKING:  # elastic/ imports this package while it loads: the settings type is for the checker only
    from ..elastic.train import ElasticSettings


def _check_width(name: str, value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{name} must not be an empty list")
        return tuple(_check_width(name, v) for v in value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be an int count, a float fraction in (0, 1] or a per-layer list, got {value!r}")
    if isinstance(value, int) and value < 1 or isinstance(value, float) and not 0 < value <= 1:
        raise ValueError(f"{name} must be a count >= 1 or a fraction in (0, 1], got {value!r}")
    return value


@dataclass(frozen=True)
class ElasticConfig:
    student: str = ""  # the elastic student's cache key (filled in by the search)
    layers: Any = 1.0  # int count | float fraction of the depth
    heads_keep: Any = 1.0  # int | float | per-kept-layer list
    ffn_keep: Any = 1.0  # int | float | per-kept-layer list
    layer_set: str = "even"  # which layers a shallow sub-network keeps: even (spread) | first (the bottom ones)
    hidden_keep: Any = 1.0  # int count | float fraction of the hidden width (d_model), for the whole network

    def __post_init__(self) -> None:
        if self.layer_set not in LAYER_SETS:
            raise ValueError(f"layer_set must be one of {list(LAYER_SETS)}, got {self.layer_set!r}")
        if not isinstance(self.student, str):
            raise ValueError(f"student must be an elastic student key (a string), got {self.student!r}")
        if isinstance(self.layers, (list, tuple)):
            raise ValueError("layers is one count or fraction, not a list")
        object.__setattr__(self, "layers", _check_width("layers", self.layers))
        object.__setattr__(self, "heads_keep", _check_width("heads_keep", self.heads_keep))
        object.__setattr__(self, "ffn_keep", _check_width("ffn_keep", self.ffn_keep))
        if isinstance(self.hidden_keep, (list, tuple)):
            raise ValueError("hidden_keep is one count or fraction for the whole network, not a list")
        object.__setattr__(self, "hidden_keep", _check_width("hidden_keep", self.hidden_keep))


def choose_subnet(model: nn.Module, config: ElasticConfig, ctx: MethodContext) -> Subnet:
    """The sub-network a config names on this (full-depth) model."""
    adapter = ctx.adapter
    layers = list(adapter.layers(model))
    try:
        kept = pick_layers(len(layers), resolve_count("layers", config.layers, len(layers)), config.layer_set)
        heads = per_layer("heads_keep", config.heads_keep, [adapter.num_heads(layers[i]) for i in kept])
        neurons = per_layer("ffn_keep", config.ffn_keep, [adapter.ffn(layers[i])[1].in_features for i in kept])
        width = adapter.hidden_size(model)
        hidden = resolve_count("hidden_keep", config.hidden_keep, width)
    except ValueError as err:
        raise MethodError(f"elastic: {err}") from None
    if hidden < width:
        why = adapter.hidden_refusal(model)
        if why is not None:
            raise MethodError(f"elastic: hidden_keep={config.hidden_keep}: {why}")
    return Subnet(tuple(kept), heads, neurons, hidden if hidden < width else None)


def check_shapes(model: nn.Module, config: ElasticConfig) -> str | None:
    """Whether ``config`` names a sub-network of ``model`` (counts within the model's depth, heads,
    FFN and hidden width; a family that can slice its hidden width), from the shapes alone:
    search-space validation runs this on the real model instead of slicing a stand-in whose hidden
    width differs. Returns why not, or None."""
    try:
        choose_subnet(model, config, MethodContext(adapter=get_adapter(model)))
    except MethodError as err:
        return f"cannot be applied to this model: {err}"
    return None


def _order_heads(model: nn.Module, adapter: ArchAdapter, orders: dict[int, list[int]]) -> None:
    """Put layer ``i``'s heads in ``orders[i]`` (all kept). Where one position bias serves every layer
    (MPNet) each layer then reads its own heads' columns of it: a reordered student's structure beyond its
    weights (the head index is not in a state dict), replayed before its weights are loaded."""
    layers = list(adapter.layers(model))
    for i, order in orders.items():
        if sorted(order) != list(range(adapter.num_heads(layers[i]))):
            raise MethodError(f"elastic: the recorded head order of layer {i} ({order}) is not a permutation of its "
                              f"{adapter.num_heads(layers[i])} heads")
        adapter.keep_heads(layers[i], list(order))


def _student_head_orders(key: str, adapter: ArchAdapter) -> list[list[int]] | None:
    """The student's head order per layer where the architecture needs it to run (None elsewhere)."""
    from ..elastic.store import student_head_orders

    if not adapter.shared_head_bias:
        return None
    orders = student_head_orders(key)
    if orders is None:
        raise MethodError(f"elastic: student {key} records no head order, which this architecture's shared "
                          f"position bias needs: delete that cache folder and run the search again to retrain it")
    return orders


def _load_student(model: nn.Module, key: str, adapter: ArchAdapter) -> list[list[int]] | None:
    """Load the student's weights into ``model`` (the teacher's architecture); returns its head
    orders where the architecture needs them (see :func:`_order_heads`)."""
    from ..elastic.store import ElasticStudentMissing, student_state

    if not key:
        raise MethodError("elastic: 'student' is empty; a search with an elastic space fills it in")
    try:
        state = student_state(key)
        orders = _student_head_orders(key, adapter)
    except (ElasticStudentMissing, ValueError) as err:
        raise MethodError(str(err)) from None
    if orders is not None:
        _order_heads(model, adapter, dict(enumerate(orders)))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MethodError(f"elastic: student {key} does not fit this model (is it the teacher's "
                          f"architecture, and is elastic the recipe's first step?): {first}") from None
    return orders


def _exit_heads(key: str, subnet: Subnet) -> list[dict[str, Any]] | None:
    """The student's exit heads for ``subnet`` (None: it was trained without them)."""
    from ..elastic.store import student_exit_state

    state = student_exit_state(key)
    if state is None:
        return None
    try:
        return slice_exit_heads(state, subnet)
    except ValueError as err:
        raise MethodError(f"elastic: student {key}: {err}") from None


def _hidden_order(key: str) -> list[int] | None:
    from ..elastic.store import student_hidden_order

    return student_hidden_order(key)


def apply(model: nn.Module, config: ElasticConfig, ctx: MethodContext) -> nn.Module:
    order = None  # the teacher hidden dimension of each of the student's (None: the teacher's own order)
    head_orders = None  # the student's head order per layer, where the architecture needs it (shared bias)
    if ctx.replay:
        d = ctx.decisions
        try:
            subnet = Subnet(tuple(d["kept_layers"]), tuple(d["heads"]), tuple(d["neurons"]), d.get("hidden"))
        except (KeyError, TypeError, ValueError) as err:
            raise MethodError(f"elastic replay: the recorded decisions are incomplete: {err}") from None
        if ctx.adapter.shared_head_bias:
            if not isinstance(d.get("head_order"), list) or len(d["head_order"]) != len(subnet.layers):
                raise MethodError("elastic replay: the recorded decisions have no head order, which this "
                                  "architecture's shared position bias needs (recorded by an older version, whose "
                                  "sliced models read the wrong bias columns): apply the recipe again")
            _order_heads(model, ctx.adapter, dict(zip(subnet.layers, d["head_order"])))
    else:
        if config.student or not ctx.probe:  # a structure-only probe (space validation) needs no weights
            head_orders = _load_student(model, config.student, ctx.adapter)
        subnet = choose_subnet(model, config, ctx)
        order = _hidden_order(config.student) if config.student else None
        if subnet.hidden is not None and config.student and order is None:
            raise MethodError(f"elastic: hidden_keep={config.hidden_keep}: student {config.student} was trained at "
                              f"the full hidden width only (its hidden dimensions are in no importance order): "
                              f"train it with elastic.min_hidden below 1.0, or keep hidden_keep at 1.0")
    try:
        slice_subnet(model, ctx.adapter, subnet)
    except ValueError as err:
        raise MethodError(f"elastic: {err}") from None
    ctx.decisions.update({"kept_layers": list(subnet.layers), "heads": list(subnet.heads),
                          "neurons": list(subnet.neurons)})
    if subnet.hidden is not None:  # recorded only when narrower (older recipes have no key: the full width)
        ctx.decisions["hidden"] = subnet.hidden
    if head_orders is not None:  # replayed before slicing (the kept layers' orders; needed where a bias is shared)
        ctx.decisions["head_order"] = [head_orders[i] for i in subnet.layers]
    ctx.kept_layers = list(subnet.layers)  # teacher layer of each student layer, for distillation
    if order is not None:  # teacher hidden dimension of each kept one, for distillation
        ctx.kept_hidden = order[: subnet.hidden or len(order)]
    if not ctx.replay and config.student:  # for early_exit training: elastic (None: a student without exits)
        ctx.exit_heads = _exit_heads(config.student, subnet)
    return model


# --- the study hook: the elastic student ---------------------------------------------------
def settle(steps: Sequence[PlannedStep], settings: ElasticSettings, space: str, study: str) -> ElasticSettings:
    """The study's elastic settings with the student's exits settled by the space. A space whose
    ``early_exit`` step takes the elastic student's heads (``training: elastic``) needs an ``elastic``
    step and a student trained with them: ``exits`` left out of the study file turns them on, ``false``
    is refused in one line before any work, not trial by trial. Without such a step the settings are
    returned as they are (``exits`` left out: a student without exits)."""
    using = [s for s in steps if s.method == "early_exit" and "elastic" in s.may_take("training")]
    if not using:
        return settings
    what = f"{space}: step {using[0].id!r} (early_exit training: elastic) installs the elastic student's exit heads"
    if not any(s.method == SPEC.name for s in steps):
        raise ConfigError(f"{what}: the space needs an elastic step before it")
    if settings.exits is False:
        raise ConfigError(f"{what}: train the student with them (elastic: {{exits: true}} in {study}, or "
                          f"leave exits out: it follows the space)")
    if settings.exits is None:
        return dataclasses.replace(settings, exits=True)
    return settings


def prepare(inputs: StudyInputs, settings: ElasticSettings) -> Prepared:
    """The study's elastic student (cached; trained once on first use): its key for the trials' steps,
    and its record (key, settings, training seconds) for the study's provenance."""
    from ..elastic import get_elastic_student

    student = get_elastic_student(inputs.teacher, inputs.teacher_hash, inputs.data, settings, inputs.train_subset,
                                  inputs.progress)
    return Prepared(params={"student": student.key},
                    record={"key": student.key, "settings": settings.to_dict(), "train_s": student.info.get("train_s")})


def ensure(params: Sequence[Mapping[str, Any]], record: Mapping[str, Any] | None, inputs: StudyInputs) -> None:
    """The students a recipe's ``elastic`` steps slice, in this machine's cache: rebuilt from the recipe's
    ``record`` of its study's student when missing."""
    from ..elastic.store import ensure_students

    keys = {p.get("student") for p in params}
    if keys:
        ensure_students(keys, record, inputs.teacher, inputs.teacher_hash, inputs.data, inputs.train_subset,
                        inputs.progress)


def model_refusal(adapter: ArchAdapter, model: nn.Module) -> str | None:
    """A model of a family the student supports whose layers cannot be prefix-sliced while it trains."""
    if adapter.separate_position_projections(model):
        return ("its separate relative-position projections (share_att_key: false) are not prefix-sliced while "
                "the elastic student trains")
    return None


STUDY = StudyHook(prepare=prepare, ensure=ensure, settle=settle)

SPEC = register(
    "elastic",
    ElasticConfig,
    apply,
    stage=Stage.DEPTH,
    data_free=True,
    family="structured pruning",
    summary="slice a trained sub-network (depth, heads, FFN, hidden width) out of the elastic student: no training "
            "per trial",
    check_shapes=check_shapes,
    model_refusal=model_refusal,
    study=STUDY,
)
