"""Tests for autosqueeze.tasks: specs, local/hub loaders and GLUE metrics (local fixtures only)."""

from __future__ import annotations

import logging
import math
import os
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from autosqueeze.tasks import (
    TASKS,
    Example,
    compute_metrics,
    get_task,
    load_split,
    resolve_data_dir,
    subset,
)
from autosqueeze.tasks.metrics import f1_binary, matthews_correlation, pearson, rankdata, spearmanr
from tests.fixtures_glue import LAYOUTS, Q, write_task, write_tsv

ENV = "AUTOSQUEEZE_GLUE_DIR"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)


# --- specs -------------------------------------------------------------------------------

def test_nine_tasks_and_fields() -> None:
    assert list(TASKS) == ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"]
    assert get_task("stsb").is_regression and get_task("stsb").num_labels == 1
    assert get_task("stsb").label_names == ()
    assert get_task("mnli").label_names == ("entailment", "neutral", "contradiction")
    assert get_task("mnli").dev_splits == ("dev_matched", "dev_mismatched")
    assert get_task("rte").label_names == ("entailment", "not_entailment")
    assert get_task("cola").main_metric == "matthews_correlation"
    assert get_task("mrpc").main_metric == get_task("qqp").main_metric == "f1"
    assert get_task("stsb").metric_names == ("pearson", "spearmanr")
    for spec in TASKS.values():
        assert spec.main_metric in spec.metric_names
        assert spec.dev_splits == ("dev",) or spec.name == "mnli"


@pytest.mark.parametrize("alias,name", [("sst2", "sst2"), ("SST-2", "sst2"), ("sst-2", "sst2"),
                                        ("STS-B", "stsb"), ("MNLI", "mnli"), ("CoLA", "cola"),
                                        ("qqp", "qqp"), ("sts_b", "stsb")])
def test_get_task_aliases(alias: str, name: str) -> None:
    assert get_task(alias) is TASKS[name]
    assert get_task(TASKS[name]) is TASKS[name]


def test_get_task_unknown_lists_valid_names() -> None:
    with pytest.raises(ValueError) as err:
        get_task("imdb")
    assert "imdb" in str(err.value) and "sst2" in str(err.value) and "wnli" in str(err.value)


# --- local loading in each original layout --------------------------------------------------

@pytest.mark.parametrize("task", list(LAYOUTS))
def test_load_each_layout(tmp_path: Path, task: str) -> None:
    write_task(tmp_path, task)
    spec = get_task(task)
    expected = [Example(texts, label) for texts, label in LAYOUTS[task][3]]
    for split in ("train", "dev", *spec.dev_splits):
        got = load_split(task, split, tmp_path)
        assert got == expected, split
        for ex in got:
            assert len(ex.texts) == len(spec.text_fields)
            assert isinstance(ex.label, float if spec.is_regression else int)
    assert any(Q in ex.texts for ex in expected)  # the quote survived, rows not merged
    labels = [ex.label for ex in expected]
    scores = compute_metrics(spec, labels, labels)
    assert tuple(scores) == spec.metric_names
    assert all(isinstance(v, float) for v in scores.values())


def test_mrpc_fixture_has_bom(tmp_path: Path) -> None:
    folder = write_task(tmp_path, "mrpc")
    assert (folder / "train.tsv").read_bytes().startswith(b"\xef\xbb\xbf")
    assert load_split("MRPC", "train", tmp_path)[0].label == 1


def test_qqp_skips_malformed_rows_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_task(tmp_path, "qqp")
    with caplog.at_level(logging.WARNING, logger="autosqueeze.tasks"):
        rows = load_split("qqp", "train", tmp_path)
    assert len(rows) == 4
    assert "skipped 1 malformed" in caplog.text


def test_short_row_in_other_task_is_an_error(tmp_path: Path) -> None:
    write_tsv(tmp_path / "RTE" / "train.tsv", ["index", "sentence1", "sentence2", "label"],
              [["0", "a", "b", "entailment"], ["1", "only one sentence"]])
    with pytest.raises(ValueError, match=r"train\.tsv:3"):
        load_split("rte", "train", tmp_path)


def test_mnli_dev_means_matched(tmp_path: Path) -> None:
    write_task(tmp_path, "mnli")
    _, header, rows, _ = LAYOUTS["mnli"]
    write_tsv(tmp_path / "MNLI" / "dev_mismatched.tsv", header, rows[:2])
    assert load_split("mnli", "dev", tmp_path) == load_split("mnli", "dev_matched", tmp_path)
    assert len(load_split("mnli", "dev_mismatched", tmp_path)) == 2


def test_invalid_split(tmp_path: Path) -> None:
    write_task(tmp_path, "sst2")
    with pytest.raises(ValueError, match="dev_matched"):
        load_split("sst2", "dev_matched", tmp_path)
    with pytest.raises(ValueError, match="test"):
        load_split("sst2", "test", tmp_path)


