import torch
from torch import nn

from autosqueeze.methods.common import part_weights
from tests import tiny

CASES = [{"steps": 3}, {"steps": 2, "target": "quantize_weights", "bits": 4, "group_size": 16, "parts": ["ffn"]},
         {"steps": 2, "activations": True, "alpha_labels": 0.5, "parts": ["attention", "ffn", "classifier"]}]


def check(teacher, model, config, decisions):
    assert decisions["steps_done"] == config.steps
    targets = part_weights(model, tiny.context(teacher).adapter, config.parts)
    assert decisions["fake_quantized"] == len(targets)
    # fake-quant removed: plain Linears, float weights, the float model's state dict shape
    assert all(type(m) is nn.Linear for _, _, m in targets)
    assert not any(m._forward_pre_hooks for m in model.modules())
    sd_t, sd_m = teacher.state_dict(), model.state_dict()
    assert sd_t.keys() == sd_m.keys()
    assert all(v.shape == sd_t[k].shape and v.dtype == sd_t[k].dtype for k, v in sd_m.items())
    assert any(not torch.equal(v, sd_t[k]) for k, v in sd_m.items())  # trained
