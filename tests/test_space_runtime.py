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
    # an onnxruntime study drops what no ONNX graph runs: per-batch depth, and bf16 compute (a cast, and
    # these weight-only steps' dequantization); static int8 stays
    ort_space = space.for_runtime("onnxruntime")
    assert [s.method for s in space.steps if s.id not in [t.id for t in ort_space.steps]] == \
        ["early_exit", "cast_precision", "quantize_weights"]
    assert "quantize_static" in [s.method for s in ort_space.steps]
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        recipe = torch_space.suggest(trial)
        assert "quantize_static" not in [s.method for s in recipe.steps]
        study.tell(trial, [0.0, 1.0])
