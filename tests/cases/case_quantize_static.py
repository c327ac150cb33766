import pytest
import torch

from autosqueeze.measure import model_size
from autosqueeze.methods.common import part_weights
from autosqueeze.methods.quantize_static import StaticInt8Linear, activation_qparams
from tests import tiny

CASES = [{}, {"sentences": 6, "parts": ["ffn"]},
         {"sentences": 10, "per_channel": False, "activations": "qint8", "parts": ["attention", "ffn", "classifier"]}]


def check(teacher, model, config, decisions):
    adapter = tiny.context(teacher).adapter
    before = part_weights(teacher, adapter, config.parts)
    after = part_weights(model, adapter, config.parts)
    assert decisions["quantized"] == len(after) == len(before) and decisions["sentences"] == config.sentences
    assert set(decisions["ranges"]) == {name for _, name, _ in after}
    for (_, name, old), (_, _, new) in zip(before, after):
        assert isinstance(new, StaticInt8Linear) and new.qweight.dtype == torch.int8
        lo, hi = decisions["ranges"][name]
        assert lo < hi and (new.rmin, new.rmax) == (lo, hi)
        assert (new.a_scale, new.a_zero) == activation_qparams(lo, hi, config.activations)
        w = old.weight.detach()
        deq = new.qweight.float() * new.w_scale[:, None]
        step = w.abs().amax(1, keepdim=True) / 127 if config.per_channel else w.abs().max() / 127
        assert ((deq - w).abs() <= step / 2 + 1e-7).all()  # rounded to the nearest grid point
        if not config.per_channel:
            assert torch.unique(new.w_scale).numel() == 1
    assert model.autosqueeze_requires_runtime == "onnxruntime"
    s_t, s_m = model_size(teacher), model_size(model)
    assert s_m.params == s_t.params and s_m.embedding_bytes == s_t.embedding_bytes
    assert s_m.total_bytes < s_t.total_bytes
    b = tiny.batch()
    out, ref = tiny.logits(model, b), tiny.logits(teacher, b)
    assert torch.allclose(out, ref, atol=0.05) and not torch.equal(out, ref)  # int8-rounded, not far off
    with pytest.raises(ValueError, match="sentences must be an int >= 1"):
        type(config)(sentences=0)
