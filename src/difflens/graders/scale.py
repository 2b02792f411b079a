"""Patchscope scale choice and the semantically coherent token subset (paper Prompt 21).

The paper's selection is a tournament: the grader picks a winner per batch of 10 scales, then a
final among the winners. :class:`OfflineScaleGrader` scores token sets by embedding coherence;
:class:`LLMScaleGrader` asks an OpenAI-compatible endpoint.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from ..llm.replies import (Messages, chat_messages, clean_value, content_lines, fmt_scale, must_end_with,
                           quote_token, tagged)
from ..models.embedder import DEFAULT_EMBEDDER
from .text import (AFFIXES, WORD, clean_token, embedder_lexicon, is_generic, is_template_token, word_stems,
                   word_vectors)

# ============================================================================================
# Patchscope scale grader (paper Prompt 21)
# ============================================================================================

PATCHSCOPE_FORMAT = (
    "end with exactly two lines: 'BEST_SCALE: <one of the offered scales>' and then "
    "'TOKENS: \"tok1\" | \"tok2\" | ...' (tokens copied exactly as shown for that scale, or "
    "'TOKENS: none')"
)

PATCHSCOPE_SCALE_SYSTEM = """
You compare the output of a Patchscope probe run at several injection strengths ("scales"). For
each scale you see the tokens the probe ranked highest. Your job:
1. pick the single scale whose token list is the most semantically coherent, and
2. list the tokens of that scale that belong together in meaning. Leave out everything else.

How to judge:
- When several scales look about equally coherent, prefer the one with MORE tokens in its
  coherent group.
- Look through tokenizer artefacts and casing (markers like "▁", "Ġ", "Ċ", leading spaces) and judge
  the underlying word. Language does not matter, only meaning.
- Never count generic tokens: whitespace, punctuation, common function words, or fragments such
  as "ing", "ion", "'s", "ly".
- The tokens may be pieces of one sentence or phrase; a group like that counts as coherent.
- Only choose tokens that are listed for the scale you pick. Do not invent or correct tokens.
- If no scale has a coherent group, pick the scale that contains the most meaningful
  non-trivial token and list just that token (or none).
- Think first: name the candidate scales, argue which is best, then decide.

Output: after your reasoning, finish with exactly these two lines and nothing after them:
BEST_SCALE: <number, written as one of the offered scales>
TOKENS: "token" | "token" | ...
Copy each token exactly as it is shown (inside double quotes, separated by " | "). If no token
qualifies, write TOKENS: none. Do not write BEST_SCALE or TOKENS anywhere else.

