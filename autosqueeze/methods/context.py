"""What a method may use besides the model and its config."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..arch import ArchAdapter

Batch = dict[str, torch.Tensor]  # tokenizer output (+ "labels")


@dataclass
class MethodContext:
    """Shared inputs for applying one recipe.

    ``decisions`` is per step: a method that makes a data-dependent choice (which heads to
    keep, which layers) writes it to ``ctx.decisions`` (the dict for the current step), and
    reads it back when ``replay`` is true, so a saved model can be rebuilt without data.
    ``probe`` asks for the structure only (latency probe): training methods are skipped and
    data-dependent choices may use fewer batches.
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
    cache: dict[str, Any] = field(default_factory=dict)  # e.g. teacher outputs, shared across steps
    device: str = "cpu"
    post_step_hooks: list[Callable[[nn.Module], None]] = field(default_factory=list)  # run after each optimiser step
    # vocabulary methods (prune_vocab): every training example's input ids once, as the model sees them
    # (without it they scan ``batches``), and the tokenizer whose special token ids they keep
    train_token_ids: Callable[[], Iterator[torch.Tensor]] | None = None
    tokenizer: Any = None

    def batches(self, n: int, seed_offset: int = 0) -> Iterator[Batch]:
        if self.train_batches is None:
            raise RuntimeError("this method needs training data, but none was given to the recipe")
        return self.train_batches(n, self.seed + seed_offset)

    def report(self, what: str, done: int, total: int, **stats: float) -> None:
        if self.progress is not None:
            self.progress(what, done, total, stats)
