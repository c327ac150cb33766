import torch

from autosqueeze.measure import model_size
from autosqueeze.methods.share_layers import groups_for, shared_groups
from tests import tiny

CASES = [{"group_size": 2}, {"group_size": 3, "init": "mean"}, {"group_size": 1}, {"group_size": 4, "init": "mean"}]


def check(teacher, model, config, decisions):
    depth = len(tiny.layers(teacher))
    groups = groups_for(depth, config.group_size)
    assert decisions["groups"] == groups
    assert shared_groups(model, tiny.get_adapter(model)) == groups
    assert len(tiny.layers(model)) == depth  # depth (compute) unchanged
    assert getattr(model.config, tiny.adapter(model).config_layers) == depth
    layer = tiny.layers(teacher)[0]
    per_layer_params = sum(p.numel() for p in layer.parameters())
    per_layer_bytes = sum(p.numel() * p.element_size() for p in layer.parameters())
    s_t, s_m = model_size(teacher), model_size(model)
    assert s_t.params - s_m.params == (depth - len(groups)) * per_layer_params
    assert s_t.total_bytes - s_m.total_bytes == (depth - len(groups)) * per_layer_bytes
    assert s_m.embedding_bytes == s_t.embedding_bytes
    if config.group_size == 1:  # nothing shared: lossless
        b = tiny.batch()
        assert torch.equal(tiny.logits(model, b), tiny.logits(teacher, b))
