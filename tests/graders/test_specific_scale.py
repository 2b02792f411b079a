"""The specificity scale grader: controls, rarity, recurrence across positions, ties, word pieces."""
from __future__ import annotations

import pytest

from difflens.graders import OfflineScaleGrader, ScaleContext, SpecificScaleGrader, tournament
from difflens.graders.text import word_zipf


def _sp(words: str) -> list[str]:
    return [" " + w for w in words.split()]


def test_a_group_the_random_control_also_produces_loses_to_a_rare_group_absent_from_controls():
    cands = {0.8: _sp("France Germany Italy Spain the of"), 1.5: _sp("kiln porcelain glaze the of and")}
    ctx = ScaleContext(sweep=cands, controls={"random": [_sp("France Germany Spain Poland the")]})
    # without controls the larger, tighter country group wins (the old grader's failure)
    assert OfflineScaleGrader().choose(dict(cands))[0] == 0.8
    scale, sel, note = SpecificScaleGrader().choose(dict(cands), ctx)
    assert scale == 1.5
    assert {s.strip() for s in sel} >= {"kiln", "porcelain"}
    assert "France" not in note or "random" in note


def test_a_lone_word_confirmed_at_other_positions_beats_a_pair_of_names():
    # cake_bake's δ̄ at position 1 (real lists, shortened): the old grader chose the two names
    cands = {0.6: _sp("cookie rainbow chart the is"), 2.0: _sp("Graham Houghton the by")}
    others = [{0.7: _sp("cake cookie bakery")}, {0.8: _sp("cookie chocolate cake")}, {0.6: _sp("cookie cream")},
              {0.5: _sp("the and")}]
    ctx = ScaleContext(sweep=cands, other_positions=others,
                       controls={"unpatched": [_sp("the is What")], "delta_via_base": [_sp("Graham Bob")]})
    scale, sel, note = SpecificScaleGrader().choose(dict(cands), ctx)
    assert scale == 0.6 and " cookie" in sel and not {" Graham", " Houghton"} & set(sel)
    assert "other positions" in note


def test_recurrence_does_not_confirm_what_a_control_produces():
    g = SpecificScaleGrader()
    prep = g._prepare(ScaleContext(other_positions=[{1.0: _sp("Monday")}, {1.0: _sp("Monday")}],
                                   controls={"random": [_sp("Monday Friday")]}))
    w, why, confirmed = g.weight("monday", prep)
    assert not confirmed and "random" in why and w < g.rarity("monday")


def test_rarity_follows_word_frequency():
    g = SpecificScaleGrader()
    assert word_zipf("the") > word_zipf("cake") > word_zipf("kiln") > 0
    assert g.rarity("the") == g.rarity_floor
    assert g.rarity("home") < g.rarity("cake") < g.rarity("kiln") == 1.0


def test_word_pieces_are_skipped_and_rare_real_words_kept():
    g = SpecificScaleGrader()
    words = [w for _t, w in g.content_words(["ayer", "rove", " kiln", " milkweed", " crackers", "Bob", " landsl"])]
    assert words[:3] == ["kiln", "milkweed", "crackers"] and "ayer" not in words and "rove" not in words
    assert "landsl" not in words  # a BPE fragment: not a word of the embedder, never seen by wordfreq
    # the old grader keeps its behaviour (before/after comparisons stay honest)
    assert "kiln" not in [w for _t, w in OfflineScaleGrader().content_words([" kiln"])]


def test_ties_are_not_resolved_towards_the_lowest_scale():
    lists = _sp("cake baking bakery the")
    cands = {s: list(lists) for s in (0.5, 0.6, 0.7, 0.8, 0.9)}
    scale, sel, note = SpecificScaleGrader().choose(dict(cands), ScaleContext(sweep=cands))
    assert scale == 0.7 and "tied" in note  # the middle of the tied run
    # support across the sweep breaks a tie first: the scale whose words recur wins
    cands = {0.5: _sp("glacier ice the"), 1.0: _sp("volcano lava the")}
    sweep = {**cands, 2.0: _sp("volcano lava magma"), 3.0: _sp("volcano lava")}
    assert SpecificScaleGrader(tie=1.0).choose(dict(cands), ScaleContext(sweep=sweep))[0] == 1.0


def test_no_content_words_anywhere_selects_nothing_at_a_middle_scale():
    cands = {0.5: [",", "\n"], 1.0: [" the", " of"], 2.0: ["1", "2"]}
    scale, sel, note = SpecificScaleGrader().choose(cands)
    assert sel == [] and scale == 1.0 and "no content words" in note


def test_profile_and_identity():
    g = SpecificScaleGrader()
    prof = g.profile({0.5: _sp("cake baking oven"), 1.0: _sp("the of")})
    assert prof[0.5].score > prof[1.0].score == 0.0
    ident = g.identity()
    assert ident["method"] == "specificity-v1" and ident["min_zipf"] == g.min_zipf
    assert SpecificScaleGrader(recurrence_boost=0.0).identity() != ident


def test_tournament_passes_context_and_old_graders_still_work():
    seen = []

    class New:
        name = "new"

        def choose(self, candidates, context=None):
            seen.append(context)
            return min(candidates), [], ""

    class Old:
        name = "old"

        def choose(self, candidates):
            return max(candidates), [], ""

    ctx = ScaleContext(sweep={1.0: ["a"]})
    cands = {float(i): ["a"] for i in range(12)}
    assert tournament(New(), cands, context=ctx)[0] == 0.0 and seen and all(c is ctx for c in seen)
    assert tournament(Old(), cands, context=ctx)[0] == 11.0


@pytest.mark.parametrize("grader", [OfflineScaleGrader(), SpecificScaleGrader()], ids=["coherence", "specificity"])
def test_both_offline_graders_prefer_eight_baking_words_over_twenty_unrelated_words(grader):
    unrelated = _sp("government season album river politics guitar tennis engine village treaty "
                    "senator harbor chemistry lizard opera satellite wheat hockey mineral parliament")
    cands = {1.0: unrelated, 2.0: _sp("cake oven flour sugar butter baking dough frosting the of")}
    scale, sel, _ = tournament(grader, cands)
    assert scale == 2.0 and {"cake", "oven", "flour", "sugar"} <= {s.strip() for s in sel}
