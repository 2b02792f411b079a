"""The agent per diffing method (issue 20, item 9): each method's OVERVIEW shows its own tokens beside
its baseline's and control's; the free tools page the evidence without touching the budget; ``all``
shows every method the run has; a method the run lacks is one clear error before any LLM call; the
episode and the summary record the method; the experiment's agent grid gets a method axis."""
from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from method_runs import AMP_PROMPTS, DATASET, N_RANK, mining_tokens, write_methods
from test_tools import FakeModels, write_run

from difflens.agent.args import ToolError
from difflens.agent.loop import run_episode
from difflens.agent.prompts import (AGENT_SYSTEM_ADL, AGENT_SYSTEM_BLACKBOX, AGENT_TOOLS_ADL, agent_system_template,
                                    agent_tools_for, render_agent_system)
from difflens.agent.providers import ProviderReply
from difflens.agent.records import Episode, SettingResult, parse_setting_key, setting_key
from difflens.agent.run import run_setting, write_summary
from difflens.agent.tools import Toolbox
from difflens.errors import RunDirError


@pytest.fixture
def run(tmp_path):
    return write_methods(write_run(tmp_path / "run"))


def box(layout, method, models=None, **kw):
    return Toolbox(layout, models if models is not None else FakeModels(), kind="adl", method=method,
                   **{"overview_k": 5, "cut": 40, **kw})


class Replay:
    """A provider replaying text replies and recording every request."""

    name, model, supports_tools = "replay", "r", False

    def __init__(self, *replies):
        self.replies, self.seen = list(replies), []

    def respond(self, messages, tools, *, salt):
        self.seen.append(messages)
        return ProviderReply(self.replies.pop(0) if self.replies else 'FINAL(description: "x")')


# --------------------------------------------------------------------------------------------
# Overviews
# --------------------------------------------------------------------------------------------


def test_mining_overview_has_its_tokens_beside_baseline_and_control(run):
    ov = box(run, "mining").overview()
    assert (ov["method"], ov["dataset"]) == ("mining", DATASET)
    assert [t["token"] for t in ov["tokens"]] == mining_tokens("M")[:5]
    assert ov["tokens"][1] == {"token": " M1", "top_k_share": 0.25, "positive_share": 0.89, "mean_diff": 1.95}
    assert ov["baseline"] == {"ft alone: top-K occurrence": mining_tokens("B")[:5]}
    assert list(ov["control"].values()) == [mining_tokens("C")[:5]]
    assert ov["specific"] == [" M1", " M2", " M3", " M4"]  # " the" tops the baseline and the control too
    assert ov["setup"] == {"samples": 50, "tokens_per_sample": 64, "top_k": 100}
    assert "top_k" in ov["rankings"] and "control_top_k" in ov["rankings"] and "missing" not in ov
    json.dumps(ov)


def test_kl_overview_has_marked_contexts_and_the_entropy_baseline(run):
    ov = box(run, "kl").overview()
    assert ov["tokens"] == [" K0", " K1", " K2", " K3", " K4"]
    assert list(ov["baseline"].values()) == [[" B39", " B38", " B37", " B36", " B35"]]  # highest entropy first
    assert list(ov["control"].values()) == [[" C0", " C1", " C2", " C3", " C4"]]
    assert ov["top_contexts"][0] == {"value": 5.0, "text": " a b[[ K0]] c B0 d"}
    assert ov["stats"]["kl"] == {"mean": 0.2, "max": 5.0} and ov["control_stats"]["kl"]["mean"] == 0.01
    assert "kl_max" in ov["context_stats"] and "samples" not in ov  # contexts are not prompt samples


def test_amplify_overview_shows_amplified_beside_finetuned_samples(run):
    ov = box(run, "amplify").overview()
    assert ov["beta"] == 2.0 and "β = 2" in ov["title"] and ov["any_coherent"] is True
    assert [s["prompt"] for s in ov["samples"]] == AMP_PROMPTS  # one row per prompt: its first sample
    first = ov["samples"][0]
    assert first["finetuned"] == "PLAIN 0 s0" and first["base"] == "BASE 0 s0"
    assert first["control"] == "CONTROLAMP 0 s0"
    assert first["amplified"].startswith("AMPLIFIED 0 s0") and len(first["amplified"]) == 40  # cut
    assert first["amplified"].endswith("…") and ov["samples_total"] == 6


