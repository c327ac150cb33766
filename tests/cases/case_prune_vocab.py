import torch

from autosqueeze.measure import model_size
from autosqueeze.methods.prune_vocab import PrunedVocabEmbedding, decode_kept
from tests import tiny

# tiny.context's training batches are random ids: 1-2 batches use about half of the 120 tokens
CASES = [{"unk_token_id": 1, "scan_batches": 2}, {"unk_token_id": 100, "scan_batches": 1, "keep_ids": [5, 7]},
         {"unk_token_id": 3, "scan_batches": 4, "min_count": 2}]


def check(teacher, model, config, decisions):
    vocab, hidden = teacher.config.vocab_size, teacher.config.hidden_size
    emb = model.get_input_embeddings()
    kept = decode_kept(decisions["kept_bitmap"], vocab)
    assert isinstance(emb, PrunedVocabEmbedding) and decisions["kept"] == kept.numel() == emb.inner.num_embeddings
    assert 10 < kept.numel() < vocab  # pruned, not emptied
    assert {config.unk_token_id, teacher.config.pad_token_id, *config.keep_ids} <= set(kept.tolist())
    # exactly the training tokens seen min_count times (+ the special ones)
    counts = torch.zeros(vocab, dtype=torch.long)
    for b in tiny.batches(config.scan_batches, seed=3):
        counts += torch.bincount(b["input_ids"][b["attention_mask"].bool()], minlength=vocab)
    want = set(torch.nonzero(counts >= config.min_count).flatten().tolist())
    want |= {config.unk_token_id, teacher.config.pad_token_id, *config.keep_ids}
    assert set(kept.tolist()) == want
    # size: fewer rows, plus the int32 id map; the encoder is unchanged
    s_t, s_m = model_size(teacher), model_size(model)
    assert s_t.embedding_params - s_m.embedding_params == (vocab - kept.numel()) * hidden
    assert s_t.embedding_bytes - s_m.embedding_bytes == 4 * (vocab - kept.numel()) * hidden - 4 * vocab
    assert s_m.non_embedding_bytes == s_t.non_embedding_bytes
    # kept tokens predict exactly as before; any other token reads the [UNK] row
    table = teacher.get_input_embeddings().weight
    ids = torch.arange(vocab)
    rows = emb(ids)
    known = torch.isin(ids, kept)
    assert torch.equal(rows[known], table[known])
    assert torch.equal(rows[~known], table[config.unk_token_id].expand(int((~known).sum()), -1))
    b = tiny.batch()
    g = torch.Generator().manual_seed(0)
    b["input_ids"] = kept[torch.randint(0, kept.numel(), b["input_ids"].shape, generator=g)]
    assert torch.allclose(tiny.logits(model, b), tiny.logits(teacher, b), atol=1e-6)
