import torch

from tests import tiny

CASES = [{"steps": 3}, {"steps": 2, "alpha_hidden": 1.0, "alpha_attention": 1.0, "alpha_labels": 0.5}]


def make_teacher(arch="bert"):
    try:  # attention distillation switches to eager and back
        return tiny.tiny_model(arch, attn="sdpa")
    except ValueError:  # MPNet, DeBERTa: no SDPA attention in transformers
        return tiny.tiny_model(arch, attn="eager")


def check(teacher, model, config, decisions):
    assert decisions["steps_done"] == config.steps
    impl = "eager" if teacher.config.model_type in ("mpnet", "deberta-v2") else "sdpa"
    assert teacher.config._attn_implementation == model.config._attn_implementation == impl
    # trained: weights moved, shapes did not
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, teacher.state_dict()[k])]
    assert changed
    assert all(v.shape == teacher.state_dict()[k].shape for k, v in model.state_dict().items())
