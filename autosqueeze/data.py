"""Task data as model batches: tokenization, seeded shuffling, fixed-size training batches."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from .tasks import Example, TaskSpec, load_split, subset

Batch = dict[str, torch.Tensor]  # tokenizer output (+ "labels"): what a model is called with


class SplitSettings(Protocol):
    """What :func:`load_task_data` reads of the training settings (``train.TrainSettings`` has it)."""

    @property
    def train_subset(self) -> int | None: ...
    @property
    def seed(self) -> int: ...
    @property
    def max_seq_len(self) -> int: ...
    @property
    def batch_size(self) -> int: ...


@dataclass
class TaskData:
    """Examples of one task plus the tokenizer that turns them into batches."""

    task: TaskSpec
    tokenizer: Any  # a transformers tokenizer (any callable with its signature)
    train: list[Example]
    dev: list[Example]
    max_seq_len: int = 64
    batch_size: int = 32

    def encode(self, examples: Sequence[Example]) -> Batch:
        columns = list(zip(*(e.texts for e in examples)))
        enc = self.tokenizer(
            *[list(c) for c in columns], padding="longest", truncation=True,
            max_length=self.max_seq_len, return_tensors="pt",
        )
        batch = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        dtype = torch.float32 if self.task.is_regression else torch.long
        batch["labels"] = torch.tensor([e.label for e in examples], dtype=dtype)
        return batch

    def train_batches(self, n_batches: int, seed: int) -> Iterator[Batch]:
        """``n_batches`` training batches in a seeded order (epochs reshuffle)."""
        if not self.train:
            raise ValueError("no training examples")
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(self.train))
        pos = 0
        for _ in range(n_batches):
            if pos + self.batch_size > len(order):
                order, pos = rng.permutation(len(self.train)), 0
            idx = order[pos: pos + self.batch_size]
            pos += self.batch_size
            yield self.encode([self.train[i] for i in idx])

    def train_token_ids(self, batch_size: int = 512) -> Iterator[torch.Tensor]:
        """The input ids of every training example once, in order (e.g. for vocabulary pruning)."""
        for i in range(0, len(self.train), batch_size):
            yield self.encode(self.train[i: i + batch_size])["input_ids"]

    def eval_batches(self, examples: Sequence[Example] | None = None, batch_size: int = 64) -> Iterator[Batch]:
        examples = self.dev if examples is None else examples
        for i in range(0, len(examples), batch_size):
            yield self.encode(examples[i: i + batch_size])


def load_task_data(task: TaskSpec, tokenizer: Any, data_dir: str | None, settings: SplitSettings,
                   dev_subset: int | None = None, with_train: bool = True) -> tuple[TaskData, dict[str, list]]:
    """Train (subset) and dev examples as TaskData, plus extra dev splits (MNLI mismatched)."""
    train = subset(load_split(task, "train", data_dir), settings.train_subset, settings.seed) if with_train else []
    dev = subset(load_split(task, task.dev_splits[0], data_dir), dev_subset, 0)
    extra = {s.replace("dev_", ""): subset(load_split(task, s, data_dir), dev_subset, 0) for s in task.dev_splits[1:]}
    return TaskData(task, tokenizer, train, dev, settings.max_seq_len, settings.batch_size), extra
