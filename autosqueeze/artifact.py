"""The saved model folder: write it, read its manifest, load the model back.

A saved folder holds ``config.json`` (the compressed model's config), the tokenizer,
``model.safetensors`` (the deployed model's weights as stored: the int8 / int4 / bf16
tensors of the quantized layers with their scales, everything else in float; see
:mod:`autosqueeze.quant_state`), ``model.onnx`` when the model could be exported (always
when the recipe's runtime, ``recipe.profile["runtime"]``, is ``onnxruntime``: that graph,
int8 when the recipe quantizes to int8, is what it deploys, and what ``autosqueeze bench``
times), and ``autosqueeze.json`` (the manifest: its ``format``, the recipe, each step's
recorded decisions, the teacher's config, the quantized modules stored, the measured values,
the weights' SHA-256, ``storage`` — each file's bytes on disk beside the size measured, and
which file deploys — and whether a plain ``from_pretrained`` gives the same model).
:func:`load_compressed` rebuilds the float structure from the teacher's config by replaying
the decisions (:func:`autosqueeze.builder.replay`: no data, no training) and puts the stored
quantized layers in it: nothing is quantized again.

Format 1 (folders saved before format 2; no ``format`` key) held the float model before the
quantization steps, which were redone at load; such folders still load.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_dir
from .builder import Built, quantize_start, replay, replay_context
from .errors import UserError
from .hashing import file_sha256
from .measure.latency import needs_real_inputs
from .models import quiet_transformers
from .recipe import Recipe, RecipeError

log = logging.getLogger(__name__)
MANIFEST = "autosqueeze.json"
WEIGHTS = "model.safetensors"
ONNX = "model.onnx"
FORMAT = 2  # the manifest's "format": 2 stores the quantized tensors; 1 (no key) the float model


class CorruptModelError(UserError, RuntimeError):
    """A saved model folder is incomplete or does not match its manifest."""


def check_plain_loading(folder: Path, built: Built, recipe: Recipe) -> dict[str, Any]:
    """Whether ``AutoModelForSequenceClassification.from_pretrained(folder)`` gives the deployed
    model: only when no step changed the model beyond what its config describes (e.g. only
    whole layers dropped, no quantization), checked by loading it and comparing logits."""
    if quantize_start(recipe) < len(recipe.steps):
        return {"ok": False, "reason": "the recipe quantizes: from_pretrained cannot build its quantized layers; "
                                       "load with autosqueeze.load"}
    if needs_real_inputs(built.model):
        return {"ok": False, "reason": "early exit replaces forward(); from_pretrained would run the full depth"}
    from transformers import AutoModelForSequenceClassification

    try:
        with quiet_transformers():
            plain = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        cfg: Any = built.model.config
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(min(5, cfg.vocab_size - 1), cfg.vocab_size, (2, 12), generator=g)
        mask = torch.ones_like(ids)
        mask[0, 6:] = 0
        with torch.inference_mode():
            ref = built.model.eval()(input_ids=ids, attention_mask=mask).logits
            diff = float((plain(input_ids=ids, attention_mask=mask).logits - ref).abs().max())
    except Exception as err:  # size mismatches, custom modules: the reason is what matters
        line = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        return {"ok": False, "reason": f"from_pretrained fails: {type(err).__name__}: {line}"}
    if diff > 1e-6 + 1e-5 * float(ref.abs().max()):  # the same model gives the same logits
        return {"ok": False, "reason": f"from_pretrained loads but predicts differently (max |logit diff| "
                                       f"{diff:.3g}): a step changed the model beyond what config.json describes"}
    return {"ok": True, "max_abs_diff": diff}


def _packed(built: Built, recipe: Recipe) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]],
                                                    dict[str, Any]] | None:
    """The deployed model's tensors as stored (:func:`autosqueeze.quant_state.pack`), or None when
    the float model is saved instead: the recipe does not quantize, or a quantized layer is of a
    kind the format cannot store (its quantization is then redone at load, as in format 1)."""
    from .quant_state import Unpackable, pack

    if quantize_start(recipe) >= len(recipe.steps):
        return None
    try:
        return pack(built.model)
    except Unpackable as err:
        log.warning("the folder stores the float model and redoes the quantization at load: %s", err)
        return None


def deployed_file(folder: Path, recipe: Recipe) -> str:
    """The file of a saved folder that deploys: ``model.onnx`` for a recipe whose runtime is ONNX
    Runtime (when the folder has it), else ``model.safetensors`` (loaded by ``autosqueeze.load``)."""
    from .runtimes.deployment import get_runtime, saved_runtime

    return get_runtime(saved_runtime(folder, (recipe.profile or {}).get("runtime"))).graph_file or WEIGHTS


def storage(folder: Path, model: nn.Module, recipe: Recipe) -> dict[str, Any]:
    """What the folder's weights take on disk beside the size measured (``model_size``): each weight
    file's bytes, which one deploys, and the deployed file's bytes over the measured size."""
    from .measure.size import model_size

    files = {name: (folder / name).stat().st_size for name in (WEIGHTS, ONNX) if (folder / name).is_file()}
    measured = model_size(model).total_bytes
    deploys = deployed_file(folder, recipe)
    return {"files": files, "deploys": deploys, "measured_bytes": measured,
            "deployed_over_measured": round(files[deploys] / measured, 4) if measured else None}


def save_compressed(built: Built, recipe: Recipe, tokenizer: Any, teacher_config: Any, out: str | Path,
                    measured: dict[str, Any] | None = None, *, extra_files: dict[str, Path] | None = None,
                    manifest_extra: dict[str, Any] | None = None, check_plain: bool = True) -> Path:
    """Write the deployable folder atomically (a failure leaves no half-written folder).

    ``extra_files`` (name → file, e.g. ``model.onnx``) are moved in; ``manifest_extra`` is
    merged into the manifest. With ``check_plain`` the manifest says whether a plain
    transformers ``from_pretrained`` loads the same model (``plain_from_pretrained``).
    """
    from safetensors.torch import save_file, save_model

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is a file: choose another -o")
    if out.is_dir() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not an autosqueeze model folder: choose another -o")
    packed = _packed(built, recipe)
    with atomic_dir(out) as tmp:
        if packed is None:  # the deployed model is the float model (or a quantized layer of an unknown kind)
            save_model(built.float_model, str(tmp / WEIGHTS), metadata={"format": "pt"})
        else:
            save_file(packed[0], str(tmp / WEIGHTS), metadata={"format": "pt", "autosqueeze": "quantized"})
        mask = os.umask(0)  # safetensors writes 0600: the weights follow the umask like the other files
        os.umask(mask)
        (tmp / WEIGHTS).chmod(0o666 & ~mask)
        built.float_model.config.to_json_file(str(tmp / "config.json"))  # type: ignore[union-attr,operator]
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, src in (extra_files or {}).items():
            shutil.move(str(src), str(tmp / name))
        manifest = {
            "format": FORMAT,
            "recipe": recipe.to_dict(),
            "decisions": built.decisions,
            "teacher_config": teacher_config.to_dict(),
            "weights": "quantized" if packed is not None else "float",  # float: replay the quantization at load
            "quantized_modules": packed[1] if packed is not None else [],
            "model_flags": packed[2] if packed is not None else {},
            "storage": storage(tmp, built.model, recipe),
            "measured": measured or {},
            "weights_sha256": file_sha256(tmp / WEIGHTS),
            **(manifest_extra or {}),
        }
        if check_plain:
            manifest["plain_from_pretrained"] = check_plain_loading(tmp, built, recipe)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return out


def read_manifest(path: str | Path, verify_weights: bool = False) -> dict[str, Any]:
    """The manifest of a saved folder, its recipe validated (CorruptModelError when it is not one).

    ``verify_weights`` also checks the weights file against the SHA-256 the manifest recorded.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model folder {path} does not exist")
    if not path.is_dir():
        raise CorruptModelError(f"{path} is a file, not a model folder saved by `autosqueeze apply`")
    for name in (MANIFEST, WEIGHTS):
        if not (path / name).is_file():
            raise CorruptModelError(f"{path} is not a complete autosqueeze model folder: {name} is missing "
                                    f"(rebuild it with `autosqueeze apply`)")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        if not isinstance(manifest, dict):
            raise ValueError("expected a JSON object")
        missing = [k for k in ("recipe", "decisions", "teacher_config") if k not in manifest]
        if missing:
            raise KeyError(f"missing key(s) {missing}")
        if not isinstance(manifest["teacher_config"], dict) or "model_type" not in manifest["teacher_config"]:
            raise ValueError("teacher_config has no model_type")
        fmt = manifest.get("format", 1)
        if fmt not in (1, FORMAT):
            raise ValueError(f"folder format {fmt!r} is not one this autosqueeze reads (1 or {FORMAT}): saved by "
                             f"a newer autosqueeze?")
        if fmt >= 2 and (manifest.get("weights") not in ("float", "quantized")
                         or not isinstance(manifest.get("quantized_modules"), list)
                         or not isinstance(manifest.get("model_flags", {}), dict)):
            raise ValueError("'weights', 'quantized_modules' or 'model_flags' missing or invalid")
        recipe = Recipe.from_dict(manifest["recipe"], str(path / MANIFEST)).validate()
    except (ValueError, KeyError, TypeError, RecipeError, UnicodeDecodeError) as err:
        raise CorruptModelError(f"{path / MANIFEST} is corrupt: {' '.join(str(err).split())[:300]}") from None
    want = manifest.get("weights_sha256")
    if verify_weights and want and file_sha256(path / WEIGHTS) != want:
        raise CorruptModelError(f"{path / WEIGHTS} is not the file that was saved (its SHA-256 differs from the "
                                f"manifest's): rebuild the folder with `autosqueeze apply`")
    return {**manifest, "recipe": recipe}


