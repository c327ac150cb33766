"""The saved model folder: write it, read its manifest, load the model back.

A saved folder holds ``config.json`` (the compressed model's config), the tokenizer,
``model.safetensors`` (float weights after every step except the final quantization
steps), ``model.onnx`` when the model could be exported (always when the recipe's runtime,
``recipe.profile["runtime"]``, is ``onnxruntime``: that graph is what it deploys, and what
``autosqueeze bench`` times), and ``autosqueeze.json`` (the
recipe, each step's recorded decisions, the teacher's config, the measured values, the
weights' SHA-256, and whether a plain ``from_pretrained`` gives the same model).
:func:`load_compressed` rebuilds the structure from the teacher's config by replaying the
decisions (:func:`autosqueeze.builder.replay`: no data, no training), loads the weights, and
re-applies the quantization steps, which are deterministic.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_dir
from .builder import Built, quantize_start, replay, replay_context
from .errors import UserError
from .measure.latency import needs_real_inputs
from .models import quiet_transformers
from .recipe import Recipe, RecipeError

log = logging.getLogger(__name__)
MANIFEST = "autosqueeze.json"
WEIGHTS = "model.safetensors"
ONNX = "model.onnx"


class CorruptModelError(UserError, RuntimeError):
    """A saved model folder is incomplete or does not match its manifest."""


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def check_plain_loading(folder: Path, built: Built, recipe: Recipe) -> dict[str, Any]:
    """Whether ``AutoModelForSequenceClassification.from_pretrained(folder)`` gives the deployed
    model: only when no step changed the model beyond what its config describes (e.g. only
    whole layers dropped, no quantization), checked by loading it and comparing logits."""
    if quantize_start(recipe) < len(recipe.steps):
        return {"ok": False, "reason": "the recipe quantizes: from_pretrained would give the float model before "
                                       "quantization; load with autosqueeze.load"}
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


def save_compressed(built: Built, recipe: Recipe, tokenizer: Any, teacher_config: Any, out: str | Path,
                    measured: dict[str, Any] | None = None, *, extra_files: dict[str, Path] | None = None,
                    manifest_extra: dict[str, Any] | None = None, check_plain: bool = True) -> Path:
    """Write the deployable folder atomically (a failure leaves no half-written folder).

    ``extra_files`` (name → file, e.g. ``model.onnx``) are moved in; ``manifest_extra`` is
    merged into the manifest. With ``check_plain`` the manifest says whether a plain
    transformers ``from_pretrained`` loads the same model (``plain_from_pretrained``).
    """
    from safetensors.torch import save_model

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is a file: choose another -o")
    if out.is_dir() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not an autosqueeze model folder: choose another -o")
    with atomic_dir(out) as tmp:
        save_model(built.float_model, str(tmp / WEIGHTS), metadata={"format": "pt"})
        built.float_model.config.to_json_file(str(tmp / "config.json"))  # type: ignore[union-attr,operator]
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, src in (extra_files or {}).items():
            shutil.move(str(src), str(tmp / name))
        manifest = {
            "recipe": recipe.to_dict(),
            "decisions": built.decisions,
            "teacher_config": teacher_config.to_dict(),
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
    """Rebuild and load a model saved by :func:`save_compressed` (eval mode, CPU); with
    ``quantized=False`` the float model before the recipe's quantization steps (what is saved,
    and what an ONNX export redoes int8 on)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

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
    try:
        missing, unexpected = load_model(model, str(path / WEIGHTS), strict=True)
    except (SafetensorError, RuntimeError, OSError) as err:
        detail = " ".join(str(err).split())[:300]
        raise CorruptModelError(f"{path / WEIGHTS} does not match the recipe's structure: {detail}") from None
    if quantized and quantize_start(recipe) < len(recipe.steps):
        model = replay(recipe, model, decisions, ctx, part="quantize", copy_model=False)
    return model.eval()
