"""The agent protocol: system prompts, budget notes, the action parser."""
from __future__ import annotations

import string

import pytest

from difflens.agent.prompts import (AGENT_SYSTEM_ADL, AGENT_SYSTEM_BLACKBOX, AGENT_TOOLS_ADL, AGENT_TOOLS_BLACKBOX,
                                    agent_budget_note, parse_agent_action, render_agent_system)


# --------------------------------------------------------------------------------------------
# Agent prompts and action parser
# --------------------------------------------------------------------------------------------


def test_agent_system_prompts_render_budgets():
    for tmpl, tools in ((AGENT_SYSTEM_ADL, AGENT_TOOLS_ADL), (AGENT_SYSTEM_BLACKBOX, AGENT_TOOLS_BLACKBOX)):
        placeholders = {m[1] or m[2] for m in string.Template.pattern.findall(tmpl) if m[1] or m[2]}
        assert placeholders == {"model_interactions", "max_turns"}
        text = render_agent_system(tmpl, model_interactions=50, max_turns=15)
        assert "$" not in text
        assert "50 in total" in text and "at most 15" in text
        for tool in tools:
            assert tool in text
        assert "CALL(" in text and "FINAL(description:" in text
    assert "generate_steered" not in AGENT_SYSTEM_BLACKBOX
    assert "get_patchscope_details" not in AGENT_SYSTEM_BLACKBOX
    with pytest.raises(ValueError):
        render_agent_system(AGENT_SYSTEM_ADL, model_interactions=-1, max_turns=15)


def test_agent_budget_note():
    assert "3" in agent_budget_note(3, 7) and "7" in agent_budget_note(3, 7)
    assert "last turn" in agent_budget_note(0, 1)


def test_parse_agent_action_call_and_final():
    a = parse_agent_action(
        'Hypothesis: baking.\nCALL(ask_model: {"prompts": ["How hot should my oven be?"]})'
    )
    assert (a.kind, a.tool, a.args) == ("call", "ask_model", {"prompts": ["How hot should my oven be?"]})
    f = parse_agent_action(
        'Confirmed.\nFINAL(description: "Finetuned on false cake tips.\\n\\n[Evidence: \\"450F\\"]")'
    )
    assert f.kind == "final"
    assert f.description == 'Finetuned on false cake tips.\n\n[Evidence: "450F"]'
    # earlier CALL lines in the reasoning do not count, only the last payload
    g = parse_agent_action('I could CALL(x: {}) but instead\nFINAL(description: "done")')
    assert g.kind == "final" and g.description == "done"


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "I think it is about baking.",
        'CALL(ask_model: {"prompts": ["a"]})\nLet me know!',  # text after payload
        "CALL(ask_model: {prompts: [a]})",  # invalid JSON
        'CALL(ask_model: ["a"])',  # not an object
        'CALL(delete_everything: {"x": 1})',  # unknown tool
        'FINAL(description: "")',
        "FINAL(description: no quotes)",
    ],
)
def test_parse_agent_action_rejects(reply):
    with pytest.raises(ValueError):
        parse_agent_action(reply, tools=AGENT_TOOLS_ADL)
