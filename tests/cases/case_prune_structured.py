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


def _per_unit(adapter, layer):
    """Parameters one head and one FFN neuron of ``layer`` hold (any layout: fused QKV, gated FFN, extras)."""
    parts = adapter.attention(layer)
    heads = adapter.num_heads(layer)
    rows = {id(m): m for m in (parts.query, parts.key, parts.value)}
    for path in adapter.head_rows_extra:
        try:
            m = layer.get_submodule(path)
            rows[id(m)] = m
        except AttributeError:
            pass
    head = sum(m.out_features // heads * (m.in_features + (m.bias is not None)) for m in rows.values())
    head += parts.head_size * parts.output.out_features
    up, down = adapter.ffn(layer)
    neuron = up.out_features // down.in_features * (up.in_features + (up.bias is not None)) + down.out_features
    return head, neuron


def check(teacher, model, config, decisions):
    adapter = tiny.adapter(teacher)
    cfg = teacher.config
    t_layers, layers = tiny.layers(teacher), tiny.layers(model)
    n, heads = len(t_layers), adapter.num_heads(t_layers[0])
    ffn = adapter.ffn(t_layers[0])[1].in_features
    d = adapter.attention(t_layers[0]).head_size
    hidden = adapter.attention(t_layers[0]).output.out_features
    hk = _counts(config.heads_keep, heads, n)
    fk = _counts(config.ffn_keep, ffn, n)
    expected = 0
    for i, (t_layer, layer) in enumerate(zip(t_layers, layers)):
        parts = adapter.attention(layer)
        up, down = adapter.ffn(layer)
        assert adapter.num_heads(layer) == hk[i]
        assert parts.query.weight.shape == ((3 if adapter.qkv_fused else 1) * hk[i] * d, hidden)
        assert parts.output.weight.shape == (hidden, hk[i] * d)
        assert up.weight.shape == ((2 if adapter.ffn_gated else 1) * fk[i], hidden)
        assert down.weight.shape == (hidden, fk[i])
        if config.heads_keep is not None:
            assert len(decisions["kept_heads"][i]) == hk[i]
        if config.ffn_keep is not None:
            assert len(decisions["kept_neurons"][i]) == fk[i]
        head, neuron = _per_unit(adapter, t_layer)
        expected += tiny.layer_param_count(t_layer) - (heads - hk[i]) * head - (ffn - fk[i]) * neuron
    # exact parameter count, layer by layer; nothing outside the layers changes
    encoder = sum(tiny.layer_param_count(layer) for layer in layers)
    assert encoder == expected
    if adapter.family == "bert":
        assert encoder == sum(layer_params(cfg.hidden_size, d, h, f) for h, f in zip(hk, fk))
    outside = model_size(model).params - encoder
    assert outside == model_size(teacher).params - sum(tiny.layer_param_count(layer) for layer in t_layers)
    assert model_size(model).embedding_params == model_size(teacher).embedding_params
    # config follows where uniform
    assert getattr(model.config, adapter.config_heads) == (hk[0] if len(set(hk)) == 1 else heads)
    assert getattr(model.config, adapter.config_ffn) == (fk[0] if len(set(fk)) == 1 else ffn)
    b = tiny.batch()
    if hk == [heads] * n and fk == [ffn] * n:
        assert torch.equal(tiny.logits(model, b), tiny.logits(teacher, b))
    elif config.heads_keep is not None and adapter.shared_head_bias:  # each layer reads its own heads' bias
        for layer, kept in zip(layers, decisions["kept_heads"]):
            assert adapter.attention(layer).module.autosqueeze_head_index.tolist() == kept
