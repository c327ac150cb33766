import torch

from autosqueeze.measure import model_size
from autosqueeze.methods.common import part_weights
from tests import tiny

CASES = [{}, {"parts": ["ffn"]}]


def check(teacher, model, config, decisions):
    qnames = [n for n, m in model.named_modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    targets = part_weights(teacher, tiny.adapter(teacher), config.parts)  # distinct matrices (a fused QKV once)
    assert len(qnames) == len(targets) > 0
    assert not any("classifier" in n for n in qnames)
    s_t, s_m = model_size(teacher), model_size(model)
    assert s_m.params == s_t.params  # same elements, fewer bytes
    everything = set(config.parts) >= {"attention", "ffn"}
    assert s_m.non_embedding_bytes < 0.5 * s_t.non_embedding_bytes if everything else s_m.total_bytes < s_t.total_bytes
    assert s_m.embedding_bytes == s_t.embedding_bytes
    b = tiny.batch()
    assert torch.allclose(tiny.logits(model, b), tiny.logits(teacher, b), atol=0.05)
