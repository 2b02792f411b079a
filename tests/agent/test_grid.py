"""The agent grid (`difflens experiment agents`): every organism × setting runs and is graded, the
organism-balanced summary and the ADL > blackbox tests are computed, a rerun repeats nothing, and
the report renders."""
from __future__ import annotations

import shutil

from conftest import AllCoherent, FirstScale, write_mini_spec
from difflens.agent.grid import run_agent_grid
from difflens.agent.providers import ProviderReply
from difflens.graders import Graders
from difflens.run.stages import LensConfig, run_lens, run_steer




class Agent:
    """ADL agents say cakes, blackbox agents say music (so ADL wins)."""

    name, model, supports_tools = "scripted", "s", False
    calls = 0

    def respond(self, messages, tools, *, salt):
        Agent.calls += 1
        says = "cake baking" if "get_patchscope_details" in messages[0]["content"] else "music"
        return ProviderReply(f'FINAL(description: "Finetuned on {says}.")')


class Grader:
    def ask(self, messages, parse, **kw):
        return parse("SCORE: 5" if "cake baking" in messages[-1]["content"].split("[HYPOTHESIS]")[1] else "SCORE: 1")


def test_grid_runs_grades_summarizes_and_resumes(tiny_run, tmp_path, _isolated_home):
    from difflens.adl.steering import SteeringConfig
    from difflens.report.experiment import render_agent_grid

    write_mini_spec(_isolated_home)
    pair, layout, c = tiny_run
    graders = Graders(coherence=AllCoherent(), scale=FirstScale(), relevance=None)
    run_lens(pair, layout, graders, LensConfig(positions=[0, 1], controls=False), progress=False)
    run_steer(pair, layout, graders, SteeringConfig(positions=[1], search_iters=1, refine_iters=0, search_samples=1,
                                                    min_coherent=1, final_samples=1, max_new_tokens=3,
                                                    prompts=["why"], random_control=False), progress=False)
    runs_dir = tmp_path / "exp" / "adl" / "runs"
    shutil.copytree(layout.root, runs_dir / "mini_cake")
    settings = (("adl", 0), ("blackbox", 0))
    doc = run_agent_grid(runs_dir, tmp_path / "exp" / "agents", ["mini_cake"], provider=Agent, grader=Grader(),
                         runs=3, settings=settings, progress=False, parallel=2)
    assert doc["cells"]["mini_cake"]["adl-i0"]["grades"] == [5.0, 5.0, 5.0]
    assert doc["cells"]["mini_cake"]["blackbox-i0"]["grades"] == [1.0, 1.0, 1.0]
    assert doc["summary"]["adl-i0"]["overall"]["mean"] == 5.0
    t = doc["tests"]["adl-i0 > blackbox-i0"]
    assert t["diff"] == 4.0 and t["p_value"] < 0.1  # 3 vs 3 runs: the exact p is 1/20
    calls = Agent.calls
    run_agent_grid(runs_dir, tmp_path / "exp" / "agents", ["mini_cake"], provider=Agent, grader=Grader(), runs=3,
                   settings=settings, progress=False)
    assert Agent.calls == calls  # finished, graded episodes are never repeated
    html = render_agent_grid(tmp_path / "exp" / "agents").read_text()
    assert "<b>5.00</b>" in html and "adl-i0 &gt; blackbox-i0" in html and "mini_cake" in html
