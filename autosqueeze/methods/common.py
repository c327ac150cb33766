"""Small helpers shared by method modules."""
from __future__ import annotations

from torch import nn

from ..arch import ArchAdapter
from ..capabilities import LowPrecision
from .registry import MethodError

# Model parts that precision / sparsity methods address (see :func:`part_weights`).
PARTS = ("embeddings", "attention", "ffn", "classifier")


def checked_parts(parts: tuple[str, ...] | list[str], allowed: tuple[str, ...] = PARTS) -> tuple[str, ...]:
    """A method config's ``parts`` as a tuple: a non-empty subset of ``allowed`` without repeats
    (ValueError otherwise, naming ``allowed``)."""
    parts = tuple(parts)
    if set(parts) - set(allowed) or not parts or len(set(parts)) != len(parts):
        raise ValueError(f"parts must be a non-empty subset of {allowed} without repeats, got {list(parts)}")
    return parts


def is_quantized_module(module: nn.Module) -> bool:
    """True for torch.ao quantized modules (their weights are packed int8, not trainable) and for
    autosqueeze's own low-precision modules (``capabilities.LowPrecision``)."""
    return type(module).__module__.startswith("torch.ao.nn.quantized") or (
        isinstance(module, LowPrecision) and bool(module.autosqueeze_quantized))


def has_quantized_layers(model: nn.Module) -> bool:
    return any(is_quantized_module(m) for m in model.modules())


def _leaves(root: nn.Module, kinds: tuple[type, ...]) -> list[nn.Module]:
    """Weight-holding leaves under ``root``: modules of ``kinds`` and quantized modules (not entered)."""
    out: list[nn.Module] = []

    def walk(m: nn.Module) -> None:
        if is_quantized_module(m) or isinstance(m, kinds):
            out.append(m)
            return
        for child in m.children():
            walk(child)

    walk(root)
    return out


def part_weights(
    model: nn.Module, adapter: ArchAdapter, parts: tuple[str, ...] | list[str]
) -> list[tuple[str, str, nn.Module]]:
    """``(part, qualified name, module)`` for every weight matrix of the chosen ``parts``.

    attention: Q, K, V and output projections of every layer; ffn: up and down projections;
    classifier: the task head outside the backbone (the pooler, part of the backbone, is in no
    part); embeddings: the embedding tables (and any Linear inside, e.g. a factorized
    embedding). Factorized projections contribute each of their Linears. Already quantized
    modules are returned as they are, so callers can refuse them.
    """
    bad = set(parts) - set(PARTS)
    if bad:
        raise ValueError(f"unknown part(s) {sorted(bad)}; allowed: {PARTS}")
    names = {id(m): n for n, m in model.named_modules()}
    roots: list[tuple[str, nn.Module]] = []
    for layer in adapter.layers(model):
        if "attention" in parts:
            a = adapter.attention(layer)
            roots += [("attention", m) for m in (a.query, a.key, a.value, a.output)]
        if "ffn" in parts:
            roots += [("ffn", m) for m in adapter.ffn(layer)]
    if "classifier" in parts:
        roots += [("classifier", m) for m in adapter.classifier_modules(model)]
    if "embeddings" in parts:
        roots.append(("embeddings", adapter.embeddings(model)))
    out: list[tuple[str, str, nn.Module]] = []
    seen: set[int] = set()
    for part, root in roots:
        kinds: tuple[type, ...] = (nn.Linear, nn.Embedding) if part == "embeddings" else (nn.Linear,)
        for leaf in _leaves(root, kinds):
            if id(leaf) not in seen:  # a module shared by several layers is listed once
                seen.add(id(leaf))
                out.append((part, names[id(leaf)], leaf))
    return out


def replace_module(model: nn.Module, qualified_name: str, module: nn.Module) -> None:
    """Put ``module`` at ``qualified_name`` (dotted path from ``model``)."""
    parent_name, _, leaf = qualified_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, module)


def plain_linear(module: nn.Module) -> nn.Module:
    """A Linear that keeps a storage format of its own (e.g. sparse) as a plain ``nn.Linear``
    sharing its weights; any other module unchanged. Quantization uses dense kernels."""
    to_plain = getattr(module, "to_plain_linear", None)
    return to_plain() if callable(to_plain) else module


def unquantized_part_weights(model: nn.Module, adapter: ArchAdapter, parts: tuple[str, ...] | list[str],
                             method: str, fix: str = "give each quantization step different parts",
                             ) -> list[tuple[str, str, nn.Module]]:
    """:func:`part_weights` for a step that needs float weights: refuses targets an earlier step
    already quantized or cast (``fix`` says what to do instead), and an empty selection."""
    targets = part_weights(model, adapter, parts)
    done = [f"{name} ({part})" for part, name, mod in targets if is_quantized_module(mod)]
    if done:
        raise MethodError(f"{method}: {len(done)} target layer(s) are already quantized or cast by an earlier step, "
                          f"e.g. {done[:3]}; {fix}")
    if not targets:
        raise MethodError(f"{method}: no weights found in parts {list(parts)}")
    return targets
