"""What a method may use besides the model and its config."""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..arch import ArchAdapter
from ..data import Batch

StopCheck = Callable[[nn.Module, int], bool]  # (the whole model being trained, steps done) -> stop now?


@dataclass
class TeacherOutputCache:
    """Teacher forwards kept by (teacher, batch seed, batch index), filled by
    :class:`autosqueeze.methods.distill.TeacherOutputs`: shared by the training steps of a recipe
    and, in a search, by the trials of one process (the same object in every trial's context).
    ``nbytes`` is the total size of the tensors held (distill keeps it under its budget)."""

    entries: dict[tuple[int, int, int], dict[str, Any]] = field(default_factory=dict)
    nbytes: int = 0


@dataclass
class MethodContext:
    """Shared inputs for applying one recipe.

    ``decisions`` is per step: a method that makes a data-dependent choice (which heads to
    keep, which layers) writes it to ``ctx.decisions`` (the dict for the current step), and
    reads it back when ``replay`` is true, so a saved model can be rebuilt without data.
    ``probe`` asks for the structure only (latency probe): training methods are skipped and
    data-dependent choices may use fewer batches.

    What travels between the steps of one recipe is typed here: ``kept_layers`` (which
    teacher layer each current layer came from, set by the methods that drop layers and read
    by distillation), ``kept_hidden`` (which teacher hidden dimension each current one is),
``exit_heads`` (the elastic student's exit heads for the sliced sub-network, for early_exit),
    ``teacher_outputs`` (cached teacher forwards) and ``should_stop`` (the
    trial's early stopper). A training method passes :meth:`training_callbacks` to
    ``train_loop``, so the post-step hooks and the stopper see every training run alike.
    """

    adapter: ArchAdapter
    seed: int = 0
    teacher: nn.Module | None = None
    train_batches: Callable[[int, int], Iterator[Batch]] | None = None  # (n_batches, seed) -> batches
    num_labels: int = 2
    is_regression: bool = False
    decisions: dict[str, Any] = field(default_factory=dict)
    replay: bool = False
    probe: bool = False
    progress: Callable[[str, int, int, dict[str, float]], None] | None = None  # (what, done, total, stats)
    device: str = "cpu"
    post_step_hooks: list[Callable[[nn.Module], None]] = field(default_factory=list)  # run after each optimiser step
    # polled after each optimiser step (after the hooks) with the whole model and the steps done of
    # this training run; True ends the run, and it may raise to end the trial (search/early_stop.py)
    should_stop: StopCheck | None = None
    kept_layers: list[int] | None = None  # teacher layer index of each current layer (None: not changed)
    # teacher hidden dimension of each current hidden dimension, set by the methods that reorder or cut
    # the hidden width (elastic) and read by hidden-state distillation (None: the teacher's own order)
    kept_hidden: list[int] | None = None
    # the elastic student's trained exit heads (state dicts, one per current layer but the last), sliced
    # with the sub-network by the elastic step and installed by early_exit's ``training: elastic``
    exit_heads: list[dict[str, torch.Tensor]] | None = None
    teacher_outputs: TeacherOutputCache = field(default_factory=TeacherOutputCache)
    # vocabulary methods (prune_vocab): every training example's input ids once, as the model sees them
    # (without it they scan ``batches``), and the tokenizer whose special token ids they keep
    train_token_ids: Callable[[], Iterator[torch.Tensor]] | None = None
    tokenizer: Any = None

    def batches(self, n: int, seed_offset: int = 0) -> Iterator[Batch]:
        if self.train_batches is None:
            raise RuntimeError("this method needs training data, but none was given to the recipe")
        return self.train_batches(n, self.seed + seed_offset)

    def training_callbacks(self, model: nn.Module) -> dict[str, Any]:
        """``train_loop``'s ``post_step`` and ``should_stop`` while ``model`` trains. Pass the whole
        model even when only part of it gets gradients (early exit's heads): hooks and stopper see it."""
        return {"post_step": [functools.partial(_call_on, hook, model) for hook in self.post_step_hooks],
                "should_stop": None if self.should_stop is None else functools.partial(self.should_stop, model)}

    def report(self, what: str, done: int, total: int, **stats: float) -> None:
        if self.progress is not None:
            self.progress(what, done, total, stats)


def _call_on(hook: Callable[[nn.Module], None], model: nn.Module, _trained: nn.Module) -> None:
    hook(model)