def test_missing_control_is_named_in_the_overview(tmp_path):
    layout = write_methods(write_run(tmp_path / "run"), methods=("mining",), control=False)
    ov = box(layout, "mining").overview()
    assert "control" not in ov and any("--control noise" in m for m in ov["missing"])
    assert ov["specific"] == mining_tokens("M")[1:5]
    assert "control_top_k" not in ov["rankings"]


def test_all_has_every_available_method(run, tmp_path):
    tb = box(run, "all")
    ov = tb.overview()
    assert list(ov["methods"]) == ["adl", "mining", "kl", "amplify"] and "not_computed" not in ov
    assert ov["methods"]["adl"]["slices"][0]["positions"][0]["patchscope"][0] == " ps0_0"  # ADL's own overview
    assert ov["methods"]["mining"]["tokens"][1]["token"] == " M1"
    assert tb.evidence == {m: DATASET for m in ("adl", "mining", "kl", "amplify")}
    assert tb.tools == ("get_logitlens_details", "get_patchscope_details", "get_steering_samples", "more_tokens",
                        "top_contexts", "amplified_samples", "ask_model", "generate_steered")
    # a run with the diff methods but no ADL: no ADL tools, ADL named as not computed
    layout = write_run(tmp_path / "other")
    shutil.rmtree(layout.root / "lens")
    write_methods(layout, methods=("mining", "amplify"))
    tb = box(layout, "all")
    ov = tb.overview()
    assert list(ov["methods"]) == ["mining", "amplify"]
    assert set(ov["not_computed"]) == {"adl", "kl"} and "--methods kl" in ov["not_computed"]["kl"]
    assert tb.tools == ("more_tokens", "amplified_samples", "ask_model")


def test_adl_default_is_unchanged(run):
    tb = Toolbox(run, FakeModels(), kind="adl", overview_k=5, cut=50)
    assert tb.method == "adl" and tb.tools == AGENT_TOOLS_ADL and tb.evidence == {}
    assert tb.overview() == box(run, "adl", cut=50).overview()
    text = json.dumps(tb.overview())
    assert " M1" not in text and "AMPLIFIED" not in text  # other methods never leak into ADL's overview


# --------------------------------------------------------------------------------------------
# Free tools
# --------------------------------------------------------------------------------------------


def test_more_tokens_pages_mining_rankings(run):
    tb = box(run, "mining")
    out = tb.call("more_tokens", {"offset": 5, "n": 3})  # method and ranking default to mining's top_k
    assert [t["token"] for t in out["tokens"]] == [" M5", " M6", " M7"]
    assert [t["rank"] for t in out["tokens"]] == [5, 6, 7]
    assert (out["total"], out["next_offset"], out["ranking"]) == (N_RANK, 8, "top_k")
    last = tb.call("more_tokens", {"method": "mining", "ranking": "ft_top_k", "offset": 28, "n": 10})
    assert [t["token"] for t in last["tokens"]] == [" B28", " B29"] and last["next_offset"] is None
    ctl = tb.call("more_tokens", {"ranking": "control_top_k", "n": 2})
    assert [t["token"] for t in ctl["tokens"]] == [" the", " C1"]
    assert tb.call("more_tokens", {"offset": 100})["tokens"] == []


def test_kl_tools_page_tokens_and_contexts(run):
    tb = box(run, "kl")
    out = tb.call("more_tokens", {"offset": 5, "n": 2})  # kl_max: the marked tokens, in order
    assert [t["token"] for t in out["tokens"]] == [" K5", " K6"] and out["next_offset"] == 7
    out = tb.call("more_tokens", {"ranking": "ent_max", "n": 2})
    assert [t["token"] for t in out["tokens"]] == [" B39", " B38"]
    out = tb.call("top_contexts", {"offset": 3, "n": 2})
    assert [c["rank"] for c in out["contexts"]] == [3, 4] and out["stat"] == "kl_max"
    assert out["contexts"][0]["text"] == " a b[[ K3]] c B3 d" and out["contexts"][0]["at_mark"]["kl"] == 4.7
    assert (out["total"], out["next_offset"]) == (40, 5)
    out = tb.call("top_contexts", {"stat": "ent_max", "n": 1, "control": True})
    assert out["pair"] == "control" and out["contexts"][0]["token"] == " B39"
    assert tb.call("top_contexts", {"offset": 39, "n": 5})["next_offset"] is None


