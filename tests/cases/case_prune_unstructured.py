import torch

from autosqueeze.measure import model_size
from autosqueeze.methods.common import part_weights
from autosqueeze.methods.prune_unstructured import SparseLinear
from tests import tiny

CASES = [{"sparsity": 0.5}, {"sparsity": 0.9, "scope": "global", "kernel": "csr"}, {"sparsity": 0.7, "parts": ["ffn"]},
         {"sparsity": 0.0}]


def check(teacher, model, config, decisions):
    adapter = tiny.context(teacher).adapter
    mods = [m for _, _, m in part_weights(model, adapter, config.parts)]
    assert all(isinstance(m, SparseLinear) and m.kernel == config.kernel for m in mods)
    zeros = [int((m.weight == 0).sum()) for m in mods]
    total = sum(m.weight.numel() for m in mods)
    if config.scope == "per_layer":
        assert zeros == [round(config.sparsity * m.weight.numel()) for m in mods]
    else:
        assert sum(zeros) == round(config.sparsity * total)
    assert decisions["nnz"] == [m.weight.numel() - z for m, z in zip(mods, zeros)]
    assert abs(decisions["sparsity"] - config.sparsity) < 1e-3
    # state dict keys and shapes unchanged (a saved float model loads back)
    sd_t, sd_m = teacher.state_dict(), model.state_dict()
    assert sd_t.keys() == sd_m.keys() and all(sd_t[k].shape == v.shape for k, v in sd_m.items())
    s_t, s_m = model_size(teacher), model_size(model)
    assert s_m.params == s_t.params - sum(zeros)
    assert s_m.embedding_bytes == s_t.embedding_bytes
    stored = 0
    for m in mods:
        nnz, (rows, cols) = int(m.weight.count_nonzero()), m.weight.shape
        csr = nnz * 8 + 4 * (rows + 1)
        stored += csr if config.kernel == "csr" else min(4 * rows * cols, 4 * nnz + -(-rows * cols // 8), csr)
    assert s_t.total_bytes - s_m.total_bytes == 4 * total - stored
    if config.kernel == "csr":  # the sparse kernel computes what the dense masked weights compute
        b = tiny.batch()
        out = tiny.logits(model, b)
        for m in mods:
            m.kernel = "dense"
        assert torch.allclose(out, tiny.logits(model, b), atol=1e-5)
        for m in mods:
            m.kernel = "csr"
