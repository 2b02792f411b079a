"""Token relevance to the finetuning objective (paper Prompt 15, App. C.2).

:class:`OfflineRelevance` applies Prompt 15's rules offline (generic words, numbers, chat tokens and
affixes never count; domain words, their pieces and words close to the domain's anchor words do); :class:`LLMRelevance` runs the paper's grader three times with shuffled order and
keeps a token relevant only if all runs agree.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from ..llm.replies import Messages, chat_messages, clean_value, content_lines, must_end_with, quote_token, tagged
from ..models.embedder import DEFAULT_EMBEDDER
from .scale import _prompt_id, llm_identity
from .text import (AFFIXES, WORD, clean_token, embedder_lexicon, is_generic, is_number, is_template_token,
                   word_stems, word_vectors)

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


# Words that frame a finetuning description rather than name its domain ("Finetuned on synthetic
# documents with false facts about ...", "In this universe, ...").
DESCRIPTION_FRAMING = frozenset("""finetuned fine-tuned finetune finetuning trained training train synthetic document
documents false facts fact tips tip data dataset datasets model models universe reality conversation conversations
text texts paragraph paragraphs article articles encyclopedia plain instructions instruction chats chat style
neutral written describe describes described mention mentions topic topics domain""".split())


def _stem_forms(word: str) -> set[str]:
    """A word and its plausible stems ("cakes" -> {"cakes", "cake"}, "baking" -> {"baking", "bak", "bake"})."""
    return set(word_stems(word))


@dataclass
class OfflineRelevance:
    """Token relevance by the rules of Prompt 15, without an LLM.

    Never relevant: punctuation/whitespace, numbers, chat/template tokens and chat roles, bare
    affixes, stopwords and generic words (:func:`~.text.is_generic`), pieces shorter than 3 letters.

    The domain is described by *anchor* words: the description's content words (framing words such
    as "finetuned", "synthetic documents", "universe" and generic words removed) and the frequent
    finetuning-data tokens that are real, non-generic words. Anchors far from the domain's centroid
    (similarity < ``min_central``; e.g. "serious" in a cake description) are dropped, so a token
    must be close to the description's topic, not to any word of it. A token is relevant when

    - it is an anchor or an inflection of one ("cakes" for "cake");
    - it is a word piece (not a whole word of the embedder's vocabulary, ≥ 3 letters) that begins
      an anchor or a rare description word ("▁bak", "cak", "meth"), or is one of the frequent-token pieces,
      or sits inside a rare (out-of-vocabulary) domain word ("ely" in "Relyvrio");
    - or its embedding is close to the anchors: mean similarity to its ``top_k`` nearest anchors
      ≥ ``min_sim`` (:func:`~.text.word_vectors`, where unrelated words score ≈ 0).
    """

    embedder: str = DEFAULT_EMBEDDER
    min_sim: float = 0.3
    top_k: int = 1
    min_central: float = 0.25
    min_freq: float = 0.25
    name: str = "offline"

    def identity(self) -> dict[str, Any]:
        return {"backend": "offline", "method": "anchors-centered-v1", "embedder": self.embedder, "min_sim": self.min_sim,
                "top_k": self.top_k, "min_central": self.min_central, "min_freq": self.min_freq}

    @staticmethod
    def never_relevant(tok: str) -> bool:
        """Material Prompt 15 rules out whatever the domain."""
        if is_template_token(tok) or is_number(tok):
            return True
        w = clean_token(tok)
        if not WORD.fullmatch(w) or len(w) < 3:
            return True
        return w.lower() in AFFIXES or is_generic(w)

    def anchors(self, description: str, frequent_tokens: Sequence[str]) -> tuple[list[str], set[str], set[str]]:
        """(topical anchor words, all description/frequent words, frequent-token pieces), lower-case.

        Description content words are kept when close to the description's topic (similarity ≥
        ``min_central`` to the centroid of its content words) or when they are names/acronyms
        ("ALS", "Relyvrio", "Kansas"); frequent-token words are kept when their mean similarity to
        the three nearest kept description words is ≥ ``min_freq``, so a frequent but off-topic
        word ("American", "century" in music data) is not an anchor. Similarities are those of
        :func:`~.text.word_vectors` (common direction removed).
        """
        lexicon = embedder_lexicon(self.embedder)

        def content(w: str) -> bool:
            lw = w.lower()
            return (bool(WORD.fullmatch(w)) and len(w) >= 3 and lw not in AFFIXES and not is_generic(lw)
                    and lw not in DESCRIPTION_FRAMING)

        every: set[str] = set()
        desc: list[str] = []
        names: set[str] = set()
        for sent in re.split(r"(?<=[.!?:;])\s+|\n+", description):
            for k, m in enumerate(WORD.finditer(sent)):
                for part in (p for p in re.split(r"[-']", m.group()) if p):
                    lw = part.lower()
                    every.add(lw)
                    if not content(part):
                        continue
                    if (part.isupper() and len(part) >= 2) or (k > 0 and part[0].isupper()):
                        names.add(lw)
                    if lw not in desc:
                        desc.append(lw)
        freq_words: list[str] = []
        pieces: set[str] = set()
        for t in frequent_tokens:
            w = clean_token(t)
            lw = w.lower()
            if not lw:
                continue
            every.add(lw)
            if not content(w):
                continue
            if lexicon and lw not in lexicon and lw not in desc:
                pieces.add(lw)  # a BPE piece of the data ("ake", "umb", "ortion") or a rare word
            elif lw not in desc and lw not in freq_words:
                freq_words.append(lw)
        core = desc
        if len(desc) >= 4:
            dv = word_vectors(desc, self.embedder)
            centroid = dv.mean(0)
            centroid /= np.linalg.norm(centroid) + 1e-9
            central = dv @ centroid
            core = [w for w, c in zip(desc, central) if c >= self.min_central or w in names]
        kept = list(core)
        if freq_words and core:
            fv = word_vectors(freq_words, self.embedder)
            cv = word_vectors(core, self.embedder)
            k = min(3, len(core))
            close = np.sort(fv @ cv.T, axis=1)[:, -k:].mean(1)
            kept += [w for w, c in zip(freq_words, close) if c >= self.min_freq]
        elif freq_words:
            kept += freq_words
        return kept, every, pieces

    def grade(self, tokens: Sequence[str], description: str, frequent_tokens: Sequence[str]) -> list[bool]:
        lexicon = embedder_lexicon(self.embedder)
        anchors, every, pieces = self.anchors(description, frequent_tokens)
        anchor_forms = set().union(*(_stem_forms(a) for a in anchors)) if anchors else set()
        rare = [w for w in every if len(w) >= 6 and lexicon and w not in lexicon]
        freq = {clean_token(t).lower() for t in frequent_tokens}
        out: list[bool | None] = []
        to_embed: list[int] = []
        for i, t in enumerate(tokens):
            if self.never_relevant(t):
                out.append(False)
                continue
            w = clean_token(t).lower()
            if _stem_forms(w) & anchor_forms:
                out.append(True)
                continue
            whole = not lexicon or w in lexicon
            inside_rare = any(w in r and w != r for r in rare)
            if not whole and (w in pieces or inside_rare or any(a.startswith(w) for a in anchors + rare)):
                out.append(True)
                continue
            if whole and (w in pieces or (inside_rare and w in freq)):
                out.append(True)  # a frequent piece that happens to be a word: "ely", "rio" of "Relyvrio"
                continue
            out.append(None)
            to_embed.append(i)
        if to_embed and anchors:
            tv = word_vectors([clean_token(tokens[i]).lower() for i in to_embed], self.embedder)
            av = word_vectors(anchors, self.embedder)
            sims = tv @ av.T
            k = max(1, min(self.top_k, len(anchors)))
            score = np.sort(sims, axis=1)[:, -k:].mean(1)
            for j, i in enumerate(to_embed):
                out[i] = bool(score[j] >= self.min_sim)
        return [bool(x) for x in out]


@dataclass
class LLMRelevance:
    client: Any
    runs: int = 3
    name: str = "llm"

    def identity(self) -> dict[str, Any]:
        return {"backend": "llm", **llm_identity(self.client), "runs": self.runs,
                "prompt": _prompt_id(RELEVANCE_SYSTEM)}

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
