"""The report page in a real headless browser (Debian's chromium): no script error, plots drawn."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from autosqueeze.report.build import report_sections
from autosqueeze.report.pareto import trial_records
from autosqueeze.report.plots import write_html
from tests.test_report import fake_study

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium: apt-get install -y chromium")]

# Collect script errors from the first byte on; after the page settles, write what was drawn into the DOM.
HEAD_HOOK = ("<script>window.__errors=[];window.addEventListener('error',function(e){window.__errors.push("
             "String(e.message||e))});window.addEventListener('unhandledrejection',function(e){window.__errors.push("
             "'unhandled rejection: '+String(e.reason))});</script>")
TAIL_HOOK = ("<script>setTimeout(function(){var r={errors:window.__errors,"
             "plots:document.querySelectorAll('.js-plotly-plot').length,"
             "svgs:document.querySelectorAll('.plotly .main-svg').length,"
             "points:document.querySelectorAll('.scatterlayer .point').length,"
             "bars:document.querySelectorAll('.barlayer .point').length};"
             "var p=document.createElement('pre');p.id='check';p.textContent=JSON.stringify(r);"
             "document.body.appendChild(p);},1000);</script>")


def render(page: Path, tmp: Path) -> dict:
    """Load ``page`` (with the hooks added) in headless chromium; what the page drew and any errors."""
    probe = tmp / "probe.html"
    text = page.read_text(encoding="utf-8")
    probe.write_text(text.replace("<head>", "<head>" + HEAD_HOOK, 1).replace("</body>", TAIL_HOOK + "</body>"),
                     encoding="utf-8")
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=15000", "--enable-logging=stderr", "--v=0",
           "--dump-dom", probe.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    found = re.search(r'<pre id="check">(.*?)</pre>', proc.stdout)
    assert found, f"the page did not finish loading (rc {proc.returncode}): {proc.stderr[-2000:]}"
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    result["console_errors"] = [line for line in proc.stderr.splitlines()
                                if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)]
    return result


def test_report_page_loads_and_draws_its_plots(tmp_path):
    study = fake_study()
    sections, _ = report_sections(study, trial_records(study), "accuracy")
    page = write_html(sections, tmp_path / "report.html", "browser check")
    drawn = render(page, tmp_path)
    assert drawn["errors"] == [] and drawn["console_errors"] == [], drawn
    n_figures = sum(s.figure is not None for s in sections)
    assert drawn["plots"] == n_figures >= 4  # front, history, importances, methods
    assert drawn["svgs"] >= n_figures  # plotly drew every figure
    # front: 5 feasible trials + 1 stopped early + 2 front markers + 2 references + budget line ends
    assert drawn["points"] >= 8 and drawn["bars"] >= 2
