"""A short study end to end on tiny random MPNet and ModernBERT models (issue 14): search (2 trials
of drop_layers / head and FFN pruning / distill / int8), export the best recipe, apply it."""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import transformers
import yaml

from autosqueeze.cli import main
from tests import tiny
from tests.test_cli_e2e import FAST_LATENCY


def _model_dir(arch: str, bert_dir: Path, out: Path) -> Path:
    """The fixture vocabulary (a word-level BERT tokenizer, without token type ids) and a tiny ``arch`` model."""
    return tiny.save_model_dir(arch, bert_dir / "vocab.txt", out, layers=2, heads=4, hidden=32, ffn=64)


@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_a_tiny_model_folder_pads_with_its_tokenizers_pad_id(arch, tiny_model_dir, tmp_path):
    """MPNet and RoBERTa pad with id 1 by default; with the fixture's BERT vocabulary that is [UNK],
    whose embedding would be a frozen zero and whose position the padding one."""
    folder = _model_dir(arch, tiny_model_dir, tmp_path / arch)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder)
    assert model.config.pad_token_id == tok.pad_token_id == model.get_input_embeddings().padding_idx
    assert model.get_input_embeddings().weight[tok.unk_token_id].abs().sum() > 0


@pytest.mark.parametrize("arch", ["mpnet", "modernbert"])
def test_short_study_end_to_end(arch, tiny_model_dir, glue_dir, tmp_path, isolated_cache, capsys):
    model = _model_dir(arch, tiny_model_dir, tmp_path / arch)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"steps": [
        {"method": "drop_layers", "optional": True, "params": {"keep": 1}},
        {"method": "prune_structured", "params": {"heads_keep": {"type": "int", "low": 1, "high": 4},
                                                  "ffn_keep": {"type": "float", "low": 0.25, "high": 1.0},
                                                  "batches": 1}},
        {"method": "distill", "params": {"steps": 2}},
        {"method": "quantize_dynamic", "optional": True},
    ]}))
    study = {"name": "t", "task": "sst2", "model": str(model), "search_space": "space.yaml", "trials": 2,
             "sampler": "random", "teacher": {"steps": 2, "batch_size": 4, "max_seq_len": 16},
             "recovery": {"batch_size": 4, "max_seq_len": 16}, "hardware": {"seq_len": 16}, "latency": FAST_LATENCY}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    data = ["--data-dir", str(glue_dir)]
    assert main(["search", str(tmp_path / "study.yaml"), *data]) == 0
    s = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 't.db'}")
    done = [t for t in s.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2 and all(len(t.values) == 2 for t in done)
    recipe = tmp_path / "recipe.yaml"
    assert main(["export", str(tmp_path / "study.yaml"), "--latency-budget", "1e6", "-o", str(recipe)]) == 0
    assert main(["apply", str(recipe), "-o", str(tmp_path / "compressed"), *data]) == 0
    manifest = json.loads((tmp_path / "compressed" / "autosqueeze.json").read_text())
    assert manifest["measured"]["reproduced"]["metric"] == manifest["measured"]["recorded"]["metric"]
