import torch

from autosqueeze.measure import model_size
from tests import tiny

CASES = [
    {"heads_keep": 2, "ffn_keep": 0.5},
    {"heads_keep": 1.0, "ffn_keep": 1.0},  # keep everything: lossless
    {"heads_keep": [1, 2, 3, 4], "ffn_keep": [8, 16, 32, 64], "importance": "magnitude"},
    {"ffn_keep": 16, "batches": 2, "loss": "labels"},
]


def _counts(keep, total, n_layers):
    values = list(keep) if isinstance(keep, tuple) else [keep] * n_layers
    return [total if v is None else max(1, round(v * total)) if isinstance(v, float) else v for v in values]


def layer_params(hidden: int, head_size: int, heads: int, ffn: int) -> int:
    """Parameters of one BERT encoder layer with ``heads`` heads and ``ffn`` neurons."""
    a = heads * head_size
    attention = 3 * (hidden * a + a) + (a * hidden + hidden) + 2 * hidden  # Q, K, V, output, LayerNorm
    return attention + (hidden * ffn + ffn) + (ffn * hidden + hidden) + 2 * hidden  # up, down, LayerNorm


def check(teacher, model, config, decisions):
    cfg = teacher.config
    n, heads, ffn = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size
    d = cfg.hidden_size // heads
    hk = _counts(config.heads_keep, heads, n)
    fk = _counts(config.ffn_keep, ffn, n)
    layers = model.bert.encoder.layer
    for i, layer in enumerate(layers):
        att = layer.attention
        assert att.self.num_attention_heads == hk[i]
        assert att.self.query.weight.shape == (hk[i] * d, cfg.hidden_size)
        assert att.output.dense.weight.shape == (cfg.hidden_size, hk[i] * d)
        assert layer.intermediate.dense.weight.shape == (fk[i], cfg.hidden_size)
        assert layer.output.dense.weight.shape == (cfg.hidden_size, fk[i])
        if config.heads_keep is not None:
            assert len(decisions["kept_heads"][i]) == hk[i]
        if config.ffn_keep is not None:
            assert len(decisions["kept_neurons"][i]) == fk[i]
    # exact parameter count by formula
    encoder = sum(p.numel() for p in layers.parameters())
    assert encoder == sum(layer_params(cfg.hidden_size, d, h, f) for h, f in zip(hk, fk))
    outside = model_size(model).params - encoder
    assert outside == model_size(teacher).params - sum(p.numel() for p in teacher.bert.encoder.layer.parameters())
    assert model_size(model).embedding_params == model_size(teacher).embedding_params
    # config follows where uniform
    assert model.config.num_attention_heads == (hk[0] if len(set(hk)) == 1 else heads)
    assert model.config.intermediate_size == (fk[0] if len(set(fk)) == 1 else ffn)
    b = tiny.batch()
    if hk == [heads] * n and fk == [ffn] * n:
        assert torch.equal(tiny.logits(model, b), tiny.logits(teacher, b))
