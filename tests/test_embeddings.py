"""Embedding compression: vocabulary pruning (saved, reloaded, [UNK] for dropped tokens, ONNX)
and int8/int4 embedding tables (bytes counted as stored)."""
from __future__ import annotations

import pytest
import torch

import autosqueeze
from autosqueeze.artifact import load_compressed, save_compressed
from autosqueeze.builder import build
from autosqueeze.measure import model_size
from autosqueeze.methods import MethodContext, MethodError
from autosqueeze.methods.prune_vocab import PrunedVocabEmbedding, decode_kept, encode_kept
from autosqueeze.recipe import Recipe, Step, apply_recipe
from tests import tiny

TRAIN = ["a charming masterpiece", "a bleak journey", "the man is deft", "the trophy is nowhere", "a cat saw a plane"]


def _tokenized_context(teacher, tok, texts=TRAIN, **kw):
    """A context whose training data are ``texts`` tokenized by ``tok`` (and the tokenizer itself)."""
    def batches(n, seed):
        enc = tok(texts, padding=True, return_tensors="pt")
        for _ in range(n):
            yield {**{k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")},
                   "labels": torch.zeros(len(texts), dtype=torch.long)}

    def token_ids():
        for t in texts:
            yield torch.tensor(tok(t)["input_ids"])

    return MethodContext(adapter=tiny.get_adapter(teacher), teacher=teacher, train_batches=batches, tokenizer=tok,
                         train_token_ids=token_ids, **kw)


@pytest.fixture()
def word_model(tiny_model_dir):
    from transformers import AutoTokenizer, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    return model, tok


def _logits(model, tok, texts):
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return model(**enc).logits


def test_pruned_vocabulary_saved_and_loaded_predicts_the_same(word_model, tmp_path):
    teacher, tok = word_model
    recipe = Recipe(steps=[Step("prune_vocab", {}), Step("quantize_embeddings", {}), Step("quantize_dynamic", {})])
    built = build(recipe, teacher, _tokenized_context(teacher, tok))
    dec = built.decisions[0]
    kept = decode_kept(dec["kept_bitmap"], teacher.config.vocab_size)
    train_ids = {i for t in TRAIN for i in tok(t)["input_ids"]}
    assert set(kept.tolist()) == train_ids | set(tok.all_special_ids) and dec["unk_id"] == tok.unk_token_id
    out = save_compressed(built, recipe, tok, teacher.config, tmp_path / "m", {"recorded": {}})
    loaded = autosqueeze.load(out)
    from transformers import AutoTokenizer

    saved_tok = AutoTokenizer.from_pretrained(out)  # the folder's tokenizer: the original ids
    texts = ["a charming journey", "the cat is stuck", "a terrible plane", "the man drank cream"]  # unseen words
    assert tok("the man drank cream")["input_ids"] == saved_tok("the man drank cream")["input_ids"]
    ref = _logits(built.model, tok, texts)
    assert torch.equal(_logits(loaded, saved_tok, texts), ref)
    assert torch.equal(_logits(load_compressed(out), saved_tok, texts), ref)


def test_a_dropped_token_reads_the_unk_row(word_model):
    teacher, tok = word_model
    model, (dec,) = apply_recipe(Recipe(steps=[Step("prune_vocab", {})]), teacher, _tokenized_context(teacher, tok))
    dropped = tok.convert_tokens_to_ids("cream")  # in the vocabulary, not in the training data
    assert dropped != tok.unk_token_id and tok.convert_ids_to_tokens(dropped) == "cream"
    kept = decode_kept(dec["kept_bitmap"], teacher.config.vocab_size)
    assert dropped not in kept.tolist()
    enc = tok(["the man drank cream", "a charming masterpiece"], padding=True, return_tensors="pt")
    as_unk = {**enc, "input_ids": torch.where(torch.isin(enc["input_ids"], kept), enc["input_ids"], tok.unk_token_id)}
    assert (as_unk["input_ids"] != enc["input_ids"]).sum() == 2  # "drank" and "cream"
    with torch.inference_mode():
        assert torch.allclose(model(**enc).logits, teacher(**as_unk).logits, atol=1e-6)
        assert torch.allclose(model(**as_unk).logits, teacher(**as_unk).logits, atol=1e-6)


def test_unk_id_and_order_are_checked(word_model):
    teacher, tok = word_model
    with pytest.raises(MethodError, match="not the tokenizer's"):
        apply_recipe(Recipe(steps=[Step("prune_vocab", {"unk_token_id": 2})]), teacher,
                     _tokenized_context(teacher, tok))
    plain = tiny.tiny_bert()
    with pytest.raises(MethodError, match="needs the \\[UNK\\] token id"):
        apply_recipe(Recipe(steps=[Step("prune_vocab", {"scan_batches": 1})]), plain, tiny.context(plain))
    with pytest.raises(MethodError, match="already pruned"):
        apply_recipe(Recipe(steps=[Step("prune_vocab", {"unk_token_id": 1, "scan_batches": 1})] * 2), plain,
                     tiny.context(plain))
    with pytest.raises(MethodError, match="PrunedVocabEmbedding"):  # decompose the embeddings first
        apply_recipe(Recipe(steps=[Step("prune_vocab", {"unk_token_id": 1, "scan_batches": 1}),
                                   Step("decompose_svd", {"embedding_rank": 4})]), plain, tiny.context(plain))
    with pytest.raises(MethodError, match="already quantized"):
        apply_recipe(Recipe(steps=[Step("cast_precision", {"parts": ["embeddings"]}), Step("quantize_embeddings", {})]),
                     plain, tiny.context(plain))


def test_replay_probe_and_a_factorized_table():
    teacher = tiny.tiny_bert()
    recipe = Recipe(steps=[Step("decompose_svd", {"embedding_rank": 8}),
                           Step("prune_vocab", {"unk_token_id": 1, "scan_batches": 2})])
    model, dec = apply_recipe(recipe, teacher, tiny.context(teacher))
    emb = model.bert.embeddings.word_embeddings
    assert isinstance(emb, PrunedVocabEmbedding) and emb.inner.embed.num_embeddings == dec[1]["kept"] < 120
    again, _ = apply_recipe(recipe, teacher, tiny.context(teacher, replay=True), dec)
    again.load_state_dict(model.state_dict(), strict=True)
    b = tiny.batch()
    assert torch.equal(tiny.logits(again, b), tiny.logits(model, b))
    probe, pdec = apply_recipe(recipe, teacher, tiny.context(teacher, probe=True))
    assert probe.bert.embeddings.word_embeddings.inner.embed.num_embeddings == 120 and pdec[1] == {"probe": True}
    with pytest.raises(MethodError, match="another vocabulary"):
        apply_recipe(recipe, teacher, tiny.context(teacher, replay=True), [dec[0], {**dec[1], "vocab_size": 99}])


def test_kept_bitmap_round_trip():
    kept = torch.tensor([0, 3, 7, 8, 100, 30521])
    text = encode_kept(kept, 30522)
    assert len(text) < 5200 and torch.equal(decode_kept(text, 30522), kept)


@pytest.mark.parametrize("bits", [8, 4])
def test_embedding_bytes_as_stored(bits):
    """int8 word table: a quarter of its fp32 bytes plus one fp32 scale per row; int4: an eighth."""
    teacher = tiny.tiny_bert(hidden=64)
    model, _ = apply_recipe(Recipe(steps=[Step("quantize_embeddings", {"bits": bits})]), teacher, tiny.context(teacher))
    v, h = teacher.bert.embeddings.word_embeddings.weight.shape
    s_t, s_m = model_size(teacher), model_size(model)
    table = s_t.embedding_bytes - s_m.embedding_bytes
    assert table == 4 * v * h - (v * h * bits // 8 + 4 * v)
    assert s_m.embedding_bytes == s_t.embedding_bytes - 4 * v * h + v * h * bits // 8 + 4 * v
    assert (v * h * bits // 8 + 4 * v) / (4 * v * h) <= bits / 32 + 1 / h
    # pruned + int8: kept rows at one byte, their scales, and the int32 id map
    recipe = Recipe(steps=[Step("prune_vocab", {"unk_token_id": 1, "scan_batches": 2}),
                           Step("quantize_embeddings", {"bits": bits})])
    both, dec = apply_recipe(recipe, teacher, tiny.context(teacher))
    k = dec[0]["kept"]
    assert s_t.embedding_bytes - model_size(both).embedding_bytes == 4 * v * h - (k * h * bits // 8 + 4 * k + 4 * v)


def test_pruned_and_quantized_embeddings_export_to_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    from autosqueeze.runtimes.onnx_export import export_for_deployment

    teacher = tiny.tiny_bert(attn="sdpa")
    recipe = Recipe(steps=[Step("prune_vocab", {"unk_token_id": 1, "scan_batches": 2}),
                           Step("quantize_embeddings", {"bits": 4}), Step("quantize_dynamic", {})])
    built = build(recipe, teacher, tiny.context(teacher))
    info = export_for_deployment(built.model, tmp_path / "m.onnx", float_model=built.float_model, recipe=recipe)
    assert info.quantized and info.max_abs_diff < 1e-4


def _other_families():
    from tests.test_early_exit import _other_families as families

    return families()


@pytest.mark.parametrize("teacher", _other_families(), ids=["distilbert", "roberta", "electra"])
def test_other_families(teacher):
    teacher.eval()
    recipe = Recipe(steps=[Step("prune_vocab", {"unk_token_id": 3, "scan_batches": 2}),
                           Step("quantize_embeddings", {"tables": "all"})])
    float_model, (dec,) = apply_recipe(Recipe(steps=recipe.steps[:1]), teacher, tiny.context(teacher))
    model, _ = apply_recipe(recipe, teacher, tiny.context(teacher))
    kept = decode_kept(dec["kept_bitmap"], tiny.VOCAB)
    b = tiny.batch()
    b["input_ids"] = kept[b["input_ids"] % kept.numel()]  # kept tokens only: the float model is exact
    assert torch.allclose(tiny.logits(float_model, b), tiny.logits(teacher, b), atol=1e-5)
    assert torch.allclose(tiny.logits(model, b), tiny.logits(teacher, b), atol=0.05)
    assert model_size(model).embedding_bytes < 0.5 * model_size(teacher).embedding_bytes
