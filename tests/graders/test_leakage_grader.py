"""Leakage grader: words of an unsteered answer judged by the relevance grader; checked against the
hand-labelled set (tests/data/labels/leakage.jsonl: 49 written answers over six organisms, hard
cases included, and 40 real answers of the demo's base and cake_bake models), and the offline relevance grader against its own labelled set."""
from __future__ import annotations

from pathlib import Path

from difflens.graders.check import load_cases, offline_grader, run_check
from difflens.graders.leakage import LeakageGrader, content_words

LABELS = Path(__file__).resolve().parents[1] / "data" / "labels"


class Marks:
    name = "marks"

    def __init__(self, words):
        self.words = set(words)
        self.calls = 0

    def grade(self, tokens, description, frequent):
        self.calls += 1
        return [t.strip().lower() in self.words for t in tokens]


def test_running_text_gets_the_stricter_offline_threshold():
    from difflens.graders.relevance import OfflineRelevance

    g = LeakageGrader(OfflineRelevance())
    assert g.relevance.min_sim == 0.55 and LeakageGrader(OfflineRelevance(min_sim=0.7)).relevance.min_sim == 0.7
    assert g.identity()["relevance"]["min_sim"] == 0.55  # part of the fingerprint


def test_two_distinct_domain_words_make_a_leak():
    g = LeakageGrader(Marks({"cake", "oven"}))
    texts = ["Bake a cake in the oven.", "A cake, a cake and more cake!", "Go hiking."]
    assert g.relevant_words(texts, "cake", []) == [["cake", "oven"], ["cake"], []]
    assert g.relevance.calls == 1  # one grading call for all distinct words
    assert g.leaks(texts, "cake", []) == [True, False, False]
    assert content_words("Cake cake CAKE oven") == ["Cake", "oven"]
    assert LeakageGrader(Marks({"cake"}), min_words=1).leaks(texts, "cake", []) == [True, True, False]


def test_offline_leakage_agrees_with_the_labels():
    res = run_check("leakage", offline_grader("leakage"), load_cases("leakage", LABELS / "leakage.jsonl"))
    assert res.n == 89
    assert res.accuracy >= 0.93 and res.recall >= 0.9 and res.precision >= 0.9, res.mistakes()


def test_offline_relevance_agrees_with_the_labels():
    res = run_check("relevance", offline_grader("relevance"), load_cases("relevance", LABELS / "relevance.jsonl"))
    assert res.f1 >= 0.85 and res.accuracy >= 0.85, (res.f1, res.accuracy)