def test_amplified_samples_pages_every_sample(run):
    tb = box(run, "amplify")
    out = tb.call("amplified_samples", {"offset": 1, "n": 2})
    assert [(s["index"], s["prompt"], s["sample"]) for s in out["samples"]] == [(1, AMP_PROMPTS[0], 1),
                                                                                 (2, AMP_PROMPTS[1], 0)]
    row = out["samples"][0]
    assert row["finetuned"] == "PLAIN 0 s1" and row["control"] == "CONTROLAMP 0 s1"
    assert row["amplified"].startswith("AMPLIFIED 0 s1") and len(row["amplified"]) > 200  # uncut
    assert (out["total"], out["next_offset"]) == (6, 3)
    assert tb.call("amplified_samples", {"offset": 4})["next_offset"] is None


@pytest.mark.parametrize("method, tool, args, messages", [
    ("mining", "more_tokens", {"ranking": "nope"}, ["'ranking' of more_tokens must be one of", "'top_k'"]),
    ("mining", "more_tokens", {"n": 101}, ["from 1 to 100"]),
    ("mining", "more_tokens", {"offset": -1}, ["'offset'"]),
    ("mining", "more_tokens", {"method": "kl"}, ["must be one of 'mining'"]),
    ("mining", "top_contexts", {}, ["not available in this investigation", "more_tokens, ask_model"]),
    ("mining", "get_patchscope_details", {"positions": [0]}, ["not available in this investigation"]),
    ("all", "more_tokens", {}, ["needs 'method'", "'mining', 'kl'"]),
    ("kl", "top_contexts", {"stat": "kl_median"}, ["'kl_max'"]),
    ("kl", "top_contexts", {"n": 21}, ["from 1 to 20"]),
    ("kl", "top_contexts", {"control": "yes"}, ["true or false"]),
    ("amplify", "amplified_samples", {"prompts": ["x"]}, ["unknown argument(s)", "offset, n"]),
])
def test_bad_arguments_of_the_free_tools(run, method, tool, args, messages):
    models = FakeModels()
    tb = box(run, method, models)
    for fn in (tb.cost, tb.call):
        with pytest.raises(ToolError) as e:
            fn(tool, args)
        for m in messages:
            assert m in str(e.value)
    assert models.calls == []


def test_control_contexts_refused_without_a_control(tmp_path):
    layout = write_methods(write_run(tmp_path / "run"), methods=("kl",), control=False)
    with pytest.raises(ToolError, match="no KL results for the control pair"):
        box(layout, "kl").call("top_contexts", {"control": True})


def test_free_tools_cost_nothing_and_keep_the_budget(run):
    models = FakeModels()
    tb = box(run, "all", models)
    for tool, args in (("more_tokens", {"method": "mining", "offset": 3}), ("top_contexts", {"n": 3}),
                       ("amplified_samples", {"n": 2}), ("more_tokens", {"method": "kl"})):
        assert tb.cost(tool, args) == 0
    calls = [f"CALL({t}: {json.dumps(a)})" for t, a in (("more_tokens", {"method": "mining", "offset": 3}),
                                                       ("top_contexts", {"n": 3}), ("amplified_samples", {"n": 2}))]
    agent = Replay(*calls, 'CALL(ask_model: {"prompts": ["Any cake tips?"]})', 'FINAL(description: "Cake.")')
    ep = run_episode(agent, tb, kind="adl", budget=1, protocol="text")
    assert ep.status == "final" and [u.tool for u in ep.tool_uses] == ["more_tokens", "top_contexts",
                                                                       "amplified_samples", "ask_model"]
    assert [u.cost for u in ep.tool_uses] == [0, 0, 0, 1] and all(u.ok for u in ep.tool_uses)
    assert ep.interactions_used == 1 and models.calls == [("ask", ["Any cake tips?"])]
    # every free call left the budget untouched: the note after each still says 1
    notes = [m.content for m in ep.messages if m.role == "user"][1:4]
    assert all("model interactions left: 1;" in n for n in notes)
    assert '"token": " M3"' in notes[0] and "[[ K0]]" in notes[1] and "AMPLIFIED 0 s1" in notes[2]