def test_data_dir_may_be_the_task_folder(tmp_path: Path) -> None:
    folder = write_task(tmp_path, "rte")
    assert load_split("rte", "dev", folder) == load_split("rte", "dev", tmp_path)
    renamed = folder.rename(tmp_path / "my_rte")
    assert len(load_split("rte", "dev", renamed)) == 4


def test_unknown_label_names_file_line_and_valid_labels(tmp_path: Path) -> None:
    path = write_tsv(tmp_path / "RTE" / "dev.tsv", ["index", "sentence1", "sentence2", "label"],
                     [["0", "a", "b", "entailment"], ["1", "c", "d", "maybe"]])
    with pytest.raises(ValueError) as err:
        load_split("rte", "dev", tmp_path)
    msg = str(err.value)
    assert str(path) in msg and ":3" in msg and "'maybe'" in msg
    assert "entailment" in msg and "not_entailment" in msg


def test_missing_header_column(tmp_path: Path) -> None:
    write_tsv(tmp_path / "SST-2" / "dev.tsv", ["text", "label"], [["a", "1"]])
    with pytest.raises(ValueError, match="'sentence'"):
        load_split("sst2", "dev", tmp_path)


def test_missing_folder_names_expected_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_split("sst2", "train", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "SST-2" / "train.tsv") in msg
    assert "--data-dir" in msg and ENV in msg


def test_missing_file_names_expected_path(tmp_path: Path) -> None:
    (tmp_path / "SST-2").mkdir()
    write_tsv(tmp_path / "SST-2" / "train.tsv", ["sentence", "label"], [["a", "1"]])
    with pytest.raises(FileNotFoundError) as err:
        load_split("sst2", "dev", tmp_path)
    assert str(tmp_path / "SST-2" / "dev.tsv") in str(err.value)


def test_resolve_data_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_data_dir(None) is None
    monkeypatch.setenv(ENV, str(tmp_path / "env"))
    assert resolve_data_dir(None) == str(tmp_path / "env")
    assert resolve_data_dir(tmp_path / "flag") == str(tmp_path / "flag")
    monkeypatch.setenv(ENV, "")
    assert resolve_data_dir(None) is None


def test_env_var_used_when_no_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_task(tmp_path, "wnli")
    monkeypatch.setenv(ENV, str(tmp_path))
    assert len(load_split("wnli", "train", None)) == 4


# --- hub fallback (a fake `datasets` module; no network) ------------------------------------

class _FakeDataset(list):
    def __init__(self, rows: list[dict], names: list[str] | None) -> None:
        super().__init__(rows)
        self.features = {"label": types.SimpleNamespace(names=names)} if names else {}


def _fake_datasets(monkeypatch: pytest.MonkeyPatch, load) -> list:
    calls: list = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return load(*args, **kwargs)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_hub_fallback_maps_labels_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    # A hub copy whose class order differs from ours must still land on our indices.
    names = ["contradiction", "entailment", "neutral"]
    rows = [{"premise": "p", "hypothesis": "h", "label": i} for i in range(3)]
    calls = _fake_datasets(monkeypatch, lambda *a, **k: _FakeDataset(rows, names))
    got = load_split("mnli", "dev", None)
    assert calls[0][0] == ("glue", "mnli") and calls[0][1]["split"] == "validation_matched"
    assert [ex.label for ex in got] == [2, 0, 1]
    assert got[0].texts == ("p", "h")


def test_hub_fallback_identity_and_regression(monkeypatch: pytest.MonkeyPatch) -> None:
    rte = [{"sentence1": "a", "sentence2": "b", "label": 1}]
    _fake_datasets(monkeypatch, lambda *a, **k: _FakeDataset(rte, ["entailment", "not_entailment"]))
    assert load_split("rte", "train", None) == [Example(("a", "b"), 1)]
    sts = [{"sentence1": "a", "sentence2": "b", "label": 4.25}]
    _fake_datasets(monkeypatch, lambda *a, **k: _FakeDataset(sts, None))
    assert load_split("stsb", "dev", None) == [Example(("a", "b"), 4.25)]


def test_hub_failure_says_how_to_use_local_data(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a, **k):
        raise ConnectionError("no network")

    _fake_datasets(monkeypatch, boom)
    with pytest.raises(RuntimeError) as err:
        load_split("sst2", "train", None)
    assert "--data-dir" in str(err.value) and ENV in str(err.value)
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(RuntimeError, match="--data-dir"):
        load_split("sst2", "train", None)


# --- metrics --------------------------------------------------------------------------------

Y = np.array([1, 1, 1, 0, 0, 1, 0, 1, 0, 0])
P = np.array([1, 0, 1, 0, 1, 1, 0, 1, 0, 1])


