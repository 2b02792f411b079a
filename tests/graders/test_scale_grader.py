"""The Patchscope scale grader: offline choice and the LLM prompt/parser."""
from __future__ import annotations

import pytest

from difflens.graders import OfflineScaleGrader, tournament
from difflens.graders.scale import parse_patchscope_scale, patchscope_scale_messages


def test_offline_scale_grader_prefers_a_coherent_set():
    g = OfflineScaleGrader()
    cands = {1.0: ["Ġthe", "Ġ1135", "Ġzx", "Ġqq", "Ġand", "Ġhello", "Ġ42"],
             2.0: ["Ġcake", "Ġbaking", "Ġoven", "Ġflour", "Ġsugar", "Ġthe", "Ġ1135", "Ġbutter"],
             3.0: ["Ġcar", "Ġcake", "Ġriver", "Ġpolitics", "Ġguitar"]}
    scale, sel, _ = tournament(g, cands)
    assert scale == 2.0
    words = {s.strip("Ġ") for s in sel}
    assert {"cake", "oven", "flour", "sugar"} <= words and "1135" not in words and "the" not in words


# --------------------------------------------------------------------------------------------
# Patchscope scale
# --------------------------------------------------------------------------------------------

OFFERED = {
    0.5: ["▁the", "▁of", ",", "▁and"],
    2.0: ["▁cake", "▁bake", "▁oven", "▁the", "▁sugar", " flour", "Ċ"],
    20.0: ["▁zx", "::", "▁qv"],
}


def test_patchscope_messages_list_every_scale_and_token():
    msgs = patchscope_scale_messages(OFFERED)
    user = msgs[1]["content"]
    for s in ("SCALE 0.5:", "SCALE 2:", "SCALE 20:"):
        assert s in user
    assert '"▁oven"' in user and '" flour"' in user
    assert "Offered scales: 0.5, 2, 20" in user
    assert "BEST_SCALE" in msgs[0]["content"]


def test_patchscope_messages_limits():
    with pytest.raises(ValueError):
        patchscope_scale_messages({})
    with pytest.raises(ValueError):
        patchscope_scale_messages({float(i): ["a"] for i in range(11)})


def test_parse_patchscope_good():
    reply = (
        "Scale 0.5 is stopwords, 20 is noise. 2 is about baking.\n"
        'BEST_SCALE: 2\nTOKENS: "▁cake" | "▁bake" | "▁oven" | "▁sugar" | " flour"'
    )
    scale, toks = parse_patchscope_scale(reply, OFFERED)
    assert scale == 2.0
    assert toks == ["▁cake", "▁bake", "▁oven", "▁sugar", " flour"]


def test_parse_patchscope_normalises_markers_and_drops_unoffered():
    reply = (
        "**BEST_SCALE:** 2.0\n"
        "**TOKENS:** cake | BAKE | ▁Oven | chocolate | ▁zx | cake"
    )
    scale, toks = parse_patchscope_scale(reply, OFFERED)
    assert scale == 2.0
    # chocolate is invented, zx belongs to another scale, cake duplicated -> dropped
    assert toks == ["▁cake", "▁bake", "▁oven"]


def test_parse_patchscope_accepts_paper_style_tag_and_none():
    scale, toks = parse_patchscope_scale("BEST_SCALER: 20\nTOP_TOKENS: none", OFFERED)
    assert (scale, toks) == (20.0, [])
    scale, toks = parse_patchscope_scale("```\nBEST_SCALE: 0.50\nTOKENS:\n```", OFFERED)
    assert (scale, toks) == (0.5, [])


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "I like scale 2 best.",
        "BEST_SCALE: 3\nTOKENS: cake",  # not offered
        "BEST_SCALE: 2\nBEST_SCALE: 20\nTOKENS: cake",  # conflicting scales
        "BEST_SCALE: 2 or 20\nTOKENS: cake",  # two numbers
        "BEST_SCALE: two\nTOKENS: cake",
        "BEST_SCALE: 2",  # no tokens line
        'BEST_SCALE: 2\nTOKENS: "▁cake"\nTOKENS: "▁oven"',  # conflicting token lines
        "BEST_SCALE: 2\nTOKENS: cake\nHope this helps!",  # trailing text
        "TOKENS: cake\nBEST_SCALE: 2",  # wrong order
        "BEST_SCALE: nan\nTOKENS: cake",
    ],
)
def test_parse_patchscope_rejects(reply):
    with pytest.raises(ValueError):
        parse_patchscope_scale(reply, OFFERED)
