"""studies/elastic_quality/raw_slices.py: a malformed --students is refused in one line, before any model loads."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.study_scripts import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "studies" / "elastic_quality" / "raw_slices.py"


@pytest.mark.parametrize("students", ["plain", "plain=", "=sst2-0123", "a=k1,b"])
def test_a_malformed_students_list_is_refused(students, tmp_path):
    script = load_script(SCRIPT, "raw_slices")
    with pytest.raises(SystemExit, match="--students: .* is not name=key"):
        script.main(["--students", students, "--out", str(tmp_path / "x.jsonl")])
    assert not (tmp_path / "x.jsonl").exists()
