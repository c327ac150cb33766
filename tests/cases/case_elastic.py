"""elastic: slices a sub-network of a (tiny, briefly trained) elastic student: fewer layers, heads, neurons."""
from types import SimpleNamespace

from autosqueeze.arch import get_adapter
from autosqueeze.elastic import ElasticSettings, get_elastic_student
from tests import tiny

CASES = [{"layers": 2, "heads_keep": 2, "ffn_keep": 0.5}, {"layers": 1.0, "heads_keep": [1, 2, 3, 4], "ffn_keep": 16},
         {"layers": 0.75}]


def prepare(params, tmp_path, monkeypatch, teacher=None):
    """Train the tiny teacher's elastic student into a private cache; the case names it."""
    teacher = teacher if teacher is not None else tiny.tiny_bert()
    monkeypatch.setenv("AUTOSQUEEZE_CACHE", str(tmp_path / "cache"))
    data = SimpleNamespace(task=SimpleNamespace(name="sst2", num_labels=2, is_regression=False), train=list(range(8)),
                           batch_size=4, max_seq_len=12, train_batches=lambda n, seed: tiny.batches(n, seed))
    student = get_elastic_student(teacher, f"tiny-{teacher.config.model_type}", data,
                                  ElasticSettings(steps=2, importance_batches=1))
    return {**params, "student": student.key}


def check(teacher, model, config, decisions):
    adapter = get_adapter(model)
    layers = adapter.layers(model)
    assert len(layers) == len(decisions["kept_layers"]) == getattr(model.config, adapter.config_layers)
    assert [adapter.num_heads(layer) for layer in layers] == decisions["heads"]
    assert [adapter.ffn(layer)[1].in_features for layer in layers] == decisions["neurons"]
    if config.layers == 2:
        assert decisions["kept_layers"] == [0, 2] and decisions["heads"] == [2, 2] and decisions["neurons"] == [32, 32]
        assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in teacher.parameters())
