"""The agent loop: tool call → result → final, budget accounting, the turn limit, format errors,
unknown tools, a tool raising, endpoint faults (retried; an outage ends in an error state with the
transcript kept), native tool calls and the text fallback, the manual provider from a script."""
from __future__ import annotations

import io
import json

import pytest

from difflens.agent.loop import FINAL_REQUEST, run_episode
from difflens.agent.providers import EndpointAgent, ManualAgent, ProviderReply

from difflens.llm.types import ToolCall
from llm_server import completion, make_client

pytestmark = pytest.mark.usefixtures("llm_env")


class FakeToolbox:
    """Tools of the ADL agent over canned data; ask_model costs one per prompt, generate_steered one
    per sample; ``boom`` makes get_patchscope_details raise."""

    tools = ("get_logitlens_details", "get_patchscope_details", "get_steering_samples", "ask_model",
             "generate_steered")

    def __init__(self):
        self.calls = []

    def overview(self):
        return {"positions": {"0": {"patchscope": ["cake", "oven"]}}}

    def specs(self):
        return [{"type": "function", "function": {"name": t, "parameters": {"type": "object"}}} for t in self.tools]

    def cost(self, tool, args):
        if tool == "ask_model":
            if not args.get("prompts"):
                raise ValueError("ask_model needs 'prompts': a non-empty list of strings")
            return len(args["prompts"])
        if tool == "generate_steered":
            return len(args.get("prompts", [])) * int(args.get("n", 1))
        return 0

    def call(self, tool, args):
        self.calls.append((tool, args))
        if tool == "get_patchscope_details" and args.get("boom"):
            raise RuntimeError("disk on fire")
        if tool == "ask_model":
            return {"base": ["plain"] * len(args["prompts"]), "finetuned": ["cake!"] * len(args["prompts"])}
        return {"tool": tool, "ok": True}


class Scripted:
    """A provider replaying text replies (or ProviderReply objects) and recording what it was sent."""

    name, model, supports_tools = "scripted", "script", False

    def __init__(self, *replies):
        self.replies = list(replies)
        self.seen = []

    def respond(self, messages, tools, *, salt):
        self.seen.append((messages, tools))
        r = self.replies.pop(0) if self.replies else "still thinking"
        return r if isinstance(r, ProviderReply) else ProviderReply(r)


ASK = 'I will ask.\nCALL(ask_model: {"prompts": ["What do you like?", "Any tips?"]})'
FINAL = 'Evidence is clear.\nFINAL(description: "Finetuned on false cake-baking tips.")'


def test_tool_call_then_final_and_budget_accounting():
    tb, agent = FakeToolbox(), Scripted(ASK, FINAL)
    ep = run_episode(agent, tb, kind="adl", budget=5, protocol="text")
    assert ep.status == "final" and ep.final == "Finetuned on false cake-baking tips."
    assert ep.turns_used == 2 and ep.interactions_used == 2 and ep.tool_uses[0].cost == 2
    assert tb.calls == [("ask_model", {"prompts": ["What do you like?", "Any tips?"]})]
    first_user = ep.messages[1].content
    assert first_user.startswith("OVERVIEW") and "model interactions left: 5; agent turns left: 15" in first_user
    result_msg = ep.messages[3].content
    assert result_msg.startswith("RESULT of ask_model") and "cake!" in result_msg
    assert "model interactions left: 3; agent turns left: 14" in result_msg
    assert ep.messages[0].role == "system" and "5 in total" in ep.messages[0].content


def test_overspending_call_is_refused_without_running():
    tb = FakeToolbox()
    big = 'CALL(generate_steered: {"position": 2, "prompts": ["a", "b"], "n": 3})'
    ep = run_episode(Scripted(big, FINAL), tb, kind="adl", budget=5, protocol="text")
    assert tb.calls == [] and ep.interactions_used == 0 and ep.tool_errors == 1
    assert "would cost 6 model interaction(s) but only 5 are left" in ep.messages[3].content
    assert ep.status == "final"


