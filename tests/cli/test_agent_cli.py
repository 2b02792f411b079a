"""`difflens agent` from the command line: bad options fail before any work; a manual episode driven
through stdin on a tiny finished run is saved and summarised; `difflens serve` refuses a missing token."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from conftest import AllCoherent, FirstScale
from difflens.cli.main import app
from difflens.graders import Graders
from difflens.run.stages import LensConfig, run_lens, run_steer




def test_agent_cli(tiny_run):
    from difflens.adl.steering import SteeringConfig

    pair, layout, c = tiny_run
    g = Graders(coherence=AllCoherent(), scale=FirstScale(), relevance=None)
    run_lens(pair, layout, g, LensConfig(positions=[0, 1], controls=False), progress=False)
    run_steer(pair, layout, g, SteeringConfig(positions=[1], search_iters=1, refine_iters=0, search_samples=1,
                                              min_coherent=1, final_samples=1, max_new_tokens=3, prompts=["why"],
                                              random_control=False), progress=False)
    runner = CliRunner()
    r = runner.invoke(app, ["agent", str(layout.root), "--budget", "-1"])
    assert r.exit_code == 2 and "--budget" in r.output
    r = runner.invoke(app, ["agent", str(layout.root), "--protocol", "smoke-signals"])
    assert r.exit_code == 2 and "--protocol" in r.output
    r = runner.invoke(app, ["agent", str(layout.root)])  # endpoint provider without a model
    assert r.exit_code == 2 and "--agent-model" in " ".join(r.output.split())
    script = ('CALL(get_patchscope_details: {"positions": [0], "k": 3})\n'
              'FINAL(description: "The finetune is about tiny words.")\n')
    r = runner.invoke(app, ["agent", str(layout.root), "--agent-provider", "manual", "--budget", "2", "--runs", "1",
                            "--description", "cakes"], input=script)
    assert r.exit_code == 0, r.output
    assert "OVERVIEW" in r.output and "RESULT of get_patchscope_details" in r.output
    ep = json.loads(layout.agent_episode("adl", 2, 0).read_text())
    assert ep["status"] == "final" and ep["final"] == "The finetune is about tiny words." and ep["turns_used"] == 2
    summary = json.loads(layout.agent().read_text())
    assert summary["settings"]["adl-i2"]["status"] == {"final": 1, "no_final": 0, "error": 0}


def test_serve_cli_refuses_an_unset_token(tiny_run, monkeypatch):
    _, layout, _ = tiny_run
    monkeypatch.delenv("NO_SUCH_TOKEN", raising=False)
    r = CliRunner().invoke(app, ["serve", str(layout.root), "--token-env", "NO_SUCH_TOKEN"])
    assert r.exit_code == 2 and "NO_SUCH_TOKEN" in r.output
