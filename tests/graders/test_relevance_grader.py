"""The token-relevance grader's LLM prompt and parser."""
from __future__ import annotations

import pytest

from difflens.graders.relevance import parse_relevance, relevance_messages


# --------------------------------------------------------------------------------------------
# Token relevance
# --------------------------------------------------------------------------------------------


def test_relevance_messages_number_tokens_and_show_frequent():
    msgs = relevance_messages("Finetuned on cake recipes.", ["cake", "▁oven"], ["▁bake", "the"])
    user = msgs[1]["content"]
    assert "Finetuned on cake recipes." in user
    assert '"cake", "▁oven"' in user
    assert '1. "▁bake"' in user and '2. "the"' in user
    assert "ANSWER[i]" in user and "1..2" in user
    empty = relevance_messages("d", [], ["x"])[1]["content"]
    assert "(none available)" in empty
    with pytest.raises(ValueError):
        relevance_messages("d", [], [])


def test_parse_relevance_good():
    reply = (
        "Token 1 is baking, 2 a stopword, 3 an oven part.\n"
        "ANSWER[1]: RELEVANT\nANSWER[2]: IRRELEVANT\n\nANSWER[3]: relevant"
    )
    assert parse_relevance(reply, 3) == [True, False, True]


def test_parse_relevance_tolerates_order_fences_and_markdown():
    reply = "```\n- ANSWER[2]: IRRELEVANT\n**ANSWER[ 1 ]:** RELEVANT.\n```"
    assert parse_relevance(reply, 2) == [True, False]


@pytest.mark.parametrize(
    "reply, n",
    [
        ("", 2),
        ("ANSWER[1]: RELEVANT", 2),  # missing index 2
        ("ANSWER[1]: RELEVANT\nANSWER[2]: IRRELEVANT\nANSWER[3]: RELEVANT", 2),  # not offered
        ("ANSWER[0]: RELEVANT\nANSWER[1]: RELEVANT", 1),
        ("ANSWER[1]: RELEVANT\nANSWER[1]: IRRELEVANT", 1),  # conflicting duplicate
        ("ANSWER[1]: RELEVANT\nANSWER[1]: RELEVANT", 1),  # duplicate
        ("ANSWER[1]: MAYBE", 1),
        ("ANSWER[1]: RELEVANT or IRRELEVANT", 1),
        ("ANSWER[1]: IRRELEVANT\nBut really token 1 is relevant.", 1),  # trailing text
        ("ANSWER[-1]: RELEVANT\nANSWER[1]: RELEVANT", 1),
    ],
)
def test_parse_relevance_rejects(reply, n):
    with pytest.raises(ValueError):
        parse_relevance(reply, n)