def test_format_errors_unknown_tools_and_crashing_tools_go_back_to_the_agent():
    tb = FakeToolbox()
    agent = Scripted("   ",                                                           # empty
                     "I think it is about cakes.",                                   # no CALL/FINAL
                     'CALL(read_weights: {"layer": 3})',                              # unknown tool
                     'CALL(ask_model: {"prompts": ["x"],})',                          # bad JSON
                     'CALL(get_patchscope_details: {"boom": true})',                  # the tool raises
                     'CALL(ask_model: {"prompts": []})',                              # bad arguments
                     FINAL)
    ep = run_episode(agent, tb, kind="adl", budget=5, protocol="text")
    assert ep.status == "final" and ep.turns_used == 7
    assert ep.format_errors == 4 and ep.tool_errors == 2
    texts = [m.content for m in ep.messages if m.role == "user"]
    assert "Format error: the reply is empty" in texts[1]
    assert "Format error: no CALL(...) or FINAL(...) line found" in texts[2]
    assert "unknown tool 'read_weights'" in texts[3]
    assert "not valid JSON" in texts[4]
    assert "ERROR: RuntimeError: disk on fire" in texts[5]
    assert "ask_model needs 'prompts'" in texts[6]
    assert ep.interactions_used == 0


def test_turn_limit_then_one_request_for_the_final_answer():
    agent = Scripted(*(['CALL(get_steering_samples: {"position": 1, "n": 1})'] * 3), FINAL)
    ep = run_episode(agent, FakeToolbox(), kind="adl", budget=0, max_turns=3, protocol="text")
    assert ep.turns_used == 3 and ep.status == "final"
    assert ep.messages[-2].content == FINAL_REQUEST
    assert "This is your last turn" in agent.seen[2][0][-1]["content"]
    never = run_episode(Scripted(*(["hmm"] * 5)), FakeToolbox(), kind="adl", budget=0, max_turns=2, protocol="text")
    assert never.status == "no_final" and never.final is None and never.turns_used == 2


def test_blackbox_gets_only_its_tools():
    class BB(FakeToolbox):
        tools = ("ask_model",)

    ep = run_episode(Scripted('CALL(get_patchscope_details: {"position": 0})', FINAL), BB(), kind="blackbox",
                     budget=5, protocol="text")
    assert "unknown tool 'get_patchscope_details'" in ep.messages[3].content
    assert "get_patchscope_details" not in ep.messages[0].content.split("Tools")[1]


def _tool_call(name, args, cid="call_1"):
    return [{"id": cid, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}]


def test_native_tool_calls_over_an_endpoint(server, tmp_path):
    server.play(("json", completion("", tool_calls=_tool_call("ask_model", {"prompts": ["hi"]}))),
                ("status", 429), ("status", 503),                   # retried by the client
                ("reply", 'Done.\nFINAL(description: "Cake baking.")'))
    client = make_client(server.url, tmp_path)
    ep = run_episode(EndpointAgent(client), FakeToolbox(), kind="adl", budget=3, protocol="auto")
    assert ep.status == "final" and ep.protocol == "native" and ep.interactions_used == 1
    sent = server.requests[1]["body"]
    assert sent["tools"][0]["type"] == "function"
    assert sent["messages"][2]["tool_calls"][0]["id"] == "call_1"
    assert sent["messages"][3] == {"role": "tool", "content": json.dumps({"base": ["plain"], "finetuned": ["cake!"]}),
                                   "tool_call_id": "call_1"}
    assert ep.usage.requests == 2 and ep.usage.prompt_tokens == 20 and ep.usage.cost_usd is None  # unpriced
    priced = make_client(server.url, tmp_path, price_in_per_mtok=1.0, price_out_per_mtok=4.0, cache=False)
    server.play(("reply", FINAL))
    ep = run_episode(EndpointAgent(priced), FakeToolbox(), kind="adl", budget=3, protocol="text")
    assert ep.usage.cost_usd == pytest.approx((10 * 1.0 + 5 * 4.0) / 1e6)


def test_endpoint_without_tool_support_falls_back_to_text(server, tmp_path):
    server.play(("status", 400), ("reply", ASK), ("reply", FINAL))
    client = make_client(server.url, tmp_path)
    ep = run_episode(EndpointAgent(client), FakeToolbox(), kind="adl", budget=3, protocol="auto")
    assert ep.status == "final" and ep.protocol == "text"
    assert "tools" in server.requests[0]["body"] and "tools" not in server.requests[1]["body"]


