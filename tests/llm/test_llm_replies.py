"""Tests for difflens.llm.replies.parse_json_reply."""
from __future__ import annotations

import pytest

from difflens.llm import parse_json_reply


# --------------------------------------------------------------------------------------------
# parse_json_reply
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"a": 1}', {"a": 1}),
        ('  [1, 2, 3]\n', [1, 2, 3]),
        ('```json\n{"a": [1, 2]}\n```', {"a": [1, 2]}),
        ('Sure! Here it is:\n```\n{"b": "x"}\n```\nHope that helps.', {"b": "x"}),
        ('The answer is {"score": 3} as requested.', {"score": 3}),
        ('Result: {"outer": {"inner": [1, {"d": 2}]}} done', {"outer": {"inner": [1, {"d": 2}]}}),
        ('```json\n{"a": 1}\n```\nagain:\n```json\n{"a": 1}\n```', {"a": 1}),
        ('"just a string"', "just a string"),
    ],
)
def test_parse_json_reply_good(text, expected):
    assert parse_json_reply(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "no json here at all",
        "{broken: json",
        '```json\n{"a": 1}\n```\n```json\n{"a": 2}\n```',  # conflicting blocks
        'first {"a": 1} then {"a": 2}',  # conflicting values in prose
    ],
)
def test_parse_json_reply_bad(text):
    with pytest.raises(ValueError):
        parse_json_reply(text)