Illustration (shortened):
SCALE 2: "▁the", "▁of", ",", "▁and"
SCALE 8: "▁glacier", "▁ice", "▁@@", "▁melt", "▁the", "▁Arctic", "▁frozen"
SCALE 30: "▁zx", "▁::", "▁", "▁qv"
Scale 2 is only function words and scale 30 is noise; scale 8 has a clear cold-climate group.
BEST_SCALE: 8
TOKENS: "▁glacier" | "▁ice" | "▁melt" | "▁Arctic" | "▁frozen"
"""


def patchscope_scale_messages(candidates: Mapping[float, Sequence[str]]) -> Messages:
    """Messages asking which of up to 10 scales gives the most coherent Patchscope tokens.

    ``candidates`` maps scale -> top tokens at that scale (e.g. the top 20).
    """
    if not candidates:
        raise ValueError("patchscope_scale_messages needs at least one scale")
    if len(candidates) > 10:
        raise ValueError(
            f"at most 10 scales per grading call (got {len(candidates)}); grade in batches and "
            "then compare the batch winners"
        )
    scales = sorted(candidates)
    blocks = []
    for s in scales:
        toks = ", ".join(quote_token(t) for t in candidates[s]) or "(no tokens)"
        blocks.append(f"SCALE {fmt_scale(s)}: {toks}")
    user = (
        "Tokens per scale:\n"
        + "\n".join(blocks)
        + "\n\nOffered scales: "
        + ", ".join(fmt_scale(s) for s in scales)
        + f"\n\nChoose one offered scale and its coherent tokens, then {PATCHSCOPE_FORMAT}."
    )
    return chat_messages(PATCHSCOPE_SCALE_SYSTEM, user)


_NUMBER = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?$")
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_TOKEN_MARKERS = str.maketrans({"▁": " ", "Ġ": " ", "Ċ": "\n", "ċ": "\n"})


def _norm_token(tok: str) -> str:
    return tok.translate(_TOKEN_MARKERS).strip().casefold()


def _split_tokens(value: str) -> list[str]:
    v = value.strip()
    if clean_value(v).lower() in ("", "none", "n/a", "-", "no tokens"):
        return []
    quoted = _QUOTED.findall(v)
    if quoted:
        rest = _QUOTED.sub("", v)
        if not rest.strip(" \t|,;"):
            out = []
            for q in quoted:
                try:
                    out.append(json.loads(q))
                except json.JSONDecodeError:
                    out.append(q[1:-1])
            return out
    parts = [p.strip() for p in v.split("|")]
    return [p.strip("\"'`") for p in parts if p.strip("\"'`").strip()]


def parse_patchscope_scale(
    reply: str, offered: Mapping[float, Sequence[str]]
) -> tuple[float, list[str]]:
    """The chosen scale (one of ``offered``) and its selected tokens (a subset of its tokens).

    Selected tokens are matched to the offered tokens of the chosen scale exactly, or else
    ignoring tokenizer markers, surrounding spaces and case; the offered spelling is returned.
    Tokens that match nothing offered are dropped. Raises ValueError when the scale line is
    missing, conflicting or names a scale that was not offered, when the tokens line is missing
    or conflicting, or when text follows the two answer lines.
    """
    if not offered:
        raise ValueError("no scales were offered")
    lines = content_lines(reply)
    scale_hits = tagged(lines, r"BEST[_ ]?SCALER?")
    token_hits = tagged(lines, r"(?:SELECTED[_ ]|TOP[_ ])?TOKENS")
    if not scale_hits:
        raise ValueError(f"no 'BEST_SCALE:' line found. Required format: {PATCHSCOPE_FORMAT}")
    if not token_hits:
        raise ValueError(f"no 'TOKENS:' line found. Required format: {PATCHSCOPE_FORMAT}")
    values = set()
    for _, m in scale_hits:
        v = clean_value(m.group("value"))
        if not _NUMBER.match(v):
            raise ValueError(
                f"BEST_SCALE must be a single number, got {m.group('value')[:40]!r}. "
                f"Required format: {PATCHSCOPE_FORMAT}"
            )
        values.add(float(v))
    if len(values) > 1:
        raise ValueError(
            "the reply names several different best scales "
            f"({', '.join(fmt_scale(x) for x in sorted(values))}); choose exactly one"
        )
    chosen = values.pop()
    match = [s for s in offered if math.isclose(float(s), chosen, rel_tol=1e-6, abs_tol=1e-9)]
    if not match:
        raise ValueError(
            f"scale {fmt_scale(chosen)} was not offered; choose one of "
            f"{', '.join(fmt_scale(s) for s in sorted(offered))}"
        )
    scale = match[0]
    token_sets = {tuple(_split_tokens(m.group("value"))) for _, m in token_hits}
    if len(token_sets) > 1:
        raise ValueError("the reply has several different TOKENS lines; give exactly one")
    must_end_with(lines, {i for i, _ in scale_hits} | {i for i, _ in token_hits}, PATCHSCOPE_FORMAT)
    last_scale = max(i for i, _ in scale_hits)
    if not any(i > last_scale for i, _ in token_hits):
        raise ValueError(f"the TOKENS line must come after the BEST_SCALE line. Required format: {PATCHSCOPE_FORMAT}")

    allowed = list(offered[scale])
    by_norm: dict[str, str] = {}
    for tok in allowed:
        by_norm.setdefault(_norm_token(tok), tok)
    selected: list[str] = []
    for tok in token_sets.pop():
        if tok in allowed:
            hit: str | None = tok
        else:
            norm = _norm_token(tok)
            hit = by_norm.get(norm) if norm else None
        if hit is not None and hit not in selected:
            selected.append(hit)
    return float(scale), selected


class ScaleGrader(Protocol):
    name: str

    def choose(self, candidates: dict[float, list[str]]) -> tuple[float, list[str], str]: ...


def tournament(grader: ScaleGrader, candidates: dict[float, list[str]], batch: int = 10) -> tuple[float, list[str], str]:
    """The paper's selection: the grader picks a winner per batch of 10 scales, then a final."""
    scales = sorted(candidates)
    if len(scales) <= batch:
        return grader.choose(candidates)
    winners: dict[float, list[str]] = {}
    for i in range(0, len(scales), batch):
        s, _toks, _note = grader.choose({x: candidates[x] for x in scales[i:i + batch]})
        winners[s] = candidates[s]
    return grader.choose(winners)


