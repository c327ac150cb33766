"""A space keeps only the steps the study's runtime can deploy (quantize_static: ONNX Runtime)."""
from __future__ import annotations

from pathlib import Path

import optuna

from autosqueeze.search.space import load_space

FULL = Path(__file__).resolve().parents[1] / "search_spaces" / "full.yaml"


def test_torch_study_drops_onnxruntime_only_steps_and_still_samples():
    space = load_space(FULL)
    assert "quantize_static" in [s.method for s in space.steps]
    torch_space = space.for_runtime("torch").resolve({"layers": 6, "heads": 12, "ffn": 1536, "hidden": 384})
    assert "quantize_static" not in [s.method for s in torch_space.steps]
    assert space.for_runtime("onnxruntime") is space
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        recipe = torch_space.suggest(trial)
        assert "quantize_static" not in [s.method for s in recipe.steps]
        study.tell(trial, [0.0, 1.0])