def test_f1_and_mcc_by_hand() -> None:
    tp, tn, fp, fn = 4, 3, 2, 1
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert f1_binary(P, Y) == pytest.approx(2 * precision * recall / (precision + recall))
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert matthews_correlation(P, Y) == pytest.approx(mcc)
    assert matthews_correlation(P, Y) == pytest.approx(np.corrcoef(P, Y)[0, 1])
    out = compute_metrics("mrpc", P, Y)
    assert out == {"f1": pytest.approx(8 / 11), "accuracy": pytest.approx(0.7)}


def test_mcc_multiclass_perfect_and_permutation_invariant() -> None:
    y = np.array([0, 1, 2, 2, 1, 0, 2])
    p = np.array([0, 2, 2, 1, 1, 0, 2])
    assert matthews_correlation(y, y) == pytest.approx(1.0)
    perm = np.array([2, 0, 1])
    assert matthews_correlation(perm[p], perm[y]) == pytest.approx(matthews_correlation(p, y))


def test_correlations_by_hand() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    y = np.array([5.0, 6.0, 7.0, 8.0, 7.0])
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    # no ties in x; y ranks with ties averaged by hand: 5->1, 6->2, 7,7->3.5, 8->5
    assert rankdata(y).tolist() == [1.0, 2.0, 3.5, 5.0, 3.5]
    assert spearmanr(x, y) == pytest.approx(np.corrcoef([1, 2, 3, 4, 5], [1, 2, 3.5, 5, 3.5])[0, 1])
    a, b = np.array([10.0, 20.0, 30.0, 40.0]), np.array([1.0, 3.0, 2.0, 4.0])
    d2 = sum((r - s) ** 2 for r, s in zip([1, 2, 3, 4], [1, 3, 2, 4]))
    assert spearmanr(a, b) == pytest.approx(1 - 6 * d2 / (4 * (4 ** 2 - 1)))
    out = compute_metrics("STS-B", np.array([[1.0], [2.0], [3.0]]), [1.0, 2.0, 3.5])
    assert set(out) == {"pearson", "spearmanr"} and out["spearmanr"] == pytest.approx(1.0)


def test_degenerate_cases_are_zero_not_nan() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert matthews_correlation([1, 1, 1, 1], [0, 1, 0, 1]) == 0.0
        assert matthews_correlation([0, 0], [0, 0]) == 0.0
        assert f1_binary([0, 0, 0], [1, 0, 1]) == 0.0
        assert f1_binary([0, 0], [0, 0]) == 0.0
        assert pearson([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0
        assert spearmanr([1.0, 2.0, 3.0], [7.0, 7.0, 7.0]) == 0.0
        out = compute_metrics("cola", [1, 1, 1], [0, 1, 1])
    assert out == {"matthews_correlation": 0.0}


def test_compute_metrics_logits_and_errors() -> None:
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 1.0]])
    assert compute_metrics("sst2", logits, [1, 0, 0]) == {"accuracy": pytest.approx(2 / 3)}
    with pytest.raises(ValueError, match="length"):
        compute_metrics("sst2", [1, 0], [1])
    with pytest.raises(ValueError):
        compute_metrics("rte", [], [])


# --- subset ---------------------------------------------------------------------------------

def test_subset_is_deterministic() -> None:
    data = [Example((str(i),), i % 2) for i in range(50)]
    a, b = subset(data, 10, seed=3), subset(data, 10, seed=3)
    assert a == b and len(a) == 10 and len(set(ex.texts for ex in a)) == 10
    assert subset(data, 10, seed=4) != a
    assert subset(data, None, 0) == data and subset(data, 500, 0) == data


# --- real GLUE data (shared folder beside the repo) -----------------------------------------

def _real_glue_dir() -> Path:
    env = os.environ.get(ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared/data/glue"


REAL_GLUE = _real_glue_dir()  # read at import, before the autouse fixture clears the env var


@pytest.mark.glue_data
@pytest.mark.parametrize("task,n_train,n_dev", [("sst2", 67349, 872), ("rte", 2490, 277)])
def test_real_glue_row_counts(task: str, n_train: int, n_dev: int) -> None:
    spec = get_task(task)
    if not (REAL_GLUE / spec.glue_dir).is_dir():
        pytest.skip(f"no real GLUE data at {REAL_GLUE / spec.glue_dir}")
    train, dev = load_split(spec, "train", REAL_GLUE), load_split(spec, "dev", REAL_GLUE)
    assert (len(train), len(dev)) == (n_train, n_dev)
    assert {ex.label for ex in dev} == {0, 1}
    assert all(len(ex.texts) == len(spec.text_fields) and ex.texts[0] for ex in dev)
