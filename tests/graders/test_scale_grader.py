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


# --------------------------------------------------------------------------------------------
# Offline scale grader: mutually related words, not "many dictionary words"
# --------------------------------------------------------------------------------------------

UNRELATED = [" government", " season", " album", " river", " computer", " football", " language", " painting",
             " hospital", " island", " bridge", " planet", " novel", " engine", " village", " prison",
             " chemistry", " airport", " emperor", " festival"]
BAKING = [" cake", " the", " oven", " flour", ",", " sugar", " 1135", " butter", "ing", " baking", " dough", " and",
          " vanilla", "\n", " of", " (", ":", " ", " a", " is"]


def test_offline_scale_prefers_eight_baking_words_over_twenty_unrelated_words():
    g = OfflineScaleGrader()
    scale, sel, _ = tournament(g, {1.0: UNRELATED, 2.0: BAKING})
    assert scale == 2.0
    words = {s.strip() for s in sel}
    assert {"cake", "oven", "flour", "sugar", "butter", "baking"} <= words
    assert not words & {"the", "1135", "ing", "and", ","}


def test_offline_scale_unrelated_words_form_no_large_group():
    sel, _ = OfflineScaleGrader().cluster(UNRELATED)
    assert len(sel) <= 3


def test_offline_scale_ignores_generic_verbs_and_fragments():
    g = OfflineScaleGrader()
    cands = {0.7: [" make", " write", " build", " use", " work", " create", " help", " find", " take", " give"],
             1.2: [" roman", " the", " romans", ",", " ancient", " Rome", " empire", " of", " a", " is"],
             10.0: [" acknowled", " necessit", " enthus", " strugg", " authent", " bene", " extraord", " corrid"]}
    scale, sel, _ = g.choose(cands)
    assert scale == 1.2
    assert {"roman", "romans", "Rome"} <= {s.strip() for s in sel}


def test_offline_scale_counts_inflections_once():
    g = OfflineScaleGrader()
    scale, _, _ = g.choose({1.0: [" fan", " fans", " the", ","], 2.0: [" piano", " violin", " guitar", " the"]})
    assert scale == 2.0


def test_offline_scale_without_any_group_falls_back_to_a_content_word():
    g = OfflineScaleGrader()
    scale, sel, note = g.choose({0.5: [",", ".", " the"], 2.0: ["::", " volcano", " zx", "]]"]})
    assert (scale, sel) == (2.0, [" volcano"]) and "no coherent group" in note
    scale, sel, _ = g.choose({0.5: [",", "."], 1.0: [" the", "ing"]})
    assert sel == []


def test_scale_grader_identity_tracks_what_changes_verdicts():
    a = OfflineScaleGrader().identity()
    assert a["backend"] == "offline" and a["embedder"] and "min_pair" in a
    assert OfflineScaleGrader(min_pair=0.3).identity() != a
    assert OfflineScaleGrader(embedder="sentence-transformers/other").identity() != a
    assert OfflineScaleGrader().identity() == a


def test_llm_scale_grader_identity_names_model_and_endpoint_not_key():
    from types import SimpleNamespace

    from difflens.graders import LLMScaleGrader

    client = SimpleNamespace(config=SimpleNamespace(model="m1", base_url="https://x.test/v1", api_key_env="SECRET"))
    ident = LLMScaleGrader(client).identity()
    assert ident["model"] == "m1" and ident["base_url"] == "https://x.test/v1" and ident["backend"] == "llm"
    assert "SECRET" not in str(ident)
    other = SimpleNamespace(config=SimpleNamespace(model="m2", base_url="https://x.test/v1"))
    assert LLMScaleGrader(other).identity() != ident
