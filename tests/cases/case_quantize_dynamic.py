import torch

from autosqueeze.measure import model_size
from tests import tiny

CASES = [{}, {"parts": ["ffn"]}]


def check(teacher, model, config, decisions):
    qnames = [n for n, m in model.named_modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    per_layer = (4 if "attention" in config.parts else 0) + (2 if "ffn" in config.parts else 0)
    assert len(qnames) == per_layer * len(model.bert.encoder.layer)
    assert not any("classifier" in n for n in qnames)
    s_t, s_m = model_size(teacher), model_size(model)
    assert s_m.params == s_t.params  # same elements, fewer bytes
    assert s_m.non_embedding_bytes < 0.5 * s_t.non_embedding_bytes if per_layer == 6 else s_m.total_bytes < s_t.total_bytes
    assert s_m.embedding_bytes == s_t.embedding_bytes
    b = tiny.batch()
    assert torch.allclose(tiny.logits(model, b), tiny.logits(teacher, b), atol=0.05)