def _prompt_id(text: str) -> str:
    """A short fingerprint of a system prompt (a changed prompt changes the verdicts)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def llm_identity(client: Any) -> dict[str, Any]:
    """The endpoint of an LLM grader: model and base URL (never the API key)."""
    cfg = getattr(client, "config", None)
    return {"model": getattr(cfg, "model", None), "base_url": getattr(cfg, "base_url", None)}


@dataclass
class OfflineScaleGrader:
    """Picks the scale whose top tokens contain the largest group of MUTUALLY related words.

    1. Content words: tokens are cleaned of tokenizer markers; punctuation, numbers, chat/template
       tokens, affixes, stopwords and generic words (:func:`~.text.is_generic`) are dropped, and so
       are BPE fragments ("landsl", "ceram": not whole words of the embedder's vocabulary).
    2. The words are embedded with the direction all words share removed
       (:func:`~.text.word_vectors`: unrelated words then have cosine ≈ 0, 97th percentile ≈ 0.18)
       and the coherent group is the largest quasi-clique of the similarity graph: a set in which
       every member has similarity ≥ ``min_pair`` to at least ``min_share`` of the other members
       and mean similarity ≥ ``min_mean`` to them (grown greedily from every seed word; the
       largest, then the densest, wins). Unrelated real words ("government", "season", "album")
       do not form such a group. Inflections of one word ("fan", "fans") count once (+¼ each).
    3. Score = group size + mean pairwise similarity inside it (so size decides, density breaks
       ties; Prompt 21: "when several scales are similarly coherent, choose the one with more
       coherent tokens"). A group needs ``min_group`` members; without one anywhere, the scale with
       a content word wins and its first content word is the selection.
    """

    embedder: str = DEFAULT_EMBEDDER
    min_pair: float = 0.2
    min_share: float = 0.5
    min_mean: float = 0.2
    min_group: int = 2
    top: int = 20
    name: str = "offline"

    def identity(self) -> dict[str, Any]:
        return {"backend": "offline", "method": "quasi-clique-centered-v1", "embedder": self.embedder,
                "min_pair": self.min_pair, "min_share": self.min_share, "min_mean": self.min_mean,
                "min_group": self.min_group, "top": self.top}

    def content_words(self, tokens: Sequence[str]) -> list[tuple[str, str]]:
        """(token, lower-case word) for the topical whole words among ``tokens``, first spelling kept."""
        lexicon = embedder_lexicon(self.embedder)
        out: list[tuple[str, str]] = []
        seen: set[str] = set()
        for t in tokens:
            w = clean_token(t)
            lw = w.lower()
            if not WORD.fullmatch(w) or len(w) < 3 or lw in seen:
                continue
            if is_generic(w, calendar=False) or is_template_token(t) or lw in AFFIXES:
                continue
            if lexicon and lw not in lexicon:
                continue
            seen.add(lw)
            out.append((t, lw))
        return out

    def _group(self, sims: np.ndarray, words: Sequence[str]) -> list[int]:
        n = len(sims)
        best: tuple[int, float, list[int]] = (0, 0.0, [])

        def fits(members: list[int], x: int) -> bool:
            s = sims[x, members]
            close = int((s >= self.min_pair).sum())
            if close < max(1, math.ceil(self.min_share * len(members))):
                return False
            if float(s.mean()) < self.min_mean:
                return False
            # the members must stay well connected with x added
            for m in members:
                others = [o for o in members if o != m] + [x]
                if int((sims[m, others] >= self.min_pair).sum()) < math.ceil(self.min_share * len(others)):
                    return False
            return True

        for seed in range(n):
            group = [seed]
            while True:
                cands = [x for x in range(n) if x not in group and fits(group, x)]
                if not cands:
                    break
                group.append(max(cands, key=lambda x: (float(sims[x, group].mean()), -x)))
            if len(group) < 2:
                continue
            sub = sims[np.ix_(group, group)]
            mean = float((sub.sum() - len(group)) / (len(group) * (len(group) - 1)))
            key = (self._size(group, words), mean)
            if key > best[:2]:
                best = (key[0], mean, sorted(group))
        return best[2]

    @staticmethod
    def _size(group: Sequence[int], words: Sequence[str]) -> float:
        """Group size counting inflections of one word ("fan", "fans") as one word plus a quarter."""
        n_stems = 0
        seen: list[set[str]] = []
        for i in group:
            forms = set(word_stems(words[i]))
            if not any(forms & s for s in seen):
                n_stems += 1
            seen.append(forms)
        return n_stems + 0.25 * (len(group) - n_stems)

    def cluster(self, tokens: Sequence[str]) -> tuple[list[str], float]:
        """The coherent group of ``tokens`` (original spellings, in order) and its mean pairwise
        similarity; ``([], 0.0)`` when fewer than ``min_group`` words belong together."""
        words = self.content_words(tokens)
        if len(words) < max(2, self.min_group):
            return [], 0.0
        vecs = word_vectors([w for _, w in words], self.embedder)
        sims = vecs @ vecs.T
        group = self._group(sims, [w for _, w in words])
        if self._size(group, [w for _, w in words]) < max(2, self.min_group):
            return [], 0.0
        sub = sims[np.ix_(group, group)]
        mean = float((sub.sum() - len(group)) / (len(group) * (len(group) - 1)))
        return [words[i][0] for i in group], mean

    def choose(self, candidates: dict[float, list[str]]) -> tuple[float, list[str], str]:
        if not candidates:
            raise ValueError("no scales to choose from")
        best: tuple[float, float, list[str]] | None = None
        fallback: tuple[float, list[str]] | None = None
        for s in sorted(candidates):
            toks = list(candidates[s])[: self.top]
            sel, coh = self.cluster(toks)
            if sel:
                score = self._size(range(len(sel)), [clean_token(t).lower() for t in sel]) + coh
                if best is None or score > best[0] + 1e-9:
                    best = (score, s, sel)
            elif fallback is None:
                words = self.content_words(toks)
                if words:
                    fallback = (s, [words[0][0]])
        if best is not None:
            score, s, sel = best
            return s, sel, f"offline: {len(sel)} mutually related words, score {score:.2f}"
        if fallback is not None:
            return fallback[0], fallback[1], "offline: no coherent group; one content word"
        s = min(candidates)
        return s, [], "offline: no content words at any scale"


@dataclass
class LLMScaleGrader:
    client: Any
    name: str = "llm"

    def identity(self) -> dict[str, Any]:
        return {"backend": "llm", **llm_identity(self.client), "prompt": _prompt_id(PATCHSCOPE_SCALE_SYSTEM)}

    def choose(self, candidates: dict[float, list[str]]) -> tuple[float, list[str], str]:
        msgs = patchscope_scale_messages(candidates)
        s, toks = self.client.ask(msgs, parse=lambda r: parse_patchscope_scale(r, candidates))
        return s, toks, "llm"
