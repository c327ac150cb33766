"""The joint search: space (YAML → trial.suggest_* → Recipe), objective, study driver."""