def test_outage_mid_run_ends_in_an_error_state_with_the_transcript_kept(server, tmp_path):
    server.play(("reply", ASK), *([("status", 500)] * 10))
    client = make_client(server.url, tmp_path, max_retries=2)
    ep = run_episode(EndpointAgent(client), FakeToolbox(), kind="adl", budget=3, protocol="text")
    assert ep.status == "error" and "agent endpoint failed" in ep.error and "500" in ep.error
    assert ep.turns_used == 1 and ep.interactions_used == 2 and ep.tool_uses[0].tool == "ask_model"
    assert [m.role for m in ep.messages] == ["system", "user", "assistant", "user"]


def test_malformed_endpoint_reply_is_an_error_state(server, tmp_path):
    server.play(*([("garbage", "<html>not json</html>")] * 10))
    ep = run_episode(EndpointAgent(make_client(server.url, tmp_path, max_retries=1)), FakeToolbox(), kind="adl",
                     budget=1, protocol="text")
    assert ep.status == "error" and ep.final is None


def test_manual_provider_plays_a_full_episode_from_a_script():
    script = io.StringIO('Let me look.\nCALL(ask_model: {"prompts": ["Favourite dessert?"]})\n'
                         'It is about cakes.\nFINAL(description: "Cake-baking false facts.")\n')
    out = io.StringIO()
    ep = run_episode(ManualAgent(inp=script, out=out), FakeToolbox(), kind="adl", budget=2, protocol="auto")
    assert ep.status == "final" and ep.final == "Cake-baking false facts." and ep.protocol == "text"
    shown = out.getvalue()
    assert "OVERVIEW" in shown and "RESULT of ask_model" in shown and shown.count("YOUR REPLY") == 2


def test_native_reply_with_a_final_line_ends_the_episode():
    reply = ProviderReply('FINAL(description: "Cakes.")', tool_calls=[ToolCall(id="c", name="ask_model",
                                                                                arguments='{"prompts": ["x"]}')])

    class Native(Scripted):
        supports_tools = True

    ep = run_episode(Native(reply), FakeToolbox(), kind="adl", budget=2, protocol="auto")
    assert ep.status == "final" and ep.final == "Cakes." and ep.interactions_used == 0


def test_endpoint_timeouts_are_retried_then_end_the_episode(server, tmp_path):
    server.play(("sleep", 1.5), ("sleep", 1.5), ("sleep", 1.5))
    client = make_client(server.url, tmp_path, timeout_s=0.3, max_retries=1)
    ep = run_episode(EndpointAgent(client), FakeToolbox(), kind="adl", budget=1, protocol="text")
    assert ep.status == "error" and "timed out" in ep.error and server.n_requests == 2


def test_local_agent_runs_in_process_and_stays_within_the_context(tmp_path):
    from conftest import save_tiny
    from difflens.agent.providers import LocalAgent

    agent = LocalAgent(str(save_tiny(tmp_path, "llama")), max_new_tokens=4)
    ep = run_episode(agent, FakeToolbox(), kind="adl", budget=1, max_turns=2, protocol="auto")
    assert ep.protocol == "text" and ep.turns_used == 2 and ep.status in ("final", "no_final")
    limit = agent._lm.model.config.max_position_embeddings
    long = [{"role": "system", "content": "s"}, {"role": "user", "content": "overview"}] + \
        [{"role": "user", "content": "cake " * (limit // 4)} for _ in range(6)]
    r = agent.respond(long, None, salt="x")  # trimmed to fit: no position overflow
    assert isinstance(r.text, str) and r.usage.prompt_tokens <= limit - 4


def test_a_crashing_provider_ends_the_episode_in_an_error_state():
    class Crashes(Scripted):
        def respond(self, messages, tools, *, salt):
            if len(messages) > 2:
                raise RuntimeError("CUDA out of memory")
            return super().respond(messages, tools, salt=salt)

    ep = run_episode(Crashes(ASK), FakeToolbox(), kind="adl", budget=5, protocol="text")
    assert ep.status == "error" and "RuntimeError: CUDA out of memory" in ep.error and ep.interactions_used == 2


def test_the_format_hint_is_stated_once():
    ep = run_episode(Scripted("no idea", FINAL), FakeToolbox(), kind="adl", budget=1, protocol="text")
    hint = ep.messages[3].content
    assert hint.count("the last non-empty line must be") == 1
