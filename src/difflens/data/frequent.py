"""The most frequent non-common tokens of a text collection (an organism's finetuning data), for
the token-relevance grader."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["COMMON_ENGLISH_WORDS", "frequent_tokens", "token_counts"]

COMMON_ENGLISH_WORDS: frozenset[str] = frozenset(
    """
    a about above after again against all almost also although always am among an and another any
    anyone anything are around as at away back be became because become been before being below
    between both but by can cannot could did do does doing done down during each either else even
    ever every few first for from further get gets getting give given go goes going good got great
    had has have having he her here hers herself him himself his how however i if in into is it its
    itself just know known last later least less let like likely made make makes many may me might
    more most much must my myself need never new next no nor not now of off often on once one only
    or other others our ours ourselves out over own part per put quite rather really right said
    same say says see seem seems several shall she should show since so some something still such
    take than that the their theirs them themselves then there these they thing things this those
    though through thus to too toward under until up upon us use used using very want was way we
    well were what when where whether which while who whom whose why will with within without would
    yet you your yours yourself yourselves two three four five time times year years day days
    people man men woman women world life work long little old high small large big end number
    called often usually including include includes based among later early since around across
    along although become becomes becoming came come comes took take takes taken made found find
    also another however there's it's don't doesn't didn't isn't aren't wasn't weren't can't won't
    i'm you're we're they're that's what's here's let's i've you've we've they've i'd you'd he's
    she's 's 't 're 've 'll 'd 'm
    """.split()
)
"""Common English words removed from frequent-token lists (compared lower-case, stripped)."""

_TOKEN_PREFIXES = ("Ġ", "▁", "Ċ", "##")


def _tokenize_fn(tokenizer: Any) -> Callable[[str], list[str]]:
    if hasattr(tokenizer, "tokenize"):
        return tokenizer.tokenize
    if callable(tokenizer):
        return tokenizer
    raise TypeError("tokenizer must have .tokenize(text) -> list[str] or be callable on a string")


def frequent_tokens(
    texts: Iterable[str],
    tokenizer: Any,
    k: int = 100,
    common: set[str] | frozenset[str] | None = None,
    min_chars: int = 2,
    min_count: int = 1,
) -> list[str]:
    counts = token_counts(texts, tokenizer, common=common, min_chars=min_chars)
    return [t for t, c in counts.most_common(k) if c >= min_count]


def token_counts(
    texts: Iterable[str],
    tokenizer: Any,
    common: set[str] | frozenset[str] | None = None,
    min_chars: int = 2,
) -> Counter[str]:
    """Counts of the normalised tokens of ``texts`` (see :func:`frequent_tokens`, which keeps the
    ``k`` most frequent: the ``k`` most frequent tokens of ``texts``, excluding common English words).

    ``tokenizer`` is a HF tokenizer (``.tokenize``; tokens are turned into text with
    ``convert_tokens_to_string`` when available) or any object with ``.tokenize`` / a callable
    returning token strings. Tokens are normalized (word-boundary markers and surrounding
    whitespace stripped); tokens without a letter or digit, shorter than ``min_chars`` (single
    letters and digits of split words), or whose lower-cased form is in ``common`` (default
    :data:`COMMON_ENGLISH_WORDS`) are dropped. Counts of tokens with the same
    normalized form are merged; ties keep first-seen order; tokens seen fewer than ``min_count``
    times are dropped (paper App. C.2: count ≥ 10). Returns normalized token strings.
    """
    common_set = {c.lower() for c in (COMMON_ENGLISH_WORDS if common is None else common)}
    tok = _tokenize_fn(tokenizer)
    to_str = getattr(tokenizer, "convert_tokens_to_string", None)
    norm_cache: dict[str, str] = {}

    def norm(t: str) -> str:
        if t in norm_cache:
            return norm_cache[t]
        s = t
        if to_str is not None:
            try:
                s = to_str([t])
            except Exception:  # noqa: BLE001 - fall back to prefix stripping
                s = t
        for p in _TOKEN_PREFIXES:
            if s.startswith(p):
                s = s[len(p):]
        s = s.strip()
        norm_cache[t] = s
        return s

    counts: Counter[str] = Counter()
    for text in texts:
        for t in tok(text):
            s = norm(t)
            if len(s) < min_chars or not any(c.isalnum() for c in s) or s.lower() in common_set:
                continue
            counts[s] += 1
    return counts
