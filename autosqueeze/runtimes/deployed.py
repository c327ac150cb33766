"""One built model as ONNX Runtime deploys it: :class:`~autosqueeze.runtimes.deployment.OrtDeployment`
(kept under this name for the code that imports it from here)."""
from __future__ import annotations

from .deployment import OrtDeployment

__all__ = ["OrtDeployment"]
