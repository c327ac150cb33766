"""Bad arguments, study files, recipes and output paths: one line on stderr, exit 2, nothing touched.

Each class of bad input is one parametrized test; the cases are examples of the class, so a
new case is one more line. Everything runs in-process on the tiny local model (no training).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.bad_inputs_helpers import make_db, run_bad, study_dict, write_study

pytestmark = pytest.mark.bad_input  # `python -m pytest -m bad_input` runs this set

# --- arguments: refused by the parser before anything is read -----------------------------

BAD_ARGS = [
    (["bench", "M", "--threads", "0"], "--threads"),
    (["bench", "M", "--threads", "1.5"], "--threads"),
    (["bench", "M", "--repeats", "2"], "--repeats"),
    (["search", "S", "--trials", "-3"], "--trials"),
    (["search", "S", "--trials", "0"], "--trials"),
    (["search", "S", "--trials", "true"], "--trials"),
    (["search", "S", "--latency-budget", "0"], "--latency-budget"),
    (["search", "S", "--latency-budget", "-1"], "--latency-budget"),
    (["search", "S", "--latency-budget", "nan"], "--latency-budget"),
    (["search", "S", "--latency-budget", "inf"], "--latency-budget"),
    (["export", "S", "-o", "r.yaml", "--latency-budget", "0"], "--latency-budget"),
    (["export", "S", "-o", "r.yaml", "--min-speedup", "-2"], "--min-speedup"),
    (["export", "S", "-o", "r.yaml", "--trial", "-1"], "--trial"),
    (["finetune", "--task", "nope", "--out", "T"], "unknown GLUE task 'nope'"),
    (["finetune", "--task", "sst2", "--out", "T", "--max-steps", "-1"], "--max-steps"),
    (["finetune", "--task", "sst2", "--out", "T", "--lr", "0"], "--lr"),
    (["finetune", "--task", "sst2", "--out", "T", "--batch-size", "0"], "--batch-size"),
    (["finetune", "--task", "sst2", "--out", "T", "--seed", "-1"], "--seed"),  # NumPy refuses it mid-training
    (["finetune", "--task", "sst2", "--out", "T", "--seed", str(2**40)], "--seed"),
    (["search", "S", "--no-such-flag"], "unrecognized arguments"),
    (["squeeze"], "invalid choice"),
]


@pytest.mark.parametrize(("argv", "says"), BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_bad_arguments_are_refused_before_any_work(argv, says, tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = write_study(tmp_path, tiny_model_dir)
    db = make_db(study)
    argv = [{"S": str(study), "M": str(tiny_model_dir), "T": str(tmp_path / "teacher")}.get(a, a) for a in argv]
    run_bad(capsys, tmp_path, argv, says)
    assert db.is_file()


# --- study files: validated at the edge, the study database untouched ----------------------

BAD_STUDY = [
    ("trials: true", {"trials": True}, "'trials'"),
    ("trials: -3", {"trials": -3}, "'trials'"),
    ("trials: 2.5", {"trials": 2.5}, "'trials'"),
    ("seed: text", {"seed": "zero"}, "'seed'"),
    ("seed: -1", {"seed": -1}, "'seed' must be a whole number from 0"),
    ("teacher.seed: -1", {"teacher": {"seed": -1}}, "seed must be a whole number from 0"),
    ("threads: 1.5", {"hardware": {"seq_len": 16, "threads": 1.5}}, "'threads'"),
    ("threads: 0", {"hardware": {"seq_len": 16, "threads": 0}}, "threads"),
    ("threads: text", {"hardware": {"threads": "two"}}, "'threads'"),
    ("teacher.steps: true", {"teacher": {"steps": True}}, "'steps'"),
    ("eval.batch_size: text", {"eval": {"batch_size": "big"}}, "'batch_size'"),
    ("budget 0", {"latency_budget_ms": 0}, "'latency_budget_ms'"),
    ("budget -1", {"latency_budget_ms": -1}, "'latency_budget_ms'"),
    ("budget text", {"latency_budget_ms": "fast"}, "'latency_budget_ms'"),
    ("budget true", {"latency_budget_ms": True}, "'latency_budget_ms'"),
    ("unknown key", {"trails": 3}, "unknown key"),
    ("unknown task", {"task": "nope"}, "'task'"),
    ("sampler", {"sampler": "grid"}, "'sampler'"),
    ("section not a mapping", {"hardware": [1, 2]}, "'hardware'"),
    ("missing space", {"search_space": "nowhere.yaml"}, "nowhere.yaml"),
]


@pytest.mark.parametrize(("name", "change", "says"), BAD_STUDY, ids=[c[0] for c in BAD_STUDY])
def test_bad_study_values_stop_search_export_report(name, change, says, tiny_model_dir, tmp_path, capsys):
    study = write_study(tmp_path, tiny_model_dir)
    make_db(study)
    study.write_text(yaml.safe_dump({**study_dict(tiny_model_dir), **change}))
    export = ["export", str(study), "-o", str(tmp_path / "r.yaml")]
    for argv in (["search", str(study)], ["report", str(study)], export):
        line = run_bad(capsys, tmp_path, argv, says)
        assert str(study) in line


BAD_STUDY_TEXT = [
    ("yaml: unclosed bracket", "name: [unclosed\n", "not valid YAML"),
    ("yaml: bad indent", "name: t\n  task: sst2\n task: x\n", "not valid YAML"),
    ("yaml: tab indent", "name: t\n\ttask: sst2\n", "not valid YAML"),
    ("not a mapping", "- a\n- b\n", "mapping"),
    ("empty", "", "mapping"),
    ("not UTF-8", b"name: \xff\xfe t\n", "UTF-8"),
]


@pytest.mark.parametrize(("name", "text", "says"), BAD_STUDY_TEXT, ids=[c[0] for c in BAD_STUDY_TEXT])
def test_unreadable_study_files_are_one_line(name, text, says, tiny_model_dir, tmp_path, capsys):
    study = write_study(tmp_path, tiny_model_dir)
    make_db(study)
    if isinstance(text, bytes):
        study.write_bytes(text)
    else:
        study.write_text(text)
    run_bad(capsys, tmp_path, ["search", str(study)], says, str(study))


def test_a_missing_study_file_is_one_line(tmp_path, capsys):
    run_bad(capsys, tmp_path, ["search", str(tmp_path / "nope.yaml")], "does not exist")


# --- recipes given to apply ---------------------------------------------------------------

GOOD_STEP = {"method": "drop_layers", "version": 1, "params": {"keep": 1}}
BAD_RECIPES = [
    ("version text", {"steps": [{**GOOD_STEP, "version": "one"}]}, "'version'"),
    ("version float", {"steps": [{**GOOD_STEP, "version": 1.5}]}, "'version'"),
    ("version newer", {"steps": [{**GOOD_STEP, "version": 99}]}, "version 99"),
    ("seed text", {"steps": [GOOD_STEP], "seed": "zero"}, "'seed'"),
    ("seed float", {"steps": [GOOD_STEP], "seed": 0.5}, "'seed'"),
    ("seed -1", {"steps": [GOOD_STEP], "seed": -1}, "'seed' must be a whole number from 0"),
    ("keep: three", {"steps": [{**GOOD_STEP, "params": {"keep": "three"}}]}, "'keep'"),
    ("keep: 1.5", {"steps": [{**GOOD_STEP, "params": {"keep": 1.5}}]}, "'keep'"),
    ("unknown method", {"steps": [{"method": "nope", "params": {}}]}, "unknown method 'nope'"),
    ("unknown param", {"steps": [{**GOOD_STEP, "params": {"kep": 1}}]}, "kep"),
    ("steps not a list", {"steps": {"method": "drop_layers"}}, "'steps'"),
    ("step not a mapping", {"steps": ["drop_layers"]}, "step 1"),
    ("profile not a mapping", {"steps": [GOOD_STEP], "profile": "fast"}, "'profile'"),
    ("profile threads 1.5", {"steps": [GOOD_STEP], "profile": {"threads": 1.5}}, "'threads'"),
    ("profile threads 0", {"steps": [GOOD_STEP], "profile": {"threads": 0}}, "threads"),
    ("latency repeats text", {"steps": [GOOD_STEP], "data": {"latency": {"repeats": "many"}}}, "'repeats'"),
    ("unknown key", {"steps": [GOOD_STEP], "colour": "red"}, "unknown key"),
    ("format", {"steps": [GOOD_STEP], "format": 7}, "format 7"),
    ("eval_batch_size text", {"steps": [GOOD_STEP], "data": {"eval_batch_size": "big"}}, "data.eval_batch_size"),
    ("dev_subset 0", {"steps": [GOOD_STEP], "data": {"dev_subset": 0}}, "data.dev_subset"),
]


@pytest.mark.parametrize(("name", "recipe", "says"), BAD_RECIPES, ids=[c[0] for c in BAD_RECIPES])
def test_bad_recipes_are_refused_by_apply(name, recipe, says, tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_bad(capsys, tmp_path, ["apply", str(path), "-o", str(tmp_path / "out")], says, str(path))


UNFIT_RECIPES = [  # valid on their own; the 3-layer, 4-head base model cannot take them
    ("more layers than the model", [{"method": "drop_layers", "params": {"keep": 9}}], "only 3 layers"),
    ("more heads than the model", [{"method": "prune_structured", "params": {"heads_keep": 9}}], "heads_keep=9"),
    ("another [UNK] id", [{"method": "prune_vocab", "params": {"unk_token_id": 3}}], "unk_token_id 3"),
]


@pytest.mark.parametrize(("name", "steps", "says"), UNFIT_RECIPES, ids=[c[0] for c in UNFIT_RECIPES])
def test_apply_refuses_a_recipe_its_base_model_cannot_take_before_training_a_teacher(
        name, steps, says, tiny_model_dir, glue_dir, tmp_path, capsys, isolated_cache, monkeypatch):
    from autosqueeze import teacher

    def no_training(*args, **kwargs):
        raise AssertionError("a teacher was trained for a recipe that cannot be applied")

    monkeypatch.setattr(teacher, "train_teacher", no_training)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"steps": steps, "base_model": str(tiny_model_dir)}))
    run_bad(capsys, tmp_path, ["apply", str(path), "-o", str(tmp_path / "out"), "--data-dir", str(glue_dir)],
            str(path), "cannot be applied to its base model", says)


@pytest.mark.parametrize(("name", "text"), [("unclosed", "steps: [\n"), ("tabs", "steps:\n\t- a\n"),
                                            ("binary", b"\x89PNG\r\n\x1a\n\x00\xff"), ("scalar", "42\n")])
def test_unreadable_recipe_files_are_one_line(name, text, tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    run_bad(capsys, tmp_path, ["apply", str(path), "-o", str(tmp_path / "out")], str(path))


# --- output paths: checked first, never deleted without being asked ------------------------

def _existing(tmp_path: Path, kind: str) -> Path:
    """An output path that must not be used: a non-empty folder of the user's, a file, a path below a file."""
    if kind == "non-empty folder":
        folder = tmp_path / "mine"
        (folder / "sub").mkdir(parents=True)
        (folder / "notes.txt").write_text("my work\n")
        (folder / "sub" / "data.bin").write_bytes(b"\x00\x01")
        return folder
    if kind == "a file":
        f = tmp_path / "file.txt"
        f.write_text("keep me\n")
        return f
    f = tmp_path / "plain.txt"
    f.write_text("x\n")
    return f / "below"


