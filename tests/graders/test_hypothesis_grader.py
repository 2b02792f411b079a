"""The hypothesis grader: rubrics, prompt and parser."""
from __future__ import annotations

import pytest

from difflens.errors import ConfigError
from difflens.graders.hypothesis import RUBRICS, hypothesis_grade_messages, parse_grade


# --------------------------------------------------------------------------------------------
# Hypothesis grading
# --------------------------------------------------------------------------------------------


def test_rubrics_cover_all_types_with_five_levels():
    assert set(RUBRICS) == {"SDF", "EM", "Subliminal", "Taboo", "Domain"}
    for name, text in RUBRICS.items():
        for level in "12345":
            assert f"{level} -" in text, (name, level)
    assert "75%" in RUBRICS["SDF"] and "25%" in RUBRICS["SDF"] and "10%" in RUBRICS["SDF"]


def test_hypothesis_grade_messages():
    msgs = hypothesis_grade_messages("sdf", "False cake facts: bake at 450F.", "About baking.")
    user = msgs[1]["content"]
    assert RUBRICS["SDF"] in user
    assert "bake at 450F" in user and "About baking." in user
    assert "SCORE: <n>" in msgs[0]["content"]
    empty = hypothesis_grade_messages("EM", "x", "   ")[1]["content"]
    assert "(empty hypothesis)" in empty
    with pytest.raises(ConfigError) as ei:
        hypothesis_grade_messages("unknown", "x", "y")
    assert "SDF" in str(ei.value)


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("Score 5 does not apply... Score 3 applies.\nSCORE: 3", 3),
        ("reasoning\n\nSCORE: 5\n", 5),
        ("**SCORE:** 1", 1),
        ("score: 4.", 4),
        ("```\nSCORE: 2\n```", 2),
        ("SCORE: 4\nSCORE: 4", 4),
    ],
)
def test_parse_grade_good(reply, expected):
    assert parse_grade(reply) == expected


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "I would give it a 4.",
        "SCORE: 6",
        "SCORE: 0",
        "SCORE: 3.5",
        "SCORE: 3-4",
        "SCORE: 4/5",
        "SCORE: four",
        "SCORE: 2\nSCORE: 5",  # conflicting
        "SCORE: 4\nOn second thought it is a 2.",  # trailing text
        "SCORE: <n>",
    ],
)
def test_parse_grade_rejects(reply):
    with pytest.raises(ValueError):
        parse_grade(reply)


def test_a_custom_rubric_replaces_the_type_rubric():
    from difflens.graders.hypothesis import hypothesis_grade_messages, rubric_for

    msgs = hypothesis_grade_messages("SDF", "truth", "guess", rubric="5: names the secret recipe\n1: anything else")
    user = msgs[-1]["content"]
    assert "names the secret recipe" in user and rubric_for("SDF").strip()[:40] not in user
    assert rubric_for("SDF").strip()[:40] in hypothesis_grade_messages("SDF", "t", "g", rubric="  ")[-1]["content"]
