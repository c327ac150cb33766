from autosqueeze.measure import model_size
from tests import tiny

CASES = [{"keep": 2}, {"keep": 3, "strategy": "bottom"}, {"strategy": "explicit", "layers": [1, 3]}, {"keep": 4}]


def check(teacher, model, config, decisions):
    adapter = tiny.adapter(teacher)
    t_layers, m_layers = tiny.layers(teacher), tiny.layers(model)
    kept = decisions["kept_layers"]
    assert len(m_layers) == len(kept) == getattr(model.config, adapter.config_layers)
    if config.layers:
        assert kept == sorted(config.layers)
    removed = sum(tiny.layer_param_count(t_layers[i]) for i in range(len(t_layers)) if i not in kept)
    assert model_size(teacher).non_embedding_params - model_size(model).non_embedding_params == removed
    assert model_size(model).embedding_params == model_size(teacher).embedding_params
    types = [getattr(layer, "attention_type", None) for layer in m_layers]
    if all(types):  # alternating local/global attention: each kept layer keeps its type, the config follows
        assert types == [t_layers[i].attention_type for i in kept] == model.config.layer_types