@pytest.mark.parametrize("kind", ["non-empty folder", "a file", "below a file"])
def test_finetune_out_is_checked_before_training_and_never_emptied(kind, tiny_model_dir, glue_dir, tmp_path, capsys):
    out = _existing(tmp_path, kind)
    run_bad(capsys, tmp_path, ["finetune", "--task", "sst2", "--model", str(tiny_model_dir), "--data-dir",
                               str(glue_dir), "--out", str(out), "--max-steps", "1"], "--out")


def test_finetune_out_refuses_the_working_folder_even_with_overwrite(tiny_model_dir, glue_dir, tmp_path, capsys,
                                                                    monkeypatch):
    here = _existing(tmp_path, "non-empty folder")
    monkeypatch.chdir(here)
    for out in (".", str(tmp_path)):
        run_bad(capsys, tmp_path, ["finetune", "--task", "sst2", "--model", str(tiny_model_dir), "--data-dir",
                                   str(glue_dir), "--out", out, "--overwrite"], "refusing to replace")


@pytest.mark.parametrize("kind", ["non-empty folder", "a file", "below a file"])
def test_apply_output_is_checked_before_the_rebuild(kind, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"steps": [GOOD_STEP]}))
    run_bad(capsys, tmp_path, ["apply", str(recipe), "-o", str(_existing(tmp_path, kind))], "-o")