def test_free_tools_run_with_a_zero_budget(run):
    tb = box(run, "kl")
    agent = Replay('CALL(top_contexts: {"n": 1})', 'FINAL(description: "Changed predictions.")')
    ep = run_episode(agent, tb, kind="adl", budget=0, protocol="text")
    assert ep.status == "final" and ep.tool_uses[0].ok and ep.tool_uses[0].cost == 0


def test_specs_of_method_toolboxes(run):
    for method in ("mining", "kl", "amplify", "all"):
        tb = box(run, method)
        specs = tb.specs()
        json.dumps(specs)
        assert tuple(s["function"]["name"] for s in specs) == tb.tools
        for s in specs:
            p = s["function"]["parameters"]
            assert set(p["properties"]) == set(Toolbox._ALLOWED[s["function"]["name"]])
            assert set(p["required"]) <= set(p["properties"]) and s["function"]["description"]
    params = {s["function"]["name"]: s["function"]["parameters"] for s in box(run, "all").specs()}
    assert params["more_tokens"]["required"] == ["method"]  # two token methods: say which
    assert params["more_tokens"]["properties"]["method"]["enum"] == ["mining", "kl"]
    assert box(run, "mining").specs()[0]["function"]["parameters"]["required"] == []


# --------------------------------------------------------------------------------------------
# Missing evidence: one clear error, before any LLM call
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, command", [("mining", "--methods mining"), ("kl", "--methods kl"),
                                             ("amplify", "--methods amplify")])
def test_missing_method_is_refused_with_its_command(tmp_path, method, command):
    layout = write_run(tmp_path / "run")
    with pytest.raises(RunDirError) as e:
        box(layout, method)
    msg = str(e.value)
    assert "\n" not in msg and f"difflens diff {layout.root} {command}" in msg


def test_all_without_any_method_is_refused(tmp_path):
    layout = write_run(tmp_path / "run")
    shutil.rmtree(layout.root / "lens")
    with pytest.raises(RunDirError, match="no diffing method"):
        box(layout, "all")


def test_cli_missing_method_fails_before_the_agent_is_asked(tmp_path):
    from difflens.cli.main import app

    layout = write_run(tmp_path / "run")
    r = CliRunner().invoke(app, ["agent", str(layout.root), "--method", "kl", "--agent-provider", "manual",
                                 "--runs", "1", "--description", "cakes"], input='FINAL(description: "x")\n')
    assert r.exit_code == 2, r.output
    out = " ".join(r.output.split())  # the console wraps the one message at its width
    assert out.startswith("error:") and out.count("error") == 1 and out.endswith("--methods kl` first.")
    assert "OVERVIEW" not in r.output and not (layout.root / "agent").exists()
    r = CliRunner().invoke(app, ["agent", str(layout.root), "--method", "pca"])
    assert r.exit_code == 2 and "--method must be one of" in " ".join(r.output.split())
    r = CliRunner().invoke(app, ["agent", str(layout.root), "--method", "mining", "--blackbox"])
    assert r.exit_code == 2 and "--blackbox" in r.output


def test_cli_agent_on_mining_evidence_records_the_method(run):
    from difflens.cli.main import app

    script = 'CALL(more_tokens: {"offset": 2, "n": 2})\nFINAL(description: "The finetune is about M-words.")\n'
    r = CliRunner().invoke(app, ["agent", str(run.root), "--method", "mining", "--agent-provider", "manual",
                                 "--budget", "0", "--runs", "1", "--description", "cakes"], input=script)
    assert r.exit_code == 0, r.output
    assert "OVERVIEW" in r.output and '"specific"' in r.output and "RESULT of more_tokens" in r.output
    assert "more_tokens  (free)" in r.output and "get_patchscope_details" not in r.output  # its own prompt
    ep = json.loads(run.agent_episode("mining", 0, 0).read_text())
    assert ep["method"] == "mining" and ep["evidence"] == {"mining": DATASET} and ep["status"] == "final"
    summary = json.loads(run.agent().read_text())
    assert summary["settings"]["mining-i0"]["method"] == "mining" and "mining-i0" in r.output


# --------------------------------------------------------------------------------------------
# Prompts and records
# --------------------------------------------------------------------------------------------


