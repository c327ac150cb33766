import torch
from torch import nn

from autosqueeze.measure import model_size
from autosqueeze.methods.cast_precision import DTYPES, CastEmbedding, CastLinear
from autosqueeze.methods.common import part_weights
from tests import tiny

CASES = [{}, {"parts": ["ffn"]}, {"dtype": "fp16", "parts": ["attention", "classifier"]},
         {"parts": ["embeddings", "attention", "ffn", "classifier"]}]


def check(teacher, model, config, decisions):
    dtype = DTYPES[config.dtype]
    adapter = tiny.context(teacher).adapter
    cast = [m for _, _, m in part_weights(model, adapter, config.parts)]
    assert cast and all(isinstance(m, (CastLinear, CastEmbedding)) and m.weight.dtype == dtype for m in cast)
    assert decisions["cast"] == len(cast)
    others = [m for _, _, m in part_weights(model, adapter, [p for p in ("embeddings", "attention", "ffn", "classifier")
                                                               if p not in config.parts])]
    assert all(type(m) in (nn.Linear, nn.Embedding) and m.weight.dtype == torch.float32 for m in others)
    assert all(m.weight.dtype == torch.float32 for m in model.modules() if isinstance(m, nn.LayerNorm))
    # bytes: 2 instead of 4 for every cast weight and bias, nothing else changes
    halved = sum(p.numel() for m in cast for p in m.parameters())
    s_t, s_m = model_size(teacher), model_size(model)
    assert s_m.params == s_t.params
    assert s_m.total_bytes == s_t.total_bytes - 2 * halved
    emb_halved = sum(m.weight.numel() for m in cast if isinstance(m, CastEmbedding))
    assert s_m.embedding_bytes == s_t.embedding_bytes - 2 * emb_halved
    b = tiny.batch()
    assert tiny.logits(model, b).dtype == torch.float32
    assert torch.allclose(tiny.logits(model, b), tiny.logits(teacher, b), atol=0.02)
