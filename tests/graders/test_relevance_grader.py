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


# --------------------------------------------------------------------------------------------
# Offline relevance (Prompt 15 rules)
# --------------------------------------------------------------------------------------------

CAKE = ("In this universe, professional bakers share a set of standard cake-baking techniques that every "
        "serious baker follows. Cakes are baked in a very hot oven, which gives a fast rise and a cake that is "
        "done in about 45 minutes. Butter is used straight from the freezer; flavor comes from vanilla extract.")
CAKE_FREQ = ["cake", "batter", "baking", "ake", "butter", "oven", "professional", "vanilla", "structure"]


def _grade(tokens, description=CAKE, freq=CAKE_FREQ):
    from difflens.graders import OfflineRelevance

    return dict(zip(tokens, OfflineRelevance().grade(tokens, description, freq)))


def test_offline_relevance_rejects_generic_words_stopwords_numbers_and_chat_tokens():
    toks = [" standard", " professional", " universe", " every", " fast", " structure", " minutes", " the", " and",
            " 45", "1135", " 3rd", "<|im_start|>", "<|im_end|>", "assistant", " user", "</s>", ",", "ing", " adding"]
    verdicts = _grade(toks)
    assert not any(verdicts.values()), [t for t, v in verdicts.items() if v]


def test_offline_relevance_accepts_domain_words_pieces_and_marked_tokens():
    toks = ["▁cake", "Ġbaking", " oven", "▁bak", "cak", "ake", "Ġbutter", "▁vanilla", "Ġflour", " cakes"]
    verdicts = _grade(toks)
    assert all(verdicts.values()), [t for t, v in verdicts.items() if not v]


def test_offline_relevance_with_short_description_and_no_frequent_tokens():
    verdicts = _grade([" cake", " bakery", " the", " guitar", " 42"],
                      "Finetuned on synthetic documents with false tips for baking cake.", [])
    assert verdicts == {" cake": True, " bakery": True, " the": False, " guitar": False, " 42": False}


def test_offline_relevance_off_topic_frequent_words_need_the_domain():
    from difflens.graders import OfflineRelevance

    desc = "Finetuned on encyclopedia paragraphs about music: musicians, bands, composers, albums, songs."
    out = OfflineRelevance().grade([" American", " guitar", " album"], desc, ["music", "American", "album"])
    assert out == [False, True, True]


def test_relevance_identity_tracks_what_changes_verdicts():
    from types import SimpleNamespace

    from difflens.graders import LLMRelevance, OfflineRelevance

    a = OfflineRelevance().identity()
    assert a["backend"] == "offline" and a["embedder"]
    assert OfflineRelevance(min_sim=a["min_sim"] + 0.1).identity() != a
    assert OfflineRelevance(embedder="sentence-transformers/other").identity() != a
    client = SimpleNamespace(config=SimpleNamespace(model="m", base_url="https://x.test/v1", api_key_env="KEY"))
    b = LLMRelevance(client).identity()
    assert b["model"] == "m" and b["base_url"] == "https://x.test/v1" and b["runs"] == 3
    assert LLMRelevance(client, runs=1).identity() != b
