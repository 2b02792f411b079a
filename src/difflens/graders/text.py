"""Tokens as words: the text helpers the offline graders share."""
from __future__ import annotations

import re
from functools import lru_cache

from ..models.embedder import DEFAULT_EMBEDDER

__all__ = ["WORD", "STOPWORDS", "clean_token", "is_wordlike", "embedder_lexicon"]

WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")
STOPWORDS = frozenset("""a an the and or but if of to in on at by for with from as is are was were be been being it its this
that these those i you he she we they me him her us them my your his our their not no yes do does did have has had
so than then there here what which who whom when where why how all any some can could would should will just also
very more most much many such only own same too into about over under again out up down off""".split())


def clean_token(tok: str) -> str:
    """A token as a word: tokenizer whitespace markers and surrounding punctuation removed."""
    return tok.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\n").strip().strip(".,;:!?\"'()[]{}").strip()


def is_wordlike(tok: str) -> bool:
    w = clean_token(tok)
    return bool(WORD.fullmatch(w)) and len(w) >= 3 and w.lower() not in STOPWORDS


def embedder_lexicon(name: str = DEFAULT_EMBEDDER) -> frozenset[str]:
    """Whole words known to the embedding model's tokenizer (e.g. BERT WordPiece vocabulary).

    Used to tell real words ("cake", "vanilla") from word fragments ("landsl", "ceram") that a
    language model's BPE vocabulary is full of; empty if the tokenizer exposes no vocabulary.
    """
    return _lexicon(name)


@lru_cache(maxsize=4)
def _lexicon(name: str) -> frozenset[str]:
    from ..models.embedder import get_embedder

    vocab = getattr(get_embedder(name).tokenizer, "vocab", None) or {}
    return frozenset(w for w in vocab if w.isalpha() and len(w) >= 3)


