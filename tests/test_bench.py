"""``autosqueeze bench``: saved folders timed paired with their teacher (found in the cache, given,
or rebuilt from the manifest's config), other models alone. Structure only: no timing asserted."""
from __future__ import annotations

import json
import shutil

import pytest

from autosqueeze.artifact import save_compressed
from autosqueeze.bench import UNPAIRED, bench
from autosqueeze.builder import build
from autosqueeze.cli import main
from autosqueeze.measure import HardwareProfile, LatencySettings
from autosqueeze.models import weights_hash
from autosqueeze.recipe import Recipe, Step
from tests.tiny import context

FAST = LatencySettings(warmup=1, repeats=3, min_time_s=0.0, idle_wait_s=0.0)
PROFILE = HardwareProfile(threads=1, seq_len=16)
DROP = [Step("drop_layers", {"keep": 2})]


def _teacher(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()


def _saved(tmp_path, tiny_model_dir, name: str, runtime: str = "torch"):
    """A folder as apply saves it, its recipe naming the tiny teacher's weights hash."""
    teacher = _teacher(tiny_model_dir)
    recipe = Recipe(steps=DROP, teacher={"weights_hash": weights_hash(teacher)}, profile={"runtime": runtime})
    built = build(recipe, teacher, context(teacher))
    extra = None
    if runtime == "onnxruntime":
        from autosqueeze.runtimes import export_for_deployment

        extra = {"model.onnx": export_for_deployment(built.model, tmp_path / f"{name}.onnx",
                                                     float_model=built.float_model, recipe=recipe).path}
    return save_compressed(built, recipe, None, teacher.config, tmp_path / name, extra_files=extra,
                           check_plain=False)


def _cache_teacher(cache, tiny_model_dir):
    """The tiny model as the cache's teacher (what ``get_teacher`` would have written)."""
    folder = cache / "teachers" / "sst2-000000000000"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "metrics.json").write_text(json.dumps({"accuracy": 0.5}))
    (folder / "teacher.json").write_text(json.dumps({"weights_hash": weights_hash(_teacher(tiny_model_dir))}))
    return folder


def _check_paired(row, reference: str) -> None:
    assert row.paired and row.reference == f"paired: {reference}"
    assert row.speedup_p10 is not None and row.speedup_p90 is not None
    assert row.speedup_p10 <= row.speedup <= row.speedup_p90  # the median lies within its spread
    assert row.teacher_ms and row.latency_ms == pytest.approx(row.teacher_ms / row.speedup)


def test_saved_folders_are_paired_with_their_teacher(tiny_model_dir, tmp_path, isolated_cache):
    folder = _saved(tmp_path, tiny_model_dir, "m")
    rows = bench([str(folder)], PROFILE, FAST)  # nothing cached: the structure the manifest describes
    _check_paired(rows[0], "teacher structure (manifest config, untrained weights)")
    _cache_teacher(isolated_cache, tiny_model_dir)
    rows = bench([str(folder), str(tiny_model_dir), str(folder)], PROFILE, FAST)
    _check_paired(rows[0], "teacher (cache)")
    _check_paired(rows[2], "teacher (cache)")
    assert rows[0].teacher_ms == rows[2].teacher_ms  # one teacher baseline for the folders of one teacher
    plain = rows[1]  # a plain model folder has no teacher: timed alone, against the first row
    assert not plain.paired and plain.reference == UNPAIRED and plain.teacher_ms is None
    assert plain.speedup == pytest.approx(rows[0].latency.median_ms / plain.latency.median_ms)
    given = bench([str(folder)], PROFILE, FAST, teacher_dir=str(_cache_teacher(tmp_path, tiny_model_dir)))
    _check_paired(given[0], f"teacher {tmp_path / 'teachers' / 'sst2-000000000000'}")


def test_bench_prints_runtime_latency_and_paired_speedup_with_its_spread(tiny_model_dir, tmp_path, isolated_cache,
                                                                      capsys):
    folder = _saved(tmp_path, tiny_model_dir, "m")
    _cache_teacher(isolated_cache, tiny_model_dir)
    assert main(["bench", str(folder), str(tiny_model_dir), "--seq-len", "16", "--repeats", "3",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["model", "runtime", "median", "ms", "p10-p90", "ms", "speedup", "p10-p90", "MB", "MB",
                              "no", "emb", "reference"]
    paired, plain = out[1].split(), out[2].split()
    assert paired[1] == "torch" and paired[4].endswith("x") and "-" in paired[5]
    lo, hi = (float(x) for x in paired[5].split("-"))
    assert lo <= float(paired[4][:-1]) <= hi
    assert " ".join(paired[8:]).startswith("paired: teacher (cache), ") and paired[-1] == "ms"
    assert plain[1] == "torch" and plain[5] == "-" and " ".join(plain[8:]) == UNPAIRED
    assert "median of the per-pair ratios" in out[-1]


def test_an_onnxruntime_folder_is_paired_as_it_deploys(tiny_model_dir, tmp_path, isolated_cache):
    pytest.importorskip("onnxruntime")
    folder = _saved(tmp_path, tiny_model_dir, "ort", runtime="onnxruntime")
    row = bench([str(folder)], PROFILE, FAST)[0]
    assert row.runtime == "onnxruntime"
    _check_paired(row, "teacher structure (manifest config, untrained weights)")
