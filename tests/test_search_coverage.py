"""Every categorical value tried once: after TPE's random start, a value of a categorical parameter
that no trial took (an optional step always off) is enqueued once, and the next trial takes it."""
from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution

from autosqueeze.search.coverage import enqueue_untried_choices, untried_choices

ON = CategoricalDistribution([True, False])
RUNTIME = CategoricalDistribution(["torch", "onnxruntime"])
LAYERS = IntDistribution(1, 4)


def study_with(*params: dict) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for p in params:
        dists = {k: {"q.on": ON, "runtime": RUNTIME, "layers": LAYERS}[k] for k in p}
        study.add_trial(optuna.trial.create_trial(params=p, distributions=dists, values=[0.5, 1.0]))
    return study


def test_untried_values_are_found_in_the_order_declared():
    study = study_with({"q.on": False, "layers": 2}, {"q.on": False, "runtime": "torch", "layers": 3})
    assert untried_choices(study.get_trials()) == [{"q.on": True}, {"runtime": "onnxruntime"}]
    assert untried_choices(study_with({"q.on": True}, {"q.on": False}).get_trials()) == []  # all taken
    assert untried_choices(study_with({"layers": 1}).get_trials()) == []  # numeric ranges are the sampler's


def test_each_value_is_enqueued_once_and_the_next_trial_takes_it():
    study = study_with(*[{"q.on": False, "layers": n} for n in range(1, 5)])
    assert enqueue_untried_choices(study) == [{"q.on": True}]
    assert enqueue_untried_choices(study) == []  # waiting: not enqueued again
    trial = study.ask()
    assert trial.suggest_categorical("q.on", [True, False]) is True
    assert 1 <= trial.suggest_int("layers", 1, 4) <= 4  # the rest is the sampler's
    study.tell(trial, [0.4, 0.5])
    assert enqueue_untried_choices(study) == []


def test_a_value_enqueued_but_never_asked_for_is_not_enqueued_again():
    study = study_with({"q.on": False, "runtime": "torch"})
    assert enqueue_untried_choices(study) == [{"q.on": True}, {"runtime": "onnxruntime"}]
    for _ in range(2):  # trials that never ask for "runtime" (a step without a runtime choice)
        trial = study.ask()
        trial.suggest_categorical("q.on", [True, False])
        study.tell(trial, [0.4, 0.5])
    assert enqueue_untried_choices(study) == []