def test_method_prompts_document_their_tools_and_evidence():
    import string

    assert agent_system_template("adl", "adl") == AGENT_SYSTEM_ADL
    assert agent_system_template("adl", None) == AGENT_SYSTEM_ADL
    assert agent_system_template("blackbox", None) == AGENT_SYSTEM_BLACKBOX
    everything = ("get_logitlens_details", "get_patchscope_details", "get_steering_samples", "more_tokens",
                  "top_contexts", "amplified_samples", "ask_model", "generate_steered")
    for method, parts, words in (("mining", (), ["Diff mining", "OWN top-K occurrence", "weight noise"]),
                                 ("kl", (), ["KL(P_ft || P_base)", "entropy", "[[like this]]"]),
                                 ("amplify", (), ["logits_ft + beta * (logits_ft - logits_base)", "beta = 0"]),
                                 ("all", ("adl", "kl"), ["ADL section", "KL section", "Agreement between methods"])):
        tmpl = agent_system_template("adl", method, parts)
        placeholders = {m[1] or m[2] for m in string.Template.pattern.findall(tmpl) if m[1] or m[2]}
        assert placeholders == {"model_interactions", "max_turns"}
        text = render_agent_system(tmpl, model_interactions=5, max_turns=9)
        tools = agent_tools_for(method, parts)
        for t in everything:
            assert (f"- {t}  (" in text) == (t in tools), (method, t)
        for w in words:
            assert w in text, (method, w)
        assert "5 in total" in text and "at most 9" in text and "FINAL(description:" in text
        assert ("generate_steered costs" in text) == ("generate_steered" in tools)


def test_episodes_and_summary_record_the_method(run):
    tb = box(run, "amplify")
    res = run_setting(run, Replay('FINAL(description: "Amplified cakes.")'), tb, kind="adl", budget=0, runs=1,
                      grader=None, organism=None, organism_type=None, description=None, progress=False)
    assert res.method == "amplify" and res.setting == "amplify-i0"
    ep = Episode.model_validate(json.loads(run.agent_episode("amplify", 0, 0).read_text()))
    assert ep.method == "amplify" and ep.evidence == {"amplify": DATASET}
    assert "amplified_samples  (free)" in ep.messages[0].content
    doc = write_summary(run, [res])
    assert doc["settings"]["amplify-i0"]["method"] == "amplify"
    assert doc["settings"]["amplify-i0"]["evidence"] == {"amplify": DATASET}
    with pytest.raises(ValueError, match="shows 'amplify' evidence"):
        run_setting(run, Replay(), tb, kind="adl", budget=0, runs=1, grader=None, organism=None,
                    organism_type=None, description=None, method="kl", progress=False)


def test_old_records_stay_readable():
    old = {"kind": "adl", "budget": 5, "max_turns": 15, "protocol": "text", "provider": "endpoint"}
    assert Episode.model_validate(old).method == "adl" and Episode.model_validate(old).setting == "adl-i5"
    bb = Episode.model_validate({**old, "kind": "blackbox"})
    assert bb.method is None and bb.setting == "blackbox-i5"
    assert SettingResult.model_validate({"kind": "adl", "budget": 0}).method == "adl"
    assert setting_key("adl", 5, "kl") == "kl-i5" and setting_key("blackbox", 50, None) == "blackbox-i50"
    assert parse_setting_key("adl-i5") == ("adl", "adl", 5) and parse_setting_key("all-i0") == ("adl", "all", 0)


def test_report_section_names_the_evidence(run):
    from difflens.report.agent import agent_section

    tb = box(run, "mining")
    res = run_setting(run, Replay('FINAL(description: "M words.")'), tb, kind="adl", budget=0, runs=1, grader=None,
                      organism=None, organism_type=None, description=None, progress=False)
    write_summary(run, [res])
    html = agent_section(run)
    assert "<code>mining-i0</code></td><td>mining</td>" in html and "mining-i0 run 0" in html
    assert "mining evidence" in html


# --------------------------------------------------------------------------------------------
# The experiment's agent grid with a method axis
# --------------------------------------------------------------------------------------------


class MethodAgent:
    """Names cake baking when its system prompt documents diff mining, music otherwise; counts calls."""

    name, model, supports_tools = "method-scripted", "s", False
    calls = 0

    def respond(self, messages, tools, *, salt):
        MethodAgent.calls += 1
        says = "cake baking" if "Diff mining" in messages[0]["content"] else "music"
        return ProviderReply(f'FINAL(description: "Finetuned on {says}.")')


