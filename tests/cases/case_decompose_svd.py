import torch
from torch import nn

from autosqueeze.measure import model_size
from autosqueeze.methods.decompose_svd import LowRankLinear, gains
from tests import tiny

CASES = [
    {"rank": 8},
    {"rank": 32, "allow_no_gain": True},  # full rank: lossless
    {"energy": 0.9, "parts": ["ffn"]},
    {"rank": 4, "parts": ["query", "key"], "embedding_rank": 8},
]


def _paths(adapter):
    return {"query": adapter.q, "key": adapter.k, "value": adapter.v, "attn_out": adapter.attn_out,
            "ffn_up": adapter.ffn_up, "ffn_down": adapter.ffn_down}


def check(teacher, model, config, decisions):
    adapter = tiny.adapter(teacher)
    saved = 0
    chosen = set(config.projections())
    for i, (t_layer, layer) in enumerate(zip(tiny.layers(teacher), tiny.layers(model))):
        ranks = decisions["ranks"][i]
        by_path: dict[str, list[str]] = {}
        for part, path in _paths(adapter).items():  # a fused QKV matrix is named by query, key and value
            by_path.setdefault(path, []).append(part)
        for path, names in by_path.items():
            lin, mod = t_layer.get_submodule(path), layer.get_submodule(path)
            ranked = [p for p in names if p in ranks]
            assert len(ranked) <= 1  # factorized once
            if ranked:
                part, r = ranked[0], ranks[ranked[0]]
                assert isinstance(mod, LowRankLinear) and part in chosen
                assert mod.first.weight.shape == (r, lin.in_features) and mod.first.bias is None
                assert mod.second.weight.shape == (lin.out_features, r)
                assert config.allow_no_gain or gains(r, lin.in_features, lin.out_features)
                if config.rank is not None:
                    assert r == min(config.rank, lin.in_features, lin.out_features)
                saved += lin.weight.numel() - r * (lin.in_features + lin.out_features)
            else:
                assert type(mod) is nn.Linear and torch.equal(mod.weight, lin.weight)
                wanted = [p for p in names if p in chosen]
                assert not wanted or any(f"layer{i}.{p}" in decisions["skipped"] for p in wanted)
    s_t, s_m = model_size(teacher), model_size(model)
    emb_saved = 0
    if config.embedding_rank:
        r, (v, h) = decisions["embedding_rank"], teacher.get_input_embeddings().weight.shape
        emb_saved = v * h - r * (v + h)
        assert model.get_input_embeddings().embed.weight.shape == (v, r)
    assert s_m.embedding_params == s_t.embedding_params - emb_saved
    assert s_m.params == s_t.params - saved - emb_saved
    if config.allow_no_gain:
        b = tiny.batch()
        assert torch.allclose(tiny.logits(model, b), tiny.logits(teacher, b), atol=1e-5)
