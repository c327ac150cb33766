import torch

from autosqueeze.measure import model_size
from tests import tiny

CASES = [
    {"threshold": 0.0, "steps": 2},
    {"threshold": 1.0, "steps": 2},
    {"rule": "patience", "patience": 1, "steps": 2},
    {"threshold": 0.5, "steps": 0},
    {"threshold": 0.5, "steps": 2, "training": "joint", "rule": "patience", "patience": 1},
]


def check(teacher, model, config, decisions):
    depth = teacher.config.num_hidden_layers
    hidden, labels = teacher.config.hidden_size, teacher.config.num_labels
    heads = model.autosqueeze_exit.heads
    assert len(heads) == depth - 1
    # size: one (hidden x hidden + hidden x labels) head per layer but the last; embeddings unchanged
    added = (depth - 1) * (hidden * hidden + hidden + hidden * labels + labels)
    assert model_size(model).params - model_size(teacher).params == added
    assert model_size(model).embedding_params == model_size(teacher).embedding_params
    assert model.autosqueeze_needs_real_inputs
    assert ("steps_done" in decisions) == (config.steps > 0)
    stats = model.autosqueeze_exit_stats()
    assert stats["calls"] == 1  # the contract test's forward
    b = tiny.batch()
    model.autosqueeze_reset_exit_stats()
    out = tiny.logits(model, b)
    stats = model.autosqueeze_exit_stats()
    assert stats["calls"] == 1
    if config.rule == "entropy" and config.threshold == 0.0:  # never exits: exactly the base model
        assert stats["mean_exit_layer"] == depth
        assert torch.equal(out, tiny.logits(teacher, b))
    if config.rule == "entropy" and config.threshold == 1.0:  # always exits after the first layer
        assert stats["mean_exit_layer"] == 1
    if config.rule == "patience":  # needs patience+1 heads to agree: never before layer patience+1
        assert stats["mean_exit_layer"] >= config.patience + 1
