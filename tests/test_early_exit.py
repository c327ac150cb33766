"""Early exit: exit rules, layers really skipped, stats, replay, other families, composition."""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_model, save_model
from transformers import (
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from autosqueeze.measure import HardwareProfile, LatencySettings, measure_latency
from autosqueeze.methods import MethodError, get_method
from autosqueeze.methods.early_exit import exit_stats, needs_real_inputs, reset_exit_stats
from autosqueeze.recipe import Recipe, Step, apply_recipe
from tests import tiny


def _exit(teacher, ctx=None, decisions=None, **params):
    recipe = Recipe([Step("early_exit", {"steps": 0, **params})])
    model, dec = apply_recipe(recipe, teacher, ctx or tiny.context(teacher), decisions)
    return model, dec[0]


def _count_layer_calls(model) -> list[int]:
    calls = [0] * len(model.bert.encoder.layer)
    for i, layer in enumerate(model.bert.encoder.layer):
        layer.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


def _set_head(head, logits: list[float]) -> None:
    """Make an exit head predict constant ``logits`` whatever its input."""
    with torch.no_grad():
        head.out.weight.zero_()
        head.out.bias.copy_(torch.tensor(logits))


@pytest.mark.parametrize("params, match", [
    ({"threshold": 1.5}, "threshold"), ({"threshold": -0.1}, "threshold"), ({"rule": "confidence"}, "rule"),
    ({"patience": 0}, "patience"), ({"steps": -1}, "steps"), ({"lr": 0.0}, "lr"),
])
def test_config_validation(params, match):
    with pytest.raises(MethodError, match=match):
        get_method("early_exit").make_config(params)


def test_threshold_zero_is_the_base_model():
    teacher = tiny.tiny_bert()
    model, _ = _exit(teacher, threshold=0.0)
    calls = _count_layer_calls(model)
    b = tiny.batch()
    assert torch.equal(tiny.logits(model, b), tiny.logits(teacher, b))
    assert calls == [1, 1, 1, 1]
    assert exit_stats(model)["mean_exit_layer"] == 4


def test_threshold_one_runs_only_the_first_layer():
    teacher = tiny.tiny_bert()
    model, _ = _exit(teacher, threshold=1.0)
    calls = _count_layer_calls(model)
    classifier_calls = []
    model.classifier.register_forward_hook(lambda *_: classifier_calls.append(1))
    out = tiny.logits(model, tiny.batch())
    assert calls == [1, 0, 0, 0]  # layers 2..4 were never executed
    assert not classifier_calls
    assert torch.equal(out, tiny.logits(model, tiny.batch()))  # deterministic
    assert out.shape == (4, 2)


def test_entropy_rule_exits_at_the_first_confident_layer():
    model, _ = _exit(tiny.tiny_bert(), threshold=0.5)
    heads = model.autosqueeze_exit.heads
    _set_head(heads[0], [0.0, 0.0])  # uniform: normalised entropy 1 → stays
    _set_head(heads[1], [8.0, -8.0])  # confident → leaves after layer 2
    _set_head(heads[2], [-8.0, 8.0])
    calls = _count_layer_calls(model)
    out = tiny.logits(model, tiny.batch())
    assert calls == [1, 1, 0, 0]
    assert torch.allclose(out, torch.tensor([[8.0, -8.0]]).expand(4, 2))
    stats = exit_stats(model)
    assert stats["mean_exit_layer"] == 2 and stats["histogram"] == [0, 1, 0, 0]


def test_patience_rule_counts_unchanged_predictions():
    model, _ = _exit(tiny.tiny_bert(layers=6), rule="patience", patience=2)
    heads = model.autosqueeze_exit.heads
    for head, logit in zip(heads, ([0, 1], [1, 0], [1, 0], [1, 0], [0, 1])):
        _set_head(head, [float(v) for v in logit])
    calls = [0] * 6
    for i, layer in enumerate(model.bert.encoder.layer):
        layer.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    out = tiny.logits(model, tiny.batch())
    # heads 1, 2, 3 (layers 2-4) agree on class 0: unchanged twice after layer 2 → exit after layer 4
    assert calls == [1, 1, 1, 1, 0, 0]
    assert (out.argmax(-1) == 0).all()
    assert exit_stats(model)["mean_exit_layer"] == 4


def test_stats_accumulate_and_reset():
    model, _ = _exit(tiny.tiny_bert(), threshold=1.0)
    reset_exit_stats(model)
    for seed in range(3):
        tiny.logits(model, tiny.batch(seed=seed))
    assert model.autosqueeze_exit_stats()["calls"] == 3
    assert model.autosqueeze_exit_stats()["mean_exit_layer"] == 1
    model.autosqueeze_reset_exit_stats()
    assert model.autosqueeze_exit_stats()["calls"] == 0


def test_training_mode_and_hidden_states_use_the_full_depth():
    teacher = tiny.tiny_bert()
    model, _ = _exit(teacher, threshold=1.0)
    reset_exit_stats(model)
    b = {k: v for k, v in tiny.batch().items() if k != "labels"}
    with torch.no_grad():
        out = model(**b, output_hidden_states=True)
    assert len(out.hidden_states) == 5 and torch.equal(out.logits, teacher(**b).logits)
    assert exit_stats(model)["calls"] == 0


def test_heads_are_trained_from_the_final_logits_with_a_frozen_backbone():
    import torch.nn.functional as F

    from autosqueeze.methods.early_exit import EarlyExitConfig, _train_heads, all_layer_outputs

    teacher = tiny.tiny_bert()
    model, dec = _exit(teacher, threshold=0.0, steps=3)
    assert dec["steps_done"] == 3
    for k, v in teacher.state_dict().items():  # backbone and classifier untouched
        assert torch.equal(model.state_dict()[k], v), k
    b = {k: v for k, v in tiny.batch(seed=7).items() if k != "labels"}

    def kl(m):
        with torch.no_grad():
            outs, final = all_layer_outputs(m, tiny.get_adapter(m), b)
            target = F.softmax(final, -1)
            return sum(F.kl_div(F.log_softmax(h(o), -1), target, reduction="batchmean")
                       for h, o in zip(m.autosqueeze_exit.heads, outs)).item()

    torch.manual_seed(1)
    for head in model.autosqueeze_exit.heads:  # start from badly wrong heads
        torch.nn.init.normal_(head.out.weight, std=1.0)
    before = kl(model)
    _train_heads(model, model.autosqueeze_exit, EarlyExitConfig(steps=60, lr=5e-2), tiny.context(teacher))
    assert kl(model) < 0.3 * before
    for k, v in teacher.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_regression_and_double_application_are_refused():
    reg = tiny.tiny_bert(num_labels=1)
    with pytest.raises(MethodError, match="classification only"):
        _exit(reg, ctx=tiny.context(reg, is_regression=True))
    model, _ = _exit(tiny.tiny_bert())
    with pytest.raises(MethodError, match="already has exit heads"):
        _exit(model)


def test_replay_and_safetensors_rebuild_the_same_model(tmp_path):
    teacher = tiny.tiny_bert()
    model, dec = _exit(teacher, threshold=0.4, steps=5)
    save_model(model, str(tmp_path / "m.safetensors"))
    fresh = copy.deepcopy(teacher)
    rebuilt, _ = _exit(fresh, ctx=tiny.context(fresh, replay=True), decisions=[dec], threshold=0.4, steps=5)
    assert len(rebuilt.autosqueeze_exit.heads) == 3
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    b = tiny.batch()
    assert torch.equal(tiny.logits(rebuilt, b), tiny.logits(model, b))
    again, _ = _exit(copy.deepcopy(teacher), ctx=tiny.context(teacher, replay=True), decisions=[dec], threshold=0.4)
    assert load_model(again, str(tmp_path / "m.safetensors"), strict=True) == (set(), [])
    assert torch.equal(tiny.logits(again, b), tiny.logits(model, b))
    reset_exit_stats(model)
    copied = copy.deepcopy(model)  # the instance forward and the stats follow the copy
    assert copied.forward.__self__ is copied
    tiny.logits(copied, b)
    assert exit_stats(model)["calls"] == 0 and exit_stats(copied)["calls"] == 1


def test_probe_builds_the_structure_with_exits_disabled():
    teacher = tiny.tiny_bert()
    model, dec = _exit(teacher, ctx=tiny.context(teacher, probe=True), threshold=1.0, steps=50)
    assert "steps_done" not in dec and len(model.autosqueeze_exit.heads) == 3
    tiny.logits(model, tiny.batch())
    assert exit_stats(model)["mean_exit_layer"] == 4  # worst case: full depth


def _other_families():
    torch.manual_seed(0)
    return [
        DistilBertForSequenceClassification(DistilBertConfig(
            vocab_size=tiny.VOCAB, dim=32, n_layers=3, n_heads=4, hidden_dim=64, max_position_embeddings=64)),
        RobertaForSequenceClassification(RobertaConfig(  # type: ignore[call-arg]
            vocab_size=tiny.VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=70, num_labels=3)),
        ElectraForSequenceClassification(ElectraConfig(
            vocab_size=tiny.VOCAB, embedding_size=16, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=64)),
    ]


@pytest.mark.parametrize("teacher", _other_families(), ids=["distilbert", "roberta", "electra"])
def test_other_families_through_the_adapter(teacher):
    teacher.eval()
    b = tiny.batch()
    never, _ = _exit(teacher, threshold=0.0, steps=2)
    assert torch.equal(tiny.logits(never, b), tiny.logits(teacher, b))
    always, _ = _exit(teacher, threshold=1.0)
    layers = tiny.get_adapter(always).layers(always)
    calls = [0] * len(layers)
    for i, layer in enumerate(layers):
        layer.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    assert tiny.logits(always, b).shape == (4, teacher.config.num_labels)
    assert calls == [1, 0, 0]


def test_composes_with_drop_distill_and_quantization():
    teacher = tiny.tiny_bert()
    recipe = Recipe([Step("drop_layers", {"keep": 3}), Step("distill", {"steps": 2}),
                     Step("early_exit", {"threshold": 0.0, "steps": 2}), Step("quantize_dynamic", {})])
    model, dec = apply_recipe(recipe, teacher, tiny.context(teacher))
    assert len(model.autosqueeze_exit.heads) == 2
    assert isinstance(model.bert.encoder.layer[0].attention.self.query, torch.ao.nn.quantized.dynamic.Linear)
    reset_exit_stats(model)
    assert tiny.logits(model, tiny.batch()).shape == (4, 2)
    assert exit_stats(model)["mean_exit_layer"] == 3


def test_latency_on_real_batches():
    model, _ = _exit(tiny.tiny_bert(), threshold=1.0)
    assert needs_real_inputs(model) and not needs_real_inputs(tiny.tiny_bert())
    batches = [{k: v for k, v in tiny.batch(batch_size=1, seed=s).items() if k != "labels"} for s in range(3)]
    settings = LatencySettings(warmup=1, repeats=3, min_time_s=0.0, idle_wait_s=0.0)
    stats = measure_latency(model, HardwareProfile(threads=1, batch_size=1, seq_len=12), batches, settings=settings)
    assert stats.median_ms > 0
    assert exit_stats(model)["mean_exit_layer"] == 1
