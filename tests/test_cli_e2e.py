"""The six commands in order, on a tiny local BERT and fixture GLUE data (seconds, no downloads)."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from autosqueeze.cli import main
from autosqueeze.tasks import TASKS

FAST_LATENCY = {"warmup": 1, "repeats": 3, "min_time_s": 0.0, "idle_wait_s": 0.0}


def write_study(folder: Path, model: Path, task: str = "sst2", trials: int = 3, **extra) -> Path:
    space = folder / "space.yaml"
    space.write_text(yaml.safe_dump({"steps": [
        {"method": "drop_layers", "optional": True, "params": {"keep": {"type": "int", "low": 1, "high": 2}}},
        {"method": "distill", "requires_any": ["drop_layers"], "params": {"steps": 2}},
        {"method": "quantize_dynamic", "optional": True},
    ]}))
    study = {"name": "t", "task": task, "model": str(model), "search_space": "space.yaml", "trials": trials,
             "sampler": "random", "teacher": {"steps": 3, "batch_size": 4, "max_seq_len": 16},
             "recovery": {"batch_size": 4, "max_seq_len": 16},
             "hardware": {"seq_len": 16}, "latency": FAST_LATENCY, **extra}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


@pytest.mark.parametrize("task", sorted(TASKS))
def test_finetune_every_glue_layout(task, tiny_model_dir, glue_dir, tmp_path, isolated_cache, capsys):
    out = tmp_path / "teacher"
    rc = main(["finetune", "--task", task, "--model", str(tiny_model_dir), "--data-dir", str(glue_dir),
               "--out", str(out), "--max-steps", "2", "--batch-size", "2", "--max-seq-len", "16"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    spec = TASKS[task]
    expected = set(spec.metric_names) | {f"{m}_{s.replace('dev_', '')}" for s in spec.dev_splits[1:]
                                         for m in spec.metric_names}
    assert set(metrics) == expected
    assert (out / "model.safetensors").is_file()


def test_six_commands_in_order(tiny_model_dir, glue_dir, tmp_path, isolated_cache, capsys):
    study = write_study(tmp_path, tiny_model_dir)
    data = ["--data-dir", str(glue_dir)]
    assert main(["search", str(study), *data]) == 0
    db = tmp_path / "t.db"
    assert db.is_file()
    s = optuna.load_study(study_name="t", storage=f"sqlite:///{db}")
    done = [t for t in s.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert all(len(t.values) == 2 for t in done)
    assert sum("duplicate_of" not in t.user_attrs for t in done) == 3  # a repeated recipe is not a new trial
    teachers = list((isolated_cache / "teachers").iterdir())
    assert len(teachers) == 1  # trained once
    mtime = (teachers[0] / "model.safetensors").stat().st_mtime
    # resumable: asking for more trials continues the same study, reusing the cached teacher
    assert main(["search", str(study), *data, "--trials", "4"]) == 0
    assert sum("duplicate_of" not in t.user_attrs
               for t in optuna.load_study(study_name="t", storage=f"sqlite:///{db}").trials) == 4
    assert (teachers[0] / "model.safetensors").stat().st_mtime == mtime
    assert main(["report", str(study)]) == 0
    html = (tmp_path / "report" / "report.html").read_text()
    assert "plotly" in html.lower() and "Pareto front" in html
    recipe = tmp_path / "recipe.yaml"
    assert main(["export", str(study), "--latency-budget", "1e6", "-o", str(recipe)]) == 0
    assert main(["apply", str(recipe), "-o", str(tmp_path / "compressed"), *data]) == 0
    out = capsys.readouterr().out
    manifest = json.loads((tmp_path / "compressed" / "autosqueeze.json").read_text())
    recorded, reproduced = manifest["measured"]["recorded"], manifest["measured"]["reproduced"]
    assert reproduced["metric"] == recorded["metric"]
    assert reproduced["metrics"] == recorded["metrics"]
    assert "reproduced" in out
    # the saved model loads back on its own and predicts like the rebuilt one
    import autosqueeze

    model = autosqueeze.load(tmp_path / "compressed")
    ids = torch.randint(5, model.config.vocab_size, (2, 8))
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert logits.shape == (2, 2)


def test_bad_inputs_fail_in_one_line_without_touching_the_db(tiny_model_dir, glue_dir, tmp_path, isolated_cache,
                                                             capsys):
    study = write_study(tmp_path, tiny_model_dir, trials=1)
    assert main(["search", str(study), "--data-dir", str(glue_dir)]) == 0
    db = tmp_path / "t.db"
    before = sqlite3.connect(db).execute("select count(*) from trials").fetchone()

    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: [unclosed\n")
    assert main(["search", str(bad_yaml)]) == 2
    bad_method = tmp_path / "r.yaml"
    bad_method.write_text(yaml.safe_dump({"steps": [{"method": "nope", "params": {}}]}))
    assert main(["apply", str(bad_method), "-o", str(tmp_path / "x")]) == 2
    assert main(["search", str(study), "--data-dir", str(tmp_path / "missing"), "--trials", "2"]) == 2
    assert main(["export", str(study), "--latency-budget", "1e-6", "-o", str(tmp_path / "r2.yaml")]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 4, err
    assert "not valid YAML" in lines[0] and "unknown method 'nope'" in lines[1]
    assert str(tmp_path / "missing") in lines[2] and "no Pareto trial meets the budget" in lines[3]
    assert not (tmp_path / "r2.yaml").exists() and not (tmp_path / "x").exists()
    after = sqlite3.connect(db).execute("select count(*) from trials").fetchone()
    assert before == after
    assert main(["report", str(study)]) == 0  # the study is still readable


def test_bench_times_saved_models_against_the_first(tiny_model_dir, capsys):
    assert main(["bench", str(tiny_model_dir), str(tiny_model_dir), "--seq-len", "16", "--repeats", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if line.startswith(str(tiny_model_dir)[-40:])]
    assert len(rows) == 2 and rows[0].split()[4] == "1.00x"
    assert [r.split()[1] for r in rows] == ["torch", "torch"]  # the runtime each was timed in
