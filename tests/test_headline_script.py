"""The headline script end to end on a tiny elastic study: search -> finalize -> references ->
results JSON with every field the headline promises (numbers from a tiny model, not asserted)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from autosqueeze.study_config import load_study_config
from tests.study_scripts import load_script
from tests.test_elastic_study import write_elastic_study

SCRIPT = Path(__file__).resolve().parents[1] / "studies" / "headline" / "run.py"
FIELDS = {"teacher_metric", "trials", "trials_per_hour", "elastic_train_s", "finalize_s", "front"}
POINT_FIELDS = {"recipe", "metric", "delta_pts", "speedup_vs_fp32", "speedup_vs_torch_int8", "speedup_vs_ort_int8",
                "latency_ms", "size_pct", "size_no_emb_pct", "fidelity"}


def test_headline_script_on_a_tiny_study(tiny_model_dir, glue_dir, tmp_path, isolated_cache):
    pytest.importorskip("onnxruntime")
    module = load_script(SCRIPT, "headline_run")
    study = write_elastic_study(tmp_path, tiny_model_dir, trials=4)
    assert module.main(["--data-dir", str(glue_dir), "--study", str(study), "--rounds", "10"]) == 0
    name = load_study_config(study).name  # results are named after the study
    result = json.loads((tmp_path / "results" / f"{name}.json").read_text())
    assert FIELDS <= set(result) and result["trials"] == 4
    assert result["front"] and all(POINT_FIELDS <= set(p) for p in result["front"])
    assert all(p["fidelity"] == "final" and p["speedup_vs_ort_int8"] > 0 for p in result["front"])
    assert (tmp_path / "results" / f"{name}.md").read_text().startswith(f"# {name}:")
    (tmp_path / "results" / f"{name}.md").unlink()  # the page is rewritten from the JSON alone
    assert module.main(["--data-dir", str(glue_dir), "--study", str(study), "--stage", "markdown"]) == 0
    page = (tmp_path / "results" / f"{name}.md").read_text()
    assert page.startswith(f"# {name}:") and "Search-time front" in page and result["search_front"]
    for p in result["front"]:  # each point against the limit its multiply-adds set
        assert p["macs"] > 0 and p["mac_ratio"] >= 1.0  # a slice of the teacher never costs more
        assert p["fraction_vs"] in {"fp32", "torch_int8", "ort_int8"}
        assert p["fraction_of_mac_ratio"] == pytest.approx(p[f"speedup_vs_{p['fraction_vs']}"] / p["mac_ratio"])
    assert result["targets"] == module.DEFAULT_TARGETS and len(result["target_lines"]) == 2
    (tmp_path / "targets.yaml").write_text("within_1pt: 8\nwithin_3pt: 12\nwithin_1pt_vs_ort_int8: 3\n")
    assert module.read_targets(study)["within_1pt_vs_ort_int8"] == 3.0
    (tmp_path / "targets.yaml").write_text("within_2pt: 8\n")
    with pytest.raises(SystemExit, match="within_1pt"):
        module.read_targets(study)
    # resumable: a second run finds every stage done and rewrites the same trials
    assert module.main(["--data-dir", str(glue_dir), "--study", str(study), "--stage", "search"]) == 0
