import torch
from torch import nn

from autosqueeze.methods.decompose_svd import LowRankLinear, gains
from autosqueeze.measure import model_size
from tests import tiny

CASES = [
    {"rank": 8},
    {"rank": 32, "allow_no_gain": True},  # full rank: lossless
    {"energy": 0.9, "parts": ["ffn"]},
    {"rank": 4, "parts": ["query", "key"], "embedding_rank": 8},
]

PATHS = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
         "attn_out": "attention.output.dense", "ffn_up": "intermediate.dense", "ffn_down": "output.dense"}


def _get(layer, path):
    for part in path.split("."):
        layer = getattr(layer, part)
    return layer


def check(teacher, model, config, decisions):
    saved = 0
    chosen = set(config.projections())
    for i, (t_layer, layer) in enumerate(zip(teacher.bert.encoder.layer, model.bert.encoder.layer)):
        ranks = decisions["ranks"][i]
        for part, path in PATHS.items():
            lin, mod = _get(t_layer, path), _get(layer, path)
            if part in ranks:
                r = ranks[part]
                assert isinstance(mod, LowRankLinear) and part in chosen
                assert mod.first.weight.shape == (r, lin.in_features) and mod.first.bias is None
                assert mod.second.weight.shape == (lin.out_features, r)
                assert config.allow_no_gain or gains(r, lin.in_features, lin.out_features)
                if config.rank is not None:
                    assert r == min(config.rank, lin.in_features, lin.out_features)
                saved += lin.weight.numel() - r * (lin.in_features + lin.out_features)
            else:
                assert type(mod) is nn.Linear and torch.equal(mod.weight, lin.weight)
                assert part not in chosen or f"layer{i}.{part}" in decisions["skipped"]
    s_t, s_m = model_size(teacher), model_size(model)
    emb_saved = 0
    if config.embedding_rank:
        r, (v, h) = decisions["embedding_rank"], teacher.bert.embeddings.word_embeddings.weight.shape
        emb_saved = v * h - r * (v + h)
        assert model.bert.embeddings.word_embeddings.embed.weight.shape == (v, r)
    assert s_m.embedding_params == s_t.embedding_params - emb_saved
    assert s_m.params == s_t.params - saved - emb_saved
    if config.allow_no_gain:
        b = tiny.batch()
        assert torch.allclose(tiny.logits(model, b), tiny.logits(teacher, b), atol=1e-5)
