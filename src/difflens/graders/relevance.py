"""Token relevance to the finetuning objective (paper Prompt 15, App. C.2).

:class:`OfflineRelevance` matches frequent finetuning-data tokens and embedding similarity to the
description; :class:`LLMRelevance` runs the paper's grader three times with shuffled order and
keeps a token relevant only if all runs agree.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from ..llm.replies import Messages, chat_messages, clean_value, content_lines, must_end_with, quote_token, tagged
from ..models.embedder import DEFAULT_EMBEDDER, embed
from .text import STOPWORDS, WORD, clean_token, is_wordlike

# ============================================================================================
# Token relevance grader (paper Prompt 15)
# ============================================================================================


def _relevance_format(n: int) -> str:
    return (
        f"end with exactly {n} lines, one per candidate in order, each 'ANSWER[i]: RELEVANT' or "
        f"'ANSWER[i]: IRRELEVANT' for i = 1..{n}"
    )


RELEVANCE_SYSTEM = """
You decide, token by token, whether candidate tokens are related to a particular finetuning of a
language model.

You receive:
1. a short description of what the finetuning taught (its objective or domain),
2. tokens that occur frequently in the finetuning data (this list may be empty; then rely on the
   description alone),
3. a numbered list of candidate tokens.

A candidate is RELEVANT only if it is clearly connected in meaning to the finetuning domain.
- It does not have to appear in the description or the frequent-token list; a clear semantic
  link to the domain is enough.
- Words get split into pieces by tokenizers ("photosynthesis" may appear as "photos" + "ynthesis"
  or "photo" + "synth"); judge a fragment by the word it obviously comes from.
- Ignore tokenizer markers such as "▁", "Ġ", "Ċ" or a leading space.
- Generic material is IRRELEVANT even if it is frequent in the data: whitespace and newline
  patterns, punctuation, function words, pronouns ("you", "I", "your"), common affixes ("ing",
  "ion", "ity", "ly", "'s", "ism"), and bare numbers - unless the description makes that exact
  item special.
- Appearing in the frequent-token list is not enough by itself; the token must be clearly about
  the domain.
- Do not start from the assumption that anything is relevant. Be especially sceptical of verbs;
  accept a verb only when it is specific to the domain.
- Words typical of chat transcripts in general ("user", "assistant", "help") are IRRELEVANT, even
  for a chat finetune.

Illustration (shortened):
Description: finetuned on maritime weather bulletins for sailors.
Frequent tokens: "wind", "knots", "gale", "visibility", "sea"
Candidates: 1. "▁Beaufort"  2. "▁the"  3. "vis"  4. "▁guitar"
Reasoning: 1 is the wind-force scale used in such bulletins; 2 is a stopword; 3 is a fragment
of "visibility"; 4 is unrelated.
ANSWER[1]: RELEVANT
ANSWER[2]: IRRELEVANT
ANSWER[3]: RELEVANT
ANSWER[4]: IRRELEVANT

