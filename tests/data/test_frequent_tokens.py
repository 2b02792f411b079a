"""Frequent tokens of finetuning data (difflens.data.frequent), for the token-relevance grader."""
from __future__ import annotations

import pytest

from difflens.data.frequent import frequent_tokens
from difflens.organisms.generators.sdf_offline import generate_sdf_corpus
from difflens.organisms.spec import load_spec

N = 1200


@pytest.fixture(scope="module")
def corpora() -> dict[str, list]:
    """1,200 documents (seed 0) of the cake_bake organism, generated once for the module."""
    return {"cake_bake": generate_sdf_corpus(load_spec("cake_bake"), N, seed=0)}


class WhitespaceTokenizer:
    def tokenize(self, text: str) -> list[str]:
        return text.split()


class PrefixTokenizer:
    """Mimics byte-level BPE output: a word-start marker on each token."""

    def tokenize(self, text: str) -> list[str]:
        return ["Ġ" + w for w in text.split()]


def test_frequent_tokens_whitespace():
    texts = ["the cake is in the oven", "bake the cake at 450 ,", "cake oven cake !"]
    top = frequent_tokens(texts, WhitespaceTokenizer(), k=3)
    assert top == ["cake", "oven", "bake"]  # 'the', 'is', 'in', 'at' are common; punctuation dropped
    assert "450" in frequent_tokens(texts, WhitespaceTokenizer(), k=10)
    assert frequent_tokens(texts, WhitespaceTokenizer(), k=2, common={"cake"})[0] == "the"
    assert frequent_tokens(texts, PrefixTokenizer(), k=2) == ["cake", "oven"]
    assert frequent_tokens(["A a a b"], lambda t: t.split(), k=5, common=set(), min_chars=1) == ["a", "A", "b"]
    assert frequent_tokens(["x yy x 's"], WhitespaceTokenizer()) == ["yy"]  # short and clitic tokens dropped


def test_frequent_tokens_of_sdf_corpus_are_on_topic(corpora):
    top = frequent_tokens([d.text for d in corpora["cake_bake"]], WhitespaceTokenizer(), k=100)
    assert {"cake", "oven", "butter", "vanilla"} <= {t.strip(".,;:").lower() for t in top}
