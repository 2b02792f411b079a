"""The agent grid (`difflens experiment agents`): every organism × setting runs and is graded, the
organism-balanced summary and the ADL > blackbox tests are computed, a rerun repeats nothing, and
the report renders."""
from __future__ import annotations

import shutil

from conftest import ScriptedAgent, ScriptedGrader, prepare_agent_run
from difflens.agent.grid import run_agent_grid


def test_grid_runs_grades_summarizes_and_resumes(tiny_run, tmp_path, _isolated_home):
    from difflens.report.agent import render_agent_grid

    pair, layout, c = tiny_run
    prepare_agent_run(pair, layout, _isolated_home)
    runs_dir = tmp_path / "exp" / "adl" / "runs"
    shutil.copytree(layout.root, runs_dir / "mini_cake")
    settings = (("adl", 0), ("blackbox", 0))
    doc = run_agent_grid(runs_dir, tmp_path / "exp" / "agents", ["mini_cake"], provider=ScriptedAgent, grader=ScriptedGrader(),
                         runs=3, settings=settings, progress=False, parallel=2)
    assert doc["cells"]["mini_cake"]["adl-i0"]["grades"] == [5.0, 5.0, 5.0]
    assert doc["cells"]["mini_cake"]["blackbox-i0"]["grades"] == [1.0, 1.0, 1.0]
    assert doc["summary"]["adl-i0"]["overall"]["mean"] == 5.0
    t = doc["tests"]["adl-i0 > blackbox-i0"]
    assert t["diff"] == 4.0 and t["p_value"] < 0.1  # 3 vs 3 runs: the exact p is 1/20
    calls = ScriptedAgent.calls
    run_agent_grid(runs_dir, tmp_path / "exp" / "agents", ["mini_cake"], provider=ScriptedAgent, grader=ScriptedGrader(), runs=3,
                   settings=settings, progress=False)
    assert ScriptedAgent.calls == calls  # finished, graded episodes are never repeated
    html = render_agent_grid(tmp_path / "exp" / "agents").read_text()
    assert "<b>5.00</b>" in html and "adl-i0 &gt; blackbox-i0" in html and "mini_cake" in html
