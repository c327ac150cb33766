"""Shared fixtures: a tiny local BERT model folder (with a WordPiece tokenizer) and GLUE data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fixtures_glue import LAYOUTS, write_glue

# a tiny model's int8 reference runs near 1.0x the fp32 teacher: with the int8 probe on, whether a
# test study's space keeps quantize_dynamic would depend on timing noise (tests/test_int8_probe.py
# turns it on where it is the subject); set before any test, so subprocesses inherit it too
os.environ.setdefault("AUTOSQUEEZE_INT8_PROBE", "0")

SHARED_GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def real_glue_dir() -> Path | None:
    env = os.environ.get("AUTOSQUEEZE_GLUE_DIR")
    for cand in ([Path(env)] if env else []) + [SHARED_GLUE]:
        if (cand / "SST-2" / "dev.tsv").is_file():
            return cand
    return None


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT (hidden 32) with a word-level vocabulary covering the fixtures."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast  # type: ignore[attr-defined]

    out = tmp_path_factory.mktemp("tiny_model")
    words = set()
    for _, _, rows, _ in LAYOUTS.values():
        for row in rows:
            for cell in row:
                words.update(cell.lower().replace('"', ' " ').split())
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", '"', ".", ",", "'"] + sorted(words)
    (out / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tok = BertTokenizerFast(vocab=str(out / "vocab.txt"), do_lower_case=True)
    assert len(tok) > 50, "the fixture vocabulary did not load"
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128)
    BertForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture()
def glue_dir(tmp_path) -> Path:
    return write_glue(tmp_path / "glue_data")


@pytest.fixture()
def isolated_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("AUTOSQUEEZE_CACHE", str(cache))
    monkeypatch.delenv("AUTOSQUEEZE_GLUE_DIR", raising=False)
    return cache


@pytest.fixture(autouse=True)
def _no_study_deploy_variant_left_behind():
    """A study that deploys in ONNX Runtime makes its measured graph variant the process's default
    (search.deploy_choice); each test starts and ends with none set."""
    from autosqueeze.runtimes.variants import set_active_variant

    set_active_variant(None)
    yield
    set_active_variant(None)
