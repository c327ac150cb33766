from autosqueeze.measure import model_size

CASES = [{"keep": 2}, {"keep": 3, "strategy": "bottom"}, {"strategy": "explicit", "layers": [1, 3]}, {"keep": 4}]


def check(teacher, model, config, decisions):
    depth = len(teacher.bert.encoder.layer)
    kept = decisions["kept_layers"]
    assert len(model.bert.encoder.layer) == len(kept) == model.config.num_hidden_layers
    if config.layers:
        assert kept == sorted(config.layers)
    per_layer = model_size(teacher).non_embedding_params - model_size(model).non_embedding_params
    assert per_layer == (depth - len(kept)) * sum(p.numel() for p in teacher.bert.encoder.layer[0].parameters())
    assert model_size(model).embedding_params == model_size(teacher).embedding_params
