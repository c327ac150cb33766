"""Every categorical choice tried at least once.

TPE models a categorical parameter by the values its trials took. A value that the random start
never drew is then almost never proposed, and a whole region of the space goes unexplored. An
optional step left off in all five startup trials is a 1-in-32 draw; that is how the first MPNet
headline search ran 200 trials without one int8 trial. So before each trial, any value of a
categorical parameter that no trial has taken yet is enqueued: the next trial takes it, and the
sampler chooses the rest. Trials of every state count, and so do the values enqueued earlier,
even where the trial never asked for that parameter. So each value is enqueued at most once per
study.
"""
from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution


def untried_choices(trials: list[optuna.trial.FrozenTrial]) -> list[dict[str, Any]]:
    """``{name: value}`` for each value of a categorical parameter (as the trials declared it) that no
    trial took or was enqueued with, in the order the parameters first appeared and their choices are listed."""
    choices: dict[str, tuple[Any, ...]] = {}
    seen: dict[str, list[Any]] = {}
    for t in trials:
        for name, dist in t.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                choices.setdefault(name, dist.choices)
        for name, value in {**(t.system_attrs.get("fixed_params") or {}), **t.params}.items():
            seen.setdefault(name, []).append(value)
    return [{name: value} for name, values in choices.items() for value in values if value not in seen.get(name, [])]


def enqueue_untried_choices(study: optuna.Study) -> list[dict[str, Any]]:
    """Enqueue one trial for each categorical value no trial has taken yet; returns what was enqueued."""
    todo = untried_choices(study.get_trials(deepcopy=False))
    for params in todo:
        study.enqueue_trial(params, skip_if_exists=True)
    return todo
