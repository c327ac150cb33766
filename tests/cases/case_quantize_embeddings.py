import math

import torch

from autosqueeze.measure import model_size
from autosqueeze.methods.quantize_weights import WeightOnlyEmbedding
from tests import tiny
from tests.cases.quant_reference import assert_logits_close, assert_on_grid, fake_quantized

CASES = [{}, {"bits": 4}, {"bits": 8, "tables": "all"}, {"bits": 4, "group_size": 8, "tables": "all"}]


def _table_bytes(rows: int, cols: int, bits: int, group_size) -> int:
    g = cols if group_size is None or group_size >= cols else group_size
    groups = math.ceil(cols / g)
    return rows * groups * g * bits // 8 + rows * groups * 4  # packed integers + fp32 scales


def check(teacher, model, config, decisions):
    names = {id(m): n for n, m in teacher.named_modules()}
    root = tiny.adapter(teacher).embeddings(teacher)
    tables = [n for n, m in root.named_modules() if isinstance(m, torch.nn.Embedding)]  # word, position, type ...
    word = names[id(teacher.get_input_embeddings())]
    prefix = names[id(root)]
    chosen = [f"{prefix}.{n}" for n in tables] if config.tables == "all" else [word]
    assert decisions["quantized"] == chosen
    saved = 0
    for name in tables:
        old, new = teacher.get_submodule(f"{prefix}.{name}"), model.get_submodule(f"{prefix}.{name}")
        if f"{prefix}.{name}" not in chosen:
            assert type(new) is torch.nn.Embedding and torch.equal(new.weight, old.weight)
            continue
        assert isinstance(new, WeightOnlyEmbedding) and new.bits == config.bits
        assert_on_grid(new, old.weight, config.bits, config.group_size)
        rows, cols = old.weight.shape
        assert new.autosqueeze_nbytes() == _table_bytes(rows, cols, config.bits, config.group_size)
        saved += 4 * rows * cols - new.autosqueeze_nbytes()
    s_t, s_m = model_size(teacher), model_size(model)
    assert s_m.params == s_t.params and s_m.non_embedding_bytes == s_t.non_embedding_bytes
    assert s_t.embedding_bytes - s_m.embedding_bytes == saved > 0
    b = tiny.batch()  # the documented rounding, exactly; and near the teacher for the bits (relative to its logits)
    got = tiny.logits(model, b)
    assert_logits_close(got, tiny.logits(fake_quantized(teacher, chosen, config.bits, config.group_size), b), 1e-4,
                        "vs the reference rounding")
    assert_logits_close(got, tiny.logits(teacher, b), 0.35 if config.bits == 4 else 0.03, "vs the teacher")
