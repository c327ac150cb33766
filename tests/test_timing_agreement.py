"""studies/timing_agreement/run.py: its pure parts, and one worker on a tiny model (no timing asserted)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.study_scripts import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "studies" / "timing_agreement" / "run.py"


@pytest.fixture(scope="module")
def script():
    return load_script(SCRIPT, "timing_agreement_run")


def _run(**speedups):
    return {"teacher_ms": 20.0, "structures": {k: {"speedup": v} for k, v in speedups.items()}}


def test_agreement_is_the_relative_range_of_the_medians(script):
    runs = [_run(a=2.0, b=1.0), _run(a=2.06, b=1.2), _run(a=2.02)]
    agree = script.agreement(runs, tolerance=0.05)
    assert agree["a"]["speedups"] == [2.0, 2.06, 2.02] and agree["a"]["median"] == 2.02
    assert agree["a"]["relative_range"] == pytest.approx(0.03) and agree["a"]["agree"]
    assert agree["b"]["speedups"] == [1.0, 1.2] and not agree["b"]["agree"]  # 20% apart
    assert not script.agreement([_run(a=2.0)])["a"]["agree"]  # one process proves nothing


def test_markdown_names_the_command_machine_and_verdict(script):
    runs = [_run(a=2.0), _run(a=2.01), _run(a=2.02)]
    result = {"command": "python studies/timing_agreement/run.py", "runs": runs, "tolerance": 0.05,
              "profile": {"batch_size": 1, "seq_len": 128},
              "fingerprint": {"cpu": {"model": "Test CPU"}, "threads": 2, "versions": {"torch": "2.x"}},
              "agreement": script.agreement(runs)}
    md = script.to_markdown(result)
    assert "`python studies/timing_agreement/run.py`" in md and "Test CPU" in md
    assert "| a | 2.000x | 2.010x | 2.020x | 1.0% | yes |" in md and "All agree: yes" in md


def test_one_worker_times_every_structure_paired(script):
    pytest.importorskip("onnxruntime")
    from autosqueeze.measure import HardwareProfile, LatencySettings
    from tests.tiny import tiny_bert

    fast = LatencySettings(warmup=1, repeats=3, min_time_s=0.0, idle_wait_s=0.0)
    out = script.worker(None, HardwareProfile(threads=1, seq_len=16), fast, model=tiny_bert(layers=4))
    assert set(out["structures"]) == set(script.STRUCTURES)
    assert all(s["speedup"] > 0 and s["teacher_paired_ms"] > 0 for s in out["structures"].values())
    assert out["structures"]["ort_int8"]["runtime"] == "onnxruntime"


def test_before_after_compares_each_sides_median_with_the_before_range(script):
    before = [_run(a=2.0, b=1.0, only_before=3.0), _run(a=2.2, b=1.02)]
    after = [_run(a=2.1, b=1.2), _run(a=2.3, b=1.3)]
    ba = script.before_after(before, after, tolerance=0.05)
    assert set(ba) == {"a", "b"}  # a structure one side did not time is left out
    assert ba["a"]["before"] == pytest.approx(2.1) and ba["a"]["after"] == pytest.approx(2.2)
    assert ba["a"]["ratio"] == pytest.approx(2.2 / 2.1) and ba["a"]["same"]  # inside [2.0, 2.2]
    assert ba["b"]["before_range"] == [1.0, 1.02] and not ba["b"]["same"]  # 1.25 > 1.02 * 1.05


def test_markdown_has_the_before_after_section_only_when_compared(script):
    before, after = [_run(a=2.0), _run(a=2.1)], [_run(a=2.05), _run(a=2.02)]
    result = {"command": "c", "runs": after, "tolerance": 0.05, "profile": {"batch_size": 1, "seq_len": 128},
              "fingerprint": {}, "agreement": script.agreement(after)}
    assert "Before and after" not in script.to_markdown(result)
    result.update({"after_commit": "bbb", "before": {"tree": "../before", "commit": "aaa", "runs": before},
                   "before_after": script.before_after(before, after)})
    md = script.to_markdown(result)
    assert "## Before and after" in md and "aaa" in md and "bbb" in md
    assert "| a | 2.050x (2.000, 2.100) | 2.035x (2.050, 2.020) | 0.993 | yes |" in md


def test_before_must_be_a_checkout_of_the_project(script, tmp_path):
    with pytest.raises(SystemExit, match="no studies/timing_agreement/run.py"):
        script.main(["--before", str(tmp_path), "--out", str(tmp_path / "out")])


def test_run_worker_runs_the_script_in_its_own_process_and_reads_its_result(script, tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text("import json, os, sys\n"
                      "dest = sys.argv[sys.argv.index('--worker') + 1]\n"
                      "json.dump({'args': sys.argv[1:-2], 'pid': os.getpid(), 'env': os.environ.get('MARK')},"
                      " open(dest, 'w'))\n")
    res = script.run_worker(worker, ["--model", "m"], env={**os.environ, "MARK": "before"})
    assert res["args"] == ["--model", "m"] and res["env"] == "before"
    assert res["pid"] != os.getpid()