@pytest.mark.parametrize("kind", ["existing folder", "below a file"])
def test_export_output_is_checked_and_leaves_no_temporary_file(kind, tiny_model_dir, tmp_path, capsys):
    study = write_study(tmp_path, tiny_model_dir)
    make_db(study)
    out = _existing(tmp_path, "non-empty folder") if kind == "existing folder" else _existing(tmp_path, kind)
    run_bad(capsys, tmp_path, ["export", str(study), "-o", str(out)], "-o", str(out))


def test_report_out_onto_a_file_is_refused(tiny_model_dir, tmp_path, capsys):
    study = write_study(tmp_path, tiny_model_dir)
    make_db(study)
    run_bad(capsys, tmp_path, ["report", str(study), "--out", str(_existing(tmp_path, "a file"))], "--out")


@pytest.mark.parametrize("held", ["files of the user", "another study's report"])
def test_report_never_overwrites_what_it_did_not_write(held, tiny_model_dir, tmp_path, capsys):
    """Without --out the report goes to report/ beside the study: that folder too is refused when it holds
    something else than this study's earlier report, and --overwrite replaces only the report's own files."""
    from autosqueeze.cli import main
    from tests.bad_inputs_helpers import snapshot

    study = write_study(tmp_path, tiny_model_dir)
    make_db(study)
    folder = tmp_path / "report"
    folder.mkdir()
    if held == "files of the user":
        (folder / "report.html").write_text("<p>my notes</p>")
    else:  # a second study file in the same folder shares report/
        (folder / "effectiveness.md").write_text("# autosqueeze study other\n\n- model m, study file /x/other.yaml\n")
    (folder / "keep.txt").write_text("keep me")
    run_bad(capsys, tmp_path, ["report", str(study)], str(folder), "--overwrite")
    run_bad(capsys, tmp_path, ["report", str(study), "--out", str(folder)], str(folder), "--overwrite")
    assert main(["report", str(study), "--overwrite"]) == 0
    assert (folder / "keep.txt").read_text() == "keep me" and "study file" in (folder / "effectiveness.md").read_text()
    before = snapshot(folder)
    assert main(["report", str(study)]) == 0  # its own earlier report: rewritten without asking
    assert snapshot(folder).keys() == before.keys() and (folder / "keep.txt").read_text() == "keep me"
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_a_bug_is_one_line_and_verbose_shows_its_traceback(tmp_path, capsys, monkeypatch):
    from autosqueeze import cli

    def broken(args):
        raise KeyError("internal")

    monkeypatch.setattr(cli, "cmd_report", broken)
    study = tmp_path / "s.yaml"
    assert cli.main(["report", str(study)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "internal error" in err[0] and "--verbose" in err[0]
    with pytest.raises(KeyError):
        cli.main(["report", str(study), "--verbose"])


# --- a search whose trials keep failing -------------------------------------------------

def test_a_search_whose_trials_keep_failing_stops_in_one_line(tiny_model_dir, glue_dir, tmp_path, capsys,
                                                             isolated_cache, monkeypatch):
    from autosqueeze.cli import main
    from autosqueeze.search import objective
    from autosqueeze.search import study as study_module

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    def no_references(sc):  # what a trial is compared with does not matter here: every trial fails
        point = {"metric": 0.5, "metrics": {sc.main_metric: 0.5}, "dev_examples": len(sc.data.dev)}
        return {"teacher": point, "int8_baseline": {**point, "runtime": "torch"}}

    monkeypatch.setattr(objective, "evaluate_recipe", broken)
    monkeypatch.setattr(study_module, "reference_points", no_references)  # the fingerprint test runs the real ones
    study = write_study(tmp_path, tiny_model_dir, trials=2)
    rc = main(["search", str(study), "--data-dir", str(glue_dir)])
    out, err = capsys.readouterr()
    last = err.strip().splitlines()[-1]  # before it: the teacher's progress bar
    assert rc == 2 and "Traceback" not in err
    assert last.startswith("autosqueeze search: error: study 't': 5 trials in a row failed (trials 0, 1, 2, 3, 4)")
    assert "out of memory (simulated)" in last and "run the same command to continue" in last
    assert out.count("failed: RuntimeError: out of memory (simulated)") == 5  # each trial said why as it ended
