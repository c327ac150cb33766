"""studies/joint_elastic/run.py (issue 24, item 4): the search clock and the table on made-up trials,
and the whole script in its ``--smoke`` mode (a tiny model, both arms, resumed with a longer budget)."""
from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from tests.study_scripts import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "studies" / "joint_elastic" / "run.py"


@pytest.fixture(scope="module")
def script():
    return load_script(SCRIPT, "joint_elastic_run")


def _trials(*seconds: float) -> list[SimpleNamespace]:
    start = datetime(2025, 1, 1)
    return [SimpleNamespace(number=i, datetime_start=start, datetime_complete=start + timedelta(seconds=s),
                            user_attrs={}) for i, s in enumerate(seconds)]


def test_the_clock_counts_trial_wall_times_and_stops_once_the_budget_is_reached(script):
    kept, used = script.within_budget(_trials(4, 5, 3, 2), budget_s=10)
    assert [t.number for t in kept] == [0, 1] and used == 9  # the trial that crosses the budget is not scored
    callback = script.stop_at(budget_s=10, used_s=6)
    callback(None, _trials(3)[0])  # 9 s: goes on
    with pytest.raises(script.TimeUp):
        callback(None, _trials(1)[0])  # 10 s: stops


def test_the_hypervolume_is_search_efficiency_s(script):
    assert tuple(script.REFERENCE) == (0.5, 1.0)
    assert script.hypervolume([(0.9, 3.0), (0.8, 5.0)]) == pytest.approx(2 * 0.4 + 2 * 0.3)


def test_the_table_summarizes_each_arm_with_median_and_range(script, tmp_path):
    def row(arm: str, seed: int, hv: float, size: float | None) -> dict:
        near = None if size is None else {"trial": 1, "metric": 0.9, "delta_pts": -0.5, "speedup": 4.0,
                                          "size_pct": size, "size_no_emb_pct": size / 2}
        return {"id": f"{arm}/seed{seed}/10min", "arm": arm, "seed": seed, "minutes": 10.0, "trials": 100,
                "trials_per_hour": 600.0 + seed, "distinct_per_hour": 500.0, "hypervolume": hv,
                "smallest_within_1pt": near, "smallest_no_emb_within_1pt": near, "fastest_within_1pt": near,
                "machine": {"cpu": {"model": "AMD EPYC"}}}

    rows = [row("elastic_int8", s, 1.0 + s, 50.0 + s) for s in range(3)] + \
           [row("joint_elastic", 0, 2.0, 10.0), row("joint_elastic", 1, 3.0, None)]
    script.write_table(tmp_path, rows)
    table = (tmp_path / "table.md").read_text()
    assert "| elastic_int8 | 10 | 3 | 2.0000 [1.0000–3.0000] | 601 [600–602] | 500 [500–500] | 51.0 [50.0–52.0] |" \
        in table
    assert "| joint_elastic | 10 | 2 | 2.5000 [2.0000–3.0000] |" in table and "10.0 [10.0–10.0] (1/2)" in table


def test_final_candidates_are_the_smallest_trial_within_each_threshold(script):
    def rec(n: int, metric: float | None, size: float, feasible: bool = True) -> SimpleNamespace:
        return SimpleNamespace(number=n, metric=metric, feasible=feasible, size_pct={"total": size})

    records = [rec(0, 0.90, 80.0), rec(1, 0.885, 50.0), rec(2, 0.875, 40.0), rec(3, 0.865, 30.0),
               rec(4, 0.80, 10.0), rec(5, 0.89, 5.0, feasible=False), rec(6, None, 1.0), rec(7, 0.876, 40.0)]
    assert script.final_candidates(records, teacher=0.89, within_pts=[3.0, 1.0]) == [1, 3]
    assert script.final_candidates(records, teacher=0.89, within_pts=[1.5, 2.0]) == [7]  # a tie: the more accurate
    assert script.final_candidates(records, teacher=0.95, within_pts=[1.0]) == []
    with pytest.raises(SystemExit, match="--final-within"):
        script.parse_within("1,x")
    with pytest.raises(SystemExit, match="--final-within"):
        script.parse_within("0")
    assert script.parse_within("1,3") == [1.0, 3.0]


def test_the_table_shows_the_final_sizes_and_each_finalized_point(script, tmp_path):
    point = {"trial": 7, "search_metric": 0.87, "metric": 0.885, "search_delta_pts": -2.0, "delta_pts": -0.5,
             "speedup": 4.2, "size_pct": 30.0, "size_no_emb_pct": 12.0, "recipe": "elastic+distill"}
    far = {**point, "trial": 9, "delta_pts": -2.5, "size_pct": 20.0}
    base = {"arm": "joint_elastic", "minutes": 6.0, "trials": 100, "trials_per_hour": 1000.0,
            "distinct_per_hour": 900.0, "hypervolume": 3.0, "smallest_within_1pt": None,
            "smallest_no_emb_within_1pt": None, "fastest_within_1pt": None, "machine": {}}
    rows = [{**base, "id": "joint_elastic/seed0/6min", "seed": 0,
             "final": {"points": [far, point], "smallest_within_1pt": point, "smallest_no_emb_within_1pt": point}},
            {**base, "id": "joint_elastic/seed1/6min", "seed": 1,
             "final": {"points": [far], "smallest_within_1pt": None, "smallest_no_emb_within_1pt": None}}]
    script.write_table(tmp_path, rows)
    table = (tmp_path / "table.md").read_text()
    assert "| 30.0 (trial 7, -0.50 pts, 4.20x) / 12.0 |" in table and "| none of 1 finalized |" in table
    assert "| 30.0 [30.0–30.0] (1/2) | 12.0 [12.0–12.0] (1/2) |" in table
    assert "| joint_elastic | 0 | 9 | -2.00 | -2.50 | 4.20x | 20.0 | 12.0 | elastic+distill |" in table