def test_grid_with_two_methods_has_rows_per_method(tmp_path, _isolated_home):
    from conftest import ScriptedGrader, write_mini_spec
    from difflens.agent.grid import run_agent_grid
    from difflens.report.agent import render_agent_grid

    write_mini_spec(_isolated_home)
    adl_runs, method_runs = tmp_path / "exp" / "adl" / "runs", tmp_path / "exp" / "methods" / "runs"
    write_run(adl_runs / "mini_cake")  # the adl experiment's run: ADL only
    write_methods(write_run(method_runs / "mini_cake"), methods=("mining",))  # the methods experiment's
    kw = dict(provider=MethodAgent, grader=ScriptedGrader(), runs=2, settings=(("adl", 0), ("blackbox", 0)),
              progress=False, models_factory=lambda lay: FakeModels(), methods=["adl", "mining"])
    doc = run_agent_grid([adl_runs, method_runs], tmp_path / "exp" / "agents", ["mini_cake"], **kw)
    assert doc["settings"] == ["adl-i0", "mining-i0", "blackbox-i0"] and doc["methods"] == ["adl", "mining"]
    assert doc["settings_info"]["mining-i0"] == {"kind": "adl", "method": "mining", "budget": 0}
    cells = doc["cells"]["mini_cake"]
    assert cells["mining-i0"]["grades"] == [5.0, 5.0] and cells["adl-i0"]["grades"] == [1.0, 1.0]
    assert cells["mining-i0"]["method"] == "mining" and cells["blackbox-i0"]["method"] is None
    assert cells["mining-i0"]["run"] == "methods/runs/mini_cake"  # the run that has the method
    assert cells["adl-i0"]["run"] == cells["blackbox-i0"]["run"] == "adl/runs/mini_cake"
    assert doc["summary"]["mining-i0"]["overall"]["mean"] == 5.0
    assert {"adl-i0 > blackbox-i0", "mining-i0 > blackbox-i0", "mining-i0 > adl-i0"} <= set(doc["tests"])
    assert doc["tests"]["mining-i0 > adl-i0"]["diff"] == 4.0
    ep = json.loads((method_runs / "mini_cake" / "agent" / "mining-i0" / "run0.json").read_text())
    assert ep["method"] == "mining"
    calls = MethodAgent.calls
    run_agent_grid([adl_runs, method_runs], tmp_path / "exp" / "agents", ["mini_cake"], **kw)
    assert MethodAgent.calls == calls  # resumed: nothing repeated
    html = render_agent_grid(tmp_path / "exp" / "agents").read_text()
    assert "<td><code>mining-i0</code></td><td>mining</td><td>0</td><td><b>5.00</b>" in html
    assert "<td><code>adl-i0</code></td><td>adl</td><td>0</td><td><b>1.00</b>" in html
    assert "mining-i0 &gt; adl-i0" in html and "none (blackbox)" in html


def test_grid_refuses_a_missing_method_before_any_agent_call(tmp_path, _isolated_home):
    from conftest import ScriptedGrader, write_mini_spec
    from difflens.agent.grid import run_agent_grid

    write_mini_spec(_isolated_home)
    runs = tmp_path / "exp" / "adl" / "runs"
    write_run(runs / "mini_cake")
    calls = MethodAgent.calls
    with pytest.raises(FileNotFoundError, match=r"mini_cake \(kl\).*difflens experiment methods"):
        run_agent_grid(runs, tmp_path / "exp" / "agents", ["mini_cake"], provider=MethodAgent,
                       grader=ScriptedGrader(), runs=1, settings=(("adl", 0),), progress=False,
                       models_factory=lambda lay: FakeModels(), methods=["adl", "kl"])
    assert MethodAgent.calls == calls and not (runs / "mini_cake" / "agent").exists()


def test_experiment_cli_checks_the_method_option(tmp_path):
    from difflens.cli.main import app

    r = CliRunner().invoke(app, ["experiment", "agents", "--out", str(tmp_path), "--methods", "adl,pca",
                                 "--agent-provider", "local"])
    assert r.exit_code == 2 and "unknown method(s) pca" in " ".join(r.output.split())
    r = CliRunner().invoke(app, ["experiment", "methods", "--out", str(tmp_path), "--methods", "kl,sae"])
    assert r.exit_code == 2 and "unknown method(s) sae" in " ".join(r.output.split())
    assert not any(tmp_path.iterdir())
