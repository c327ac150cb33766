"""Unstructured magnitude pruning: zero the smallest weights of the attention / FFN matrices.

``sparsity`` of the weights in the chosen ``parts`` become exactly zero: with ``scope:
per_layer`` every weight matrix loses exactly ``round(sparsity * numel)`` weights (its
smallest by magnitude); with ``scope: global`` the smallest ``round(sparsity * total)``
magnitudes across all chosen matrices go, so matrices end up with different sparsities.
Ties are broken by position, so the counts are exact and the result deterministic (and
data independent: replay recomputes the same masks; loading saved weights re-derives each
mask from the weights' zeros). Biases are not pruned. A second pruning step can only raise
sparsity.

Each pruned Linear becomes a :class:`SparseLinear` (an ``nn.Linear`` subclass with the same
parameters and state-dict keys, plus a non-persistent mask). The mask survives recovery
training twice over: in training mode the forward multiplies the weight by the mask (so
pruned weights get zero gradients), and a hook in ``ctx.post_step_hooks`` re-zeroes them
after every optimiser step.

Size (a ``capabilities.StoredSize`` module): what a real sparse format stores, never less. ``kernel:
dense``: the smallest of dense (4 B/weight), a bitmap (4 B per nonzero + 1 bit per
position) and CSR (4 B value + 4 B int32 column index per nonzero + 4 B per row pointer);
``kernel: csr``: CSR. At 50% sparsity the bitmap saves ~47%, CSR nothing. Parameter counts
are the nonzeros. Embeddings unchanged.

Latency: ``kernel: dense`` keeps the dense matmuls (≈1.0×, no speedup). ``kernel: csr``
multiplies with torch's sparse CSR kernel in inference (eval mode, no grad, fp32 on CPU;
training always runs dense and masked): on this CPU ≈1.2–1.5× at batch 1 and 90% sparsity
for MiniLM, slower than dense at low sparsity (e.g. 50%) or large batches (batch 32).
Latency is whatever is measured. Later quantization (int8, bf16, weight-only) turns these layers back
into dense ones, as their kernels are dense.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ..capabilities import StoredSize
from .common import checked_parts, replace_module, unquantized_part_weights
from .context import MethodContext
from .registry import Stage, register

log = logging.getLogger(__name__)
PARTS = ("attention", "ffn")
SCOPES = ("per_layer", "global")
KERNELS = ("dense", "csr")


@dataclass(frozen=True)
class PruneUnstructuredConfig:
    sparsity: float = 0.5  # fraction of the chosen weights set to zero, in [0, 1)
    scope: str = "per_layer"  # per_layer: each matrix exactly; global: one threshold over all
    parts: tuple[str, ...] = ("attention", "ffn")
    kernel: str = "dense"  # dense | csr (sparse CSR matmul at inference)

    def __post_init__(self) -> None:
        if isinstance(self.sparsity, bool) or not 0.0 <= float(self.sparsity) < 1.0:
            raise ValueError(f"sparsity must be a fraction in [0, 1), got {self.sparsity!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")
        object.__setattr__(self, "parts", checked_parts(self.parts, PARTS))


class SparseLinear(nn.Linear, StoredSize):
    """A Linear whose pruned weights stay zero; optionally multiplied as sparse CSR in inference."""

    mask: torch.Tensor
    _csr: tuple[tuple[int, int], torch.Tensor] | None

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: torch.Tensor, kernel: str) -> SparseLinear:
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        new.weight, new.bias = linear.weight, linear.bias  # the same Parameters
        new.register_buffer("mask", mask.to(torch.bool), persistent=False)
        new.kernel = kernel
        new.train(linear.training)
        new._csr = None  # ((weight version, address), CSR copy), built on the first sparse forward
        new.apply_mask()
        return new

    def raw_weight(self) -> torch.Tensor:
        """The stored weight (under a parametrization, e.g. QAT fake-quant, its original)."""
        if parametrize.is_parametrized(self, "weight"):
            return self.parametrizations.weight.original  # type: ignore[return-value]
        return self.weight

    @torch.no_grad()
    def apply_mask(self) -> None:
        self.raw_weight().mul_(self.mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return F.linear(x, self.weight * self.mask, self.bias)
        w = self.weight
        if (self.kernel == "csr" and not torch.is_grad_enabled() and w.device.type == "cpu"
                and w.dtype == torch.float32 and x.dtype == torch.float32):
            x2 = x.reshape(-1, self.in_features)
            bias = self.bias if self.bias is not None else w.new_zeros(self.out_features)
            y = torch.addmm(bias.unsqueeze(1), self._csr_weight(), x2.t()).t()
            return y.reshape(*x.shape[:-1], self.out_features)
        return F.linear(x, w, self.bias)

    def _csr_weight(self) -> torch.Tensor:
        w = self.weight
        key = (w._version, w.data_ptr())
        if self._csr is None or self._csr[0] != key:
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
                self._csr = (key, w.detach().to_sparse_csr())
        return self._csr[1]

    def train(self, mode: bool = True) -> SparseLinear:
        self._csr = None  # weights are about to change; rebuilt at the next sparse forward
        return super().train(mode)

    def __getstate__(self) -> dict:  # deepcopy / pickle: the CSR copy is rebuilt on demand
        state = dict(super().__getstate__())
        state["_csr"] = None
        return state

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        with torch.no_grad():
            nz = self.raw_weight() != 0
        if int(nz.sum()) > int(self.mask.sum()):
            log.warning("%s: loaded weights are denser than the pruning mask; the mask follows the weights",
                        prefix.rstrip(".") or "SparseLinear")
        self.mask = nz
        self._csr = None

    def to_plain_linear(self) -> nn.Linear:
        plain = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        plain.weight, plain.bias = self.weight, self.bias
        return plain.train(self.training)

    # --- size -------------------------------------------------------------------------
    def nnz(self) -> int:
        return int(torch.count_nonzero(self.raw_weight()))

    def storage_bytes(self) -> dict[str, int]:
        """Bytes of the weight matrix in each format (bias excluded)."""
        w = self.raw_weight()
        rows, numel, nnz, es = w.shape[0], w.numel(), self.nnz(), w.element_size()
        return {"dense": numel * es, "bitmap": nnz * es + -(-numel // 8), "csr": nnz * (es + 4) + 4 * (rows + 1)}

    def storage_format(self) -> str:
        sizes = self.storage_bytes()
        return "csr" if self.kernel == "csr" else min(sizes, key=sizes.__getitem__)

    def autosqueeze_nbytes(self) -> int:
        bias = 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        return self.storage_bytes()[self.storage_format()] + bias

    def autosqueeze_params(self) -> int:
        return self.nnz() + (0 if self.bias is None else self.bias.numel())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel={self.kernel}"


def reapply_masks(model: nn.Module) -> None:
    """Post-step hook: zero every pruned weight again (after an optimiser step)."""
    for mod in model.modules():
        if isinstance(mod, SparseLinear):
            mod.apply_mask()


def _keep_mask(magnitudes: torch.Tensor, prune: int) -> torch.Tensor:
    """Boolean keep-mask pruning exactly ``prune`` of the smallest ``magnitudes`` (ties by position)."""
    flat = magnitudes.flatten()
    if prune <= 0:
        return torch.ones_like(flat, dtype=torch.bool).view_as(magnitudes)
    thr = flat.kthvalue(prune).values
    pruned = flat < thr
    ties = torch.nonzero(flat == thr).flatten()
    pruned[ties[: prune - int(pruned.sum())]] = True
    return (~pruned).view_as(magnitudes)


def apply(model: nn.Module, config: PruneUnstructuredConfig, ctx: MethodContext) -> nn.Module:
    targets = unquantized_part_weights(model, ctx.adapter, config.parts, "prune_unstructured",
                                       fix="prune before quantizing")
    weights = [mod.weight.detach() for _, _, mod in targets]
    with torch.no_grad():
        if config.scope == "per_layer":
            masks = [_keep_mask(w.abs(), round(config.sparsity * w.numel())) for w in weights]
        else:
            flat = torch.cat([w.abs().flatten() for w in weights])
            keep = _keep_mask(flat, round(config.sparsity * flat.numel()))
            masks = [m.view_as(w) for m, w in zip(keep.split([w.numel() for w in weights]), weights)]
    nnz = []
    for (_, name, mod), mask in zip(targets, masks):
        if isinstance(mod, SparseLinear):  # pruned before: keep its zeros, switch kernel if asked
            mod.mask = mod.mask & mask
            mod.kernel = config.kernel
            mod.apply_mask()
        else:
            mod = SparseLinear.from_linear(mod, mask, config.kernel)
            replace_module(model, name, mod)
        nnz.append(int(mod.mask.sum()))
    total = sum(w.numel() for w in weights)
    if ctx.replay and ctx.decisions.get("nnz") not in (None, nnz):
        log.warning("prune_unstructured: replayed masks differ from the recorded ones (another teacher?); "
                    "loaded weights will define the masks")
    ctx.decisions.update(nnz=nnz, sparsity=1.0 - sum(nnz) / total)
    if reapply_masks not in ctx.post_step_hooks:
        ctx.post_step_hooks.append(reapply_masks)
    return model


SPEC = register(
    "prune_unstructured",
    PruneUnstructuredConfig,
    apply,
    stage=Stage.SPARSIFY,
    family="unstructured pruning",
    summary="magnitude pruning to an exact sparsity (global or per layer); dense or sparse CSR kernels",
    runtime_limits=lambda config: {"onnxruntime": "CSR sparse kernels have no ONNX operator"}
    if config.kernel == "csr" else {},
    size_modules=(SparseLinear,),
)