@pytest.mark.slow
def test_smoke_runs_both_arms_and_a_rerun_continues_never_overwrites(script, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOSQUEEZE_CACHE", str(tmp_path / "cache"))  # the script sets it; restored after the test
    args = ["--smoke", "--out", str(tmp_path), "--seeds", "1", "--minutes", "0.1"]
    assert script.main(args) == 0
    results = tmp_path / "results"
    rows = [json.loads(line) for line in (results / "rows.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["elastic_int8/seed0/0.1min", "joint_elastic/seed0/0.1min"]
    for r in rows:
        assert r["machine"]["cpu"] and r["search_s"] <= 6.0 and r["stopped"] == "time"
        assert {"hypervolume", "trials_per_hour", "smallest_within_1pt", "smallest_no_emb_within_1pt"} <= set(r)
    assert rows[0]["student"] != rows[1]["student"]  # the joint space's student carries exit heads: its own key

    def study(arm: str) -> optuna.Study:
        return optuna.load_study(study_name=f"{arm}-seed0", storage=f"sqlite:///{results / f'{arm}-seed0.db'}")

    before = {arm: len(study(arm).trials) for arm in script.ARMS}
    assert script.main(args) == 0  # done already: nothing runs, nothing is rewritten
    assert {arm: len(study(arm).trials) for arm in script.ARMS} == before
    assert len((results / "rows.jsonl").read_text().splitlines()) == 2

    assert script.main([*args, "--finalize", "--final-within", "99"]) == 0  # the smallest trial of each study
    rows = list(script.read_rows(results / "rows.jsonl").values())
    assert any(r["complete"] for r in rows)  # (a loaded machine may finish no trial of a 6 s budget)
    for r in rows:
        final = r["final"]
        assert final["within_pts"] == [99.0] and len(final["candidates"]) == (1 if r["complete"] else 0)
        assert [p["trial"] for p in final["points"]] == final["candidates"]
        for n in final["candidates"]:
            finals = study(r["arm"]).user_attrs["final"]
            assert set(finals) == {str(n)} and finals[str(n)]["status"] == "complete"
    lines = len((results / "rows.jsonl").read_text().splitlines())
    assert lines == 4 and script.main([*args, "--finalize", "--final-within", "99"]) == 0  # done: nothing again
    assert len((results / "rows.jsonl").read_text().splitlines()) == lines
    assert script.main([*args[:-1], "0.2"]) == 0  # a longer budget continues the same studies
    for arm in script.ARMS:  # up to 12 s of trials (one exit trial of the tiny model may take longer alone)
        searched = script.within_budget(script.clocked_trials(study(arm)), float("inf"))[1]
        assert len(study(arm).trials) > before[arm] or searched >= 12.0
    assert len((results / "rows.jsonl").read_text().splitlines()) == lines + 2  # a row per arm at the new budget
    (results / "table.md").unlink()
    assert script.main(["--tables-only", "--out", str(results)]) == 0
    assert "| joint_elastic | 0.2 | 1 |" in (results / "table.md").read_text()


def test_exits_pay_only_when_an_exit_point_beats_every_exit_free_point_at_its_speed(script):
    plain = [(0.90, 2.0, False), (0.88, 4.0, False), (0.85, 6.0, False)]
    short = script.exits_verdict([*plain, (0.87, 4.0, True), (0.80, 5.0, True)])
    assert short["pays"] is False and short["exit_trials"] == 2 and short["plain_trials"] == 3
    assert short["best"]["speedup"] == 4.0 and short["shortfall_pts"] == pytest.approx(1.0)  # 0.87 vs 0.88
    pays = script.exits_verdict([*plain, (0.89, 4.5, True)])  # beats 0.85 at 6x: the only one as fast
    assert pays["pays"] and pays["best"]["margin_pts"] == pytest.approx(4.0) and pays["shortfall_pts"] is None
    alone = script.exits_verdict([*plain, (0.60, 9.0, True)])  # faster than any exit-free point
    assert alone["pays"] and alone["best"]["margin_pts"] is None
    both = script.exits_verdict([*plain, (0.60, 9.0, True), (0.89, 4.5, True)])  # a real margin is shown first
    assert both["best"]["margin_pts"] == pytest.approx(4.0)
    assert script.exits_verdict(plain) == {"exit_trials": 0, "plain_trials": 3, "pays": None, "best": None}
    assert script._exits_cell(short) == "short: -1.00 pts at 4.00x (2 exit trials)"
