import math

from autosqueeze.measure import model_size
from autosqueeze.methods.common import part_weights
from autosqueeze.methods.quantize_weights import WeightOnlyEmbedding, WeightOnlyLinear
from tests import tiny
from tests.cases.quant_reference import assert_logits_close, assert_on_grid, fake_quantized

CASES = [{}, {"bits": 4, "group_size": 16},
         {"bits": 4, "group_size": None, "parts": ["embeddings", "ffn"], "compute": "bf16"},
         {"bits": 8, "group_size": 24, "parts": ["attention", "classifier"]}]


def _expected_bytes(rows: int, cols: int, bits: int, group_size, bias: int) -> int:
    row = cols + cols % 2 if bits == 4 else cols
    g = row if group_size is None or group_size >= cols else group_size
    groups = math.ceil(cols / g)
    return rows * groups * g * bits // 8 + rows * groups * 4 + 4 * bias


def check(teacher, model, config, decisions):
    adapter = tiny.context(teacher).adapter
    before = part_weights(teacher, adapter, config.parts)
    after = part_weights(model, adapter, config.parts)
    assert decisions["quantized"] == len(after) == len(before)
    expect = 0
    for (_, name, old), (_, name2, new) in zip(before, after):
        assert name == name2 and isinstance(new, (WeightOnlyLinear, WeightOnlyEmbedding)) and new.bits == config.bits
        bf16 = isinstance(new, WeightOnlyLinear) and config.compute == "bf16"
        assert_on_grid(new, old.weight, config.bits, config.group_size, rtol=0.01 if bf16 else 1e-5)
        rows, cols = old.weight.shape
        bias = old.bias.numel() if getattr(old, "bias", None) is not None else 0
        assert new.autosqueeze_nbytes() == _expected_bytes(rows, cols, config.bits, config.group_size, bias)
        expect += 4 * (rows * cols + bias) - new.autosqueeze_nbytes()
    s_t, s_m = model_size(teacher), model_size(model)
    assert s_m.params == s_t.params  # the same weights, fewer bytes each
    assert s_t.total_bytes - s_m.total_bytes == expect
    if "embeddings" not in config.parts:
        assert s_m.embedding_bytes == s_t.embedding_bytes
    b = tiny.batch()  # the documented rounding (bf16 compute adds its own); near the teacher for the bits
    got = tiny.logits(model, b)
    ref = fake_quantized(teacher, [name for _, name, _ in before], config.bits, config.group_size)
    assert_logits_close(got, tiny.logits(ref, b), 1e-4 if config.compute == "fp32" else 0.02,
                        "vs the reference rounding")
    assert_logits_close(got, tiny.logits(teacher, b), 0.35 if config.bits == 4 else 0.03, "vs the teacher")
