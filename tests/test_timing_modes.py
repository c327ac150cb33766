"""studies/timing_agreement/modes.py: its pure parts, and one worker on a tiny model (no timing asserted)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.study_scripts import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "studies" / "timing_agreement" / "modes.py"


@pytest.fixture(scope="module")
def script():
    return load_script(SCRIPT, "timing_modes")


def test_two_means_finds_two_modes_and_their_shares(script):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(4.0, 0.1, 300), rng.normal(5.2, 0.1, 100)])
    m = script.two_means(rng.permutation(x))
    assert m["fast_ms"] == pytest.approx(4.0, abs=0.05) and m["slow_ms"] == pytest.approx(5.2, abs=0.05)
    assert m["fast_share"] == pytest.approx(0.75, abs=0.01) and m["gap_sd"] > 8
    one = script.two_means(rng.normal(4.0, 0.1, 400))  # one mode: the split is within the noise
    assert one["gap_sd"] < 4
    with pytest.raises(ValueError, match="at least 4"):
        script.two_means(np.array([1.0, 2.0]))


def test_speedup_statistics_of_the_same_pairs(script):
    t = np.array([20.0, 20.0, 22.0, 24.0, 100.0])
    c = np.array([10.0, 10.0, 11.0, 12.0, 10.0])
    s = script.speedup_statistics(t, c)
    assert s["median_of_ratios"] == pytest.approx(2.0)
    assert s["ratio_of_medians"] == pytest.approx(22.0 / 10.0)
    assert s["ratio_of_means"] == pytest.approx(np.mean(t) / np.mean(c))
    assert s["ratio_of_trimmed_means"] == pytest.approx(np.mean([20.0, 22.0, 24.0]) / np.mean([10.0, 10.0, 11.0]))


def test_spread_is_the_range_of_each_statistic_over_processes(script):
    def run(v):
        return {"structures": {"a": {"speedup": {s: v for s in script.STATISTICS}}}}

    sp = script.spread([run(2.0), run(2.2), run(2.1)])
    assert sp["a"]["median_of_ratios"]["values"] == [2.0, 2.2, 2.1]
    assert sp["a"]["ratio_of_means"]["range"] == pytest.approx(0.1)


def test_worker_on_a_tiny_model_reports_every_torch_structure(script):
    from transformers import BertConfig, BertForSequenceClassification  # type: ignore[attr-defined]

    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=6, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=32)
    res = script.worker("unused", threads=1, seq_len=8, pairs=6, warmup=1,
                        model=BertForSequenceClassification(cfg))
    assert set(res["structures"]) == set(script.TORCH_STRUCTURES)
    for s in res["structures"].values():
        assert set(s["speedup"]) == set(script.STATISTICS) and all(v > 0 for v in s["speedup"].values())
        assert s["candidate_q"]["p5"] <= s["candidate_q"]["p95"]
    md = script.to_markdown({"command": "c", "runs": [res, res], "spread": script.spread([res, res]),
                             "threads": 1, "seq_len": 8, "pairs": 6, "fingerprint": {}})
    assert "| sliced_3_layers_int8 | 0.0% (" in md


def test_main_refuses_a_single_process(script, tmp_path):
    with pytest.raises(SystemExit, match="at least 2"):
        script.main(["--processes", "1", "--out", str(tmp_path)])
