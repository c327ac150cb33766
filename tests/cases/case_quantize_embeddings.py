import math

import torch

from autosqueeze.measure import model_size
from autosqueeze.methods.quantize_weights import WeightOnlyEmbedding
from tests import tiny

CASES = [{}, {"bits": 4}, {"bits": 8, "tables": "all"}, {"bits": 4, "group_size": 8, "tables": "all"}]


def _table_bytes(rows: int, cols: int, bits: int, group_size) -> int:
    g = cols if group_size is None or group_size >= cols else group_size
    groups = math.ceil(cols / g)
    return rows * groups * g * bits // 8 + rows * groups * 4  # packed integers + fp32 scales


def check(teacher, model, config, decisions):
    emb_t, emb_m = teacher.bert.embeddings, model.bert.embeddings
    names = ["word_embeddings"] + (["position_embeddings", "token_type_embeddings"] if config.tables == "all" else [])
    assert decisions["quantized"] == [f"bert.embeddings.{n}" for n in names]
    saved = 0
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        old, new = getattr(emb_t, name), getattr(emb_m, name)
        if name not in names:
            assert type(new) is torch.nn.Embedding and torch.equal(new.weight, old.weight)
            continue
        assert isinstance(new, WeightOnlyEmbedding) and new.bits == config.bits
        rows, cols = old.weight.shape
        assert new.autosqueeze_nbytes() == _table_bytes(rows, cols, config.bits, config.group_size)
        saved += 4 * rows * cols - new.autosqueeze_nbytes()
    s_t, s_m = model_size(teacher), model_size(model)
    assert s_m.params == s_t.params and s_m.non_embedding_bytes == s_t.non_embedding_bytes
    assert s_t.embedding_bytes - s_m.embedding_bytes == saved > 0
    b = tiny.batch()
    assert torch.allclose(tiny.logits(model, b), tiny.logits(teacher, b), atol=0.05 if config.bits == 4 else 0.01)