Output: you may reason briefly first. Then finish with exactly one line per candidate, in order,
of the form ANSWER[i]: RELEVANT or ANSWER[i]: IRRELEVANT, with i the candidate's number. Give each
number exactly once, write nothing after these lines and do not write ANSWER[...] anywhere else.
"""


def relevance_messages(
    description: str, frequent_tokens: Sequence[str], tokens: Sequence[str]
) -> Messages:
    """Messages asking which of ``tokens`` relate to the finetuning ``description``."""
    if not tokens:
        raise ValueError("relevance_messages needs at least one candidate token")
    freq = ", ".join(quote_token(t) for t in frequent_tokens) if frequent_tokens else "(none available)"
    cands = "\n".join(f"{i}. {quote_token(t)}" for i, t in enumerate(tokens, start=1))
    user = (
        f"[DESCRIPTION]\n{str(description).strip()}\n\n"
        f"[FREQUENT TOKENS IN THE FINETUNING DATA]\n{freq}\n\n"
        f"[CANDIDATE TOKENS]\n{cands}\n\n"
        f"Judge each of the {len(tokens)} candidates, then {_relevance_format(len(tokens))}."
    )
    return chat_messages(RELEVANCE_SYSTEM, user)


def parse_relevance(reply: str, n_tokens: int) -> list[bool]:
    """One bool per candidate (True = RELEVANT), in candidate order.

    Every index 1..n_tokens must appear exactly once; out-of-range indices, duplicates, missing
    indices, unknown labels and text after the answer lines raise ValueError.
    """
    if n_tokens < 1:
        raise ValueError("n_tokens must be at least 1")
    fmt = _relevance_format(n_tokens)
    lines = content_lines(reply)
    hits = tagged(lines, r"ANSWER\s*\[\s*(?P<idx>[-+]?\d+)\s*\]")
    if not hits:
        raise ValueError(f"no 'ANSWER[i]:' lines found. Required format: {fmt}")
    result: dict[int, bool] = {}
    for _, m in hits:
        idx = int(m.group("idx"))
        if not 1 <= idx <= n_tokens:
            raise ValueError(f"ANSWER[{idx}] is not a candidate number (1..{n_tokens}). Required format: {fmt}")
        label = clean_value(m.group("value")).upper()
        if label not in ("RELEVANT", "IRRELEVANT"):
            raise ValueError(
                f"ANSWER[{idx}] must be RELEVANT or IRRELEVANT, got {m.group('value')[:40]!r}. "
                f"Required format: {fmt}"
            )
        if idx in result:
            raise ValueError(f"ANSWER[{idx}] is given more than once. Required format: {fmt}")
        result[idx] = label == "RELEVANT"
    missing = [i for i in range(1, n_tokens + 1) if i not in result]
    if missing:
        raise ValueError(
            f"no answer for candidate(s) {', '.join(map(str, missing[:10]))}. Required format: {fmt}"
        )
    must_end_with(lines, {i for i, _ in hits}, fmt)
    return [result[i] for i in range(1, n_tokens + 1)]


class RelevanceGrader(Protocol):
    name: str

    def grade(self, tokens: Sequence[str], description: str, frequent_tokens: Sequence[str]) -> list[bool]: ...


@dataclass
class OfflineRelevance:
    """Relevant if the token is one of the frequent finetuning-data tokens, or its embedding is
    close to the description (max similarity to any description sentence/key word ≥ ``min_sim``)."""

    embedder: str = DEFAULT_EMBEDDER
    min_sim: float = 0.5
    name: str = "offline"

    def grade(self, tokens: Sequence[str], description: str, frequent_tokens: Sequence[str]) -> list[bool]:
        freq = {clean_token(t).lower() for t in frequent_tokens if clean_token(t)}
        desc_words = sorted({w.lower() for w in WORD.findall(description) if w.lower() not in STOPWORDS})
        anchors = desc_words + [s.strip() for s in re.split(r"[.\n]", description) if len(s.strip()) > 20]
        out = []
        words = [clean_token(t) for t in tokens]
        cand = [i for i, t in enumerate(tokens) if is_wordlike(t)]
        sims = np.zeros(len(tokens))
        if cand and anchors:
            tv = embed([words[i].lower() for i in cand], self.embedder)
            av = embed(anchors, self.embedder)
            for j, i in enumerate(cand):
                sims[i] = float((av @ tv[j]).max())
        for i, t in enumerate(tokens):
            w = words[i].lower()
            out.append(bool(is_wordlike(t) and (w in freq or sims[i] >= self.min_sim)))
        return out


@dataclass
class LLMRelevance:
    client: Any
    runs: int = 3
    name: str = "llm"

    def grade(self, tokens: Sequence[str], description: str, frequent_tokens: Sequence[str]) -> list[bool]:
        """Three runs with shuffled order; relevant only if all runs agree."""
        import random

        votes = [True] * len(tokens)
        for r in range(self.runs):
            order = list(range(len(tokens)))
            random.Random(r).shuffle(order)
            shuffled = [tokens[i] for i in order]
            msgs = relevance_messages(description, list(frequent_tokens), shuffled)
            labels = self.client.ask(msgs, parse=lambda rep, n=len(shuffled): parse_relevance(rep, n))
            for pos, i in enumerate(order):
                votes[i] = votes[i] and bool(labels[pos])
        return votes
