"""What every ONNX module shares: the optional dependency (:func:`require`, the install command),
the two ways an export fails (:class:`OnnxUnavailable`, :class:`OnnxUnsupported`), and the
checks of an exported graph against PyTorch (:func:`example_inputs`, :func:`check_export`, with
C++ output silenced by :func:`quiet_fds`), below the exporter (:mod:`.onnx_export`), the int8
quantizer (:mod:`.onnx_int8`) and the fusions (:mod:`.fusion`), so that none of them imports
another's module for them."""
from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import UserError

__all__ = ["INSTALL", "OnnxUnavailable", "OnnxUnsupported", "check_export", "example_inputs", "one_line", "quiet_fds",
           "require"]
INSTALL = "pip install 'autosqueeze[onnx]'"


class OnnxUnavailable(UserError, RuntimeError):
    """onnx / onnxruntime are not installed (an optional dependency)."""


class OnnxUnsupported(RuntimeError):
    """This model cannot be exported to ONNX (the reason says why, in one line)."""

    def __init__(self, reason: str) -> None:
        super().__init__(one_line(reason, limit=600))


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def one_line(text: Any, limit: int = 300) -> str:
    """The first non-empty line of ``text`` without terminal colour codes, at most ``limit`` characters."""
    lines = [ln.strip() for ln in _ANSI.sub("", str(text)).splitlines() if ln.strip()]
    line = " ".join(lines[0].split()) if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def require(module: str = "onnxruntime") -> Any:
    """Import an optional ONNX module, or fail with the install command."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise OnnxUnavailable(f"{module} is not installed: {INSTALL}") from None


@contextlib.contextmanager
def quiet_fds() -> Iterator[None]:
    """Silence what C++ code writes to file descriptors 1 and 2 (graph dumps, kernel warnings)."""
    saved: list[tuple[int, int]] = []
    sink = tempfile.TemporaryFile()
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        for fd in (1, 2):
            copy = os.dup(fd)
            saved.append((fd, copy))
            os.dup2(sink.fileno(), fd)
    except (OSError, ValueError, io.UnsupportedOperation):  # no real descriptors (embedded interpreters)
        pass
    try:
        yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        sink.close()


def example_inputs(model: nn.Module, names: tuple[str, ...], batch: int, seq: int, seed: int = 0,
                   padded: bool = False) -> tuple[torch.Tensor, ...]:
    """Random token ids of a shape (one row padded when ``padded``), in ``names`` order."""
    g = torch.Generator().manual_seed(seed)
    vocab = int(getattr(model.config, "vocab_size", 1000))
    ids = torch.randint(min(5, vocab - 1), vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if padded:
        mask[0, seq // 2:] = 0
    values = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros(batch, seq, dtype=torch.long)}
    if padded and seq > 2:
        values["token_type_ids"][:, seq // 2:] = 1
    return tuple(values[n] for n in names)


def check_export(path: Path, model: nn.Module, names: tuple[str, ...]) -> float:
    """Max |ONNX Runtime − PyTorch| on a padded batch of another shape than the traced one."""
    ort = require("onnxruntime")
    so = ort.SessionOptions()
    so.log_severity_level = 3  # kernel-fallback warnings are not ours to print
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    args = example_inputs(model, names, batch=3, seq=11, seed=1, padded=True)
    with torch.inference_mode():
        ref = model(**dict(zip(names, args))).logits.float().numpy()
    out = sess.run(["logits"], {n: a.numpy() for n, a in zip(names, args)})[0]
    if out.shape != ref.shape:
        raise OnnxUnsupported(f"ONNX output shape {out.shape} differs from PyTorch's {ref.shape}")
    return float(np.abs(out.astype(np.float32) - ref).max())