def teacher_structure(teacher_config: dict[str, Any]) -> nn.Module:
    """The fp32 classifier a manifest's ``teacher_config`` describes, untrained (eval mode): the
    structure a saved folder's recipe replays on, and what ``bench`` pairs with when no trained
    teacher is at hand. Raises ValueError / KeyError / TypeError for a config transformers refuses."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    tc = dict(teacher_config)
    config = AutoConfig.for_model(tc.pop("model_type"), **tc)
    return AutoModelForSequenceClassification.from_config(config).eval()


def load_compressed(path: str | Path, quantized: bool = True) -> nn.Module:
    """Rebuild and load a model saved by :func:`save_compressed` (eval mode, CPU).

    The float structure is replayed from the teacher's config and the recorded decisions; a
    folder that stores its quantized layers (format 2) gets them back from the stored tensors,
    nothing quantized again. With ``quantized=False`` the float model before the recipe's
    quantization steps (what an ONNX export redoes int8 on): for a format-2 folder its quantized
    layers are plain float layers holding the *dequantized* weights (the original float weights
    are not stored); for a format-1 folder the float weights it stored.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, load_model

    from .quant_state import Unpackable, unpack

    path = Path(path)
    manifest = read_manifest(path, verify_weights=True)
    recipe: Recipe = manifest["recipe"]
    decisions = manifest["decisions"]
    try:
        base = teacher_structure(manifest["teacher_config"])
        ctx = replay_context(recipe, base)
        model = replay(recipe, base, decisions, ctx, part="float", copy_model=False)
    except (ValueError, KeyError, TypeError, IndexError) as err:  # MethodError is a ValueError
        raise CorruptModelError(f"{path / MANIFEST}: its recipe cannot be replayed on its teacher config: "
                                f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if manifest.get("weights") == "quantized":
        try:
            tensors = load_file(str(path / WEIGHTS))
            model = unpack(model, tensors, manifest["quantized_modules"], manifest.get("model_flags") or {},
                           dequantize=not quantized)
        except (SafetensorError, OSError, Unpackable) as err:
            detail = " ".join(str(err).split())[:300]
            raise CorruptModelError(f"{path / WEIGHTS} does not match the recipe's structure: {detail}") from None
        return model.eval()
    try:
        missing, unexpected = load_model(model, str(path / WEIGHTS), strict=True)
    except (SafetensorError, RuntimeError, OSError) as err:
        detail = " ".join(str(err).split())[:300]
        raise CorruptModelError(f"{path / WEIGHTS} does not match the recipe's structure: {detail}") from None
    if quantized and quantize_start(recipe) < len(recipe.steps):  # format 1: the quantization is redone
        model = replay(recipe, model, decisions, ctx, part="quantize", copy_model=False)
    return model.eval()
