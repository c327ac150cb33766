"""No GLUE folder and no hub: one line that says what to pass, in seconds (no client retries)."""
from __future__ import annotations

import time

import pytest

from autosqueeze.cli import main
from autosqueeze.tasks import loaders


def test_hub_probe_is_fast_and_honours_offline_mode(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert loaders._hub_reachable() is False
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    t0 = time.perf_counter()
    assert loaders._hub_reachable(timeout_s=2.0) is False
    assert time.perf_counter() - t0 < 3.0


@pytest.mark.parametrize("command", ["finetune", "search"])
def test_no_data_folder_offline_is_one_line(command, tiny_model_dir, tmp_path, isolated_cache, monkeypatch, capsys,
                                            caplog):
    pytest.importorskip("datasets")
    monkeypatch.setattr(loaders, "_hub_reachable", lambda timeout_s=3.0: False)  # offline, wherever the test runs
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # set by the loader: restored after the test
        monkeypatch.setenv(var, "0")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))  # an empty cache
    if command == "finetune":
        argv = ["finetune", "--task", "mrpc", "--model", str(tiny_model_dir), "--out", str(tmp_path / "t"),
                "--max-steps", "1"]
    else:
        from tests.test_cli_e2e import write_study

        argv = ["search", str(write_study(tmp_path, tiny_model_dir, task="mrpc", trials=1))]
    t0 = time.perf_counter()
    assert main(argv) == 2
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]  # no hub client retries (30 s)
    assert time.perf_counter() - t0 < 120.0  # loose: the machine may be busy
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"autosqueeze {command}: error:") and "--data-dir" in err and "AUTOSQUEEZE_GLUE_DIR" in err
    assert "Traceback" not in err and "MRPC/" in err
