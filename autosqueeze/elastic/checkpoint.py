"""Resumable elastic training: the state of a sandwich run, saved every few minutes and read back.

A student for a base-size model trains for hours on a CPU; a run that is killed (a session's end, a
reboot) continues from its last checkpoint instead of starting again. A resumed run gives the same
student as one that was never stopped: the checkpoint holds the student's weights (exit heads
included), AdamW's moments, the schedule, the sub-network sampler's and torch's random states and
the step, and the training batches are re-drawn from their seeded order from that step on.

Weights are safetensors; the optimiser's state and the random states are plain tensors and numbers
read back with ``torch.load(weights_only=True)``. The folder is written through a temporary one and
a rename, so a kill while saving leaves the previous checkpoint as it was.
"""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_dir

log = logging.getLogger(__name__)

STATE = "state.json"
WEIGHTS = "student.safetensors"
OPTIM = "optimizer.pt"
FORMAT = 1


@dataclass
class Checkpointing:
    """Where a run keeps its checkpoint and how often it writes one (``every_s`` seconds of training;
    0: after every step). ``ident`` is what the run must match to resume (its settings and data)."""

    folder: Path
    ident: dict[str, Any]
    every_s: float = 600.0
    _last: float = field(default_factory=time.monotonic, repr=False)

    def due(self, step: int, total: int) -> bool:
        """Whether to save after ``step`` steps (never after the last: the student is saved then)."""
        return step < total and time.monotonic() - self._last >= self.every_s

    def save(self, step: int, student: nn.Module, opt: torch.optim.Optimizer, sched: Any, rng: random.Random,
             extra: dict[str, Any]) -> None:
        from safetensors.torch import save_model

        t0 = time.perf_counter()
        with atomic_dir(self.folder) as tmp:
            save_model(student, str(tmp / WEIGHTS), metadata={"format": "pt"})
            torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "torch_rng": torch.get_rng_state(), "python_rng": rng.getstate()}, tmp / OPTIM)
            (tmp / STATE).write_text(json.dumps({"format": FORMAT, "step": step, "ident": self.ident, **extra},
                                                indent=2, sort_keys=True))
        self._last = time.monotonic()
        log.info("elastic: checkpoint at step %d in %s (%.1f s)", step, self.folder, time.perf_counter() - t0)

    def load(self, student: nn.Module, opt: torch.optim.Optimizer, sched: Any,
             rng: random.Random) -> dict[str, Any] | None:
        """Restore a matching checkpoint into the run's objects and return its state (``step`` ...), or
        None when there is none, or it belongs to other settings (it is then left alone: overwritten
        by this run's first checkpoint)."""
        from safetensors.torch import load_model

        state_file = self.folder / STATE
        if not state_file.is_file():
            return None
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError) as err:
            log.warning("elastic: ignoring unreadable checkpoint %s (%s)", self.folder, err)
            return None
        if state.get("format") != FORMAT or state.get("ident") != json.loads(json.dumps(self.ident)):
            log.warning("elastic: ignoring checkpoint %s: it was written by a run with other settings", self.folder)
            return None
        load_model(student, str(self.folder / WEIGHTS))
        saved = torch.load(self.folder / OPTIM, weights_only=True)
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        rng.setstate(_as_state(saved["python_rng"]))
        self._last = time.monotonic()
        log.info("elastic: resuming from the checkpoint at step %d (%s)", state["step"], self.folder)
        return state


def _as_state(value: Any) -> Any:
    """``random.Random.getstate()``'s nested tuples (a round trip may hand back lists)."""
    return tuple(_as_state(v) for v in value) if isinstance(value, (list, tuple)) else value
