"""Patchscope scale choice and the semantically coherent token subset (paper Prompt 21).

The paper's selection is a tournament: the grader picks a winner per batch of 10 scales, then a
final among the winners. :class:`OfflineScaleGrader` scores token sets by embedding coherence;
:class:`LLMScaleGrader` asks an OpenAI-compatible endpoint.
"""
from __future__ import annotations

import hashlib
from collections import Counter
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np

from ..llm.replies import (Messages, chat_messages, clean_value, content_lines, fmt_scale, must_end_with,
                           quote_token, tagged)
from ..models.embedder import DEFAULT_EMBEDDER
from .text import (AFFIXES, WORD, clean_token, embedder_lexicon, is_generic, is_template_token, word_stems,
                   word_vectors, word_zipf)

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


@dataclass(frozen=True)
class ScaleContext:
    """What a grader may compare one vector's Patchscope lists with (all optional).

    - ``sweep``: the vector's own top tokens at every scale of the grid (a batch of the tournament
      sees only 10 of them);
    - ``controls``: control name -> token lists that the finetuned model produces without δ̄'s
      information: ``random`` (a random vector, every scale), ``unpatched`` (nothing patched),
      ``delta_via_base`` (δ̄ read through the base model, every scale);
    - ``other_positions``: the same vector kind's sweeps at the other token positions (a finetune's
      objective recurs across positions; an attractor of one position does not).
    """

    sweep: Mapping[float, Sequence[str]] = field(default_factory=dict)
    controls: Mapping[str, Sequence[Sequence[str]]] = field(default_factory=dict)
    other_positions: Sequence[Mapping[float, Sequence[str]]] = ()


class ScaleGrader(Protocol):
    name: str

    def choose(self, candidates: dict[float, list[str]],
               context: ScaleContext | None = None) -> tuple[float, list[str], str]: ...


def tournament(grader: ScaleGrader, candidates: dict[float, list[str]], batch: int = 10,
               context: ScaleContext | None = None) -> tuple[float, list[str], str]:
    """The paper's selection: the grader picks a winner per batch of 10 scales, then a final.
    ``context`` (controls, the whole sweep) is passed to every call; graders that ignore it (the
    LLM grader, paper-faithful) see what the paper's grader sees."""
    scales = sorted(candidates)
    takes_context = _takes_context(grader)

    def choose(c: dict[float, list[str]]) -> tuple[float, list[str], str]:
        return grader.choose(c, context) if takes_context and context is not None else grader.choose(c)

    if len(scales) <= batch:
        return choose(candidates)
    winners: dict[float, list[str]] = {}
    for i in range(0, len(scales), batch):
        s, _toks, _note = choose({x: candidates[x] for x in scales[i:i + batch]})
        winners[s] = candidates[s]
    return choose(winners)


def _takes_context(grader: Any) -> bool:
    """Whether ``grader.choose`` accepts a context (graders written before it existed do not)."""
    import inspect

    try:
        params = inspect.signature(grader.choose).parameters
    except (TypeError, ValueError):
        return False
    return "context" in params or any(p.kind == p.VAR_POSITIONAL for p in params.values())


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
    # a word outside the embedder's vocabulary still counts as a whole word when it is this common in
    # English (wordfreq Zipf; "kiln" 3.1, "milkweed" 2.5, fragments "ceram" 1.7, "uhr" 2.0); None: never
    min_zipf: float | None = None
    # skip tokens that continue a word (no leading space, lower case: "ayer", "rove") rather than start one
    skip_pieces: bool = False
    name: str = "offline"

    def identity(self) -> dict[str, Any]:
        out = {"backend": "offline", "method": "quasi-clique-centered-v1", "embedder": self.embedder,
               "min_pair": self.min_pair, "min_share": self.min_share, "min_mean": self.min_mean,
               "min_group": self.min_group, "top": self.top}
        return (out | ({"min_zipf": self.min_zipf} if self.min_zipf is not None else {})
                | ({"skip_pieces": True} if self.skip_pieces else {}))

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
            if self.skip_pieces and t[:1].islower():
                continue  # no leading space and lower case: the middle of a word ("ayer" of "prayer")
            if is_generic(w, calendar=False) or is_template_token(t) or lw in AFFIXES:
                continue
            if lexicon and lw not in lexicon and (self.min_zipf is None or word_zipf(lw) < self.min_zipf):
                continue
            seen.add(lw)
            out.append((t, lw))
        return out

    def warm(self, lists: Sequence[Sequence[str]]) -> None:
        """Embed every content word of ``lists`` in one batch (grading many sweeps then embeds nothing)."""
        words = sorted({w for toks in lists for _t, w in self.content_words(list(toks)[: self.top])})
        if words:
            word_vectors(words, self.embedder)

    def _group(self, sims: np.ndarray, words: Sequence[str], weights: Sequence[float] | None = None) -> list[int]:
        """The best quasi-clique: the largest (by :meth:`_size`, optionally weighted), then the densest."""
        n = len(sims)
        best: tuple[float, float, list[int]] = (0, 0.0, [])

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
            key = (self._size(group, words, weights), mean)
            if key > best[:2]:
                best = (key[0], mean, sorted(group))
        return best[2]

    @staticmethod
    def _size(group: Sequence[int], words: Sequence[str], weights: Sequence[float] | None = None) -> float:
        """Group size counting inflections of one word ("fan", "fans") as one word plus a quarter;
        with ``weights``, each word counts its weight instead of 1."""
        total = 0.0
        seen: list[set[str]] = []
        for i in sorted(group, key=lambda i: -(weights[i] if weights is not None else 1.0)):
            w = weights[i] if weights is not None else 1.0
            forms = set(word_stems(words[i]))
            total += 0.25 * w if any(forms & f for f in seen) else w
            seen.append(forms)
        return total

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

    def choose(self, candidates: dict[float, list[str]],
               context: ScaleContext | None = None) -> tuple[float, list[str], str]:
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


CONTROL_DISCOUNT: dict[str, float] = {"unpatched": 0.2, "random": 0.3, "delta_via_base": 0.6}
"""The least weight left to a word that a control also produces (the smallest factor over controls
applies; see :class:`SpecificScaleGrader`): the unpatched prompt's own tokens and a random vector's are
what the finetuned model says anyway; δ̄ read through the base model shares δ̄'s information, so its
words are discounted less."""


@dataclass(frozen=True)
class ScaleScore:
    """One scale as the specificity grader sees it: the score, the selected tokens, and why."""

    scale: float
    score: float
    selected: list[str]
    words: list[tuple[str, float, str]]  # (word, weight, reason) for every content word considered
    support: float = 0.0


@dataclass
class SpecificScaleGrader(OfflineScaleGrader):
    """Prefers what is specific to the patched vector: a coherent group of rare words that the
    controls do not produce (the default offline grader).

    Content words are found as in :class:`OfflineScaleGrader`, except that a word the embedder's
    vocabulary lacks still counts when it is a real English word (``min_zipf``: "kiln", "milkweed"),
    and a token that continues a word (``skip_pieces``: "ayer", "rove") never does.
    Each gets a weight:

    - **rarity** — ``clip((common_zipf − zipf) / rarity_span, rarity_floor, 1)`` from its frequency
      in ordinary English (:func:`~.text.word_zipf`): "home" 0.40, "story" 0.55, "cake" 0.82,
      "porcelain" 1; words that are everywhere are weak evidence;
    - **controls** — when a control also produces the word (the random vector at any position and
      scale, δ̄ through the base model at this position, the unpatched prompt), × min(1, max(floor,
      lift / ``full_lift``)): *lift* is how much more often the vector's lists hold the word than the
      control's lists do (floors :data:`CONTROL_DISCOUNT`; the unpatched prompt always its floor). The
      finetuned model says such words anyway — unless δ̄ says them far more often (an overfit organism
      answers a random vector in its own domain now and then);
    - **recurrence** — × (1 + ``recurrence_boost``·n) when no control discounts it and the vector's
      lists at n other token positions hold it (each is another readout of the same δ̄ family): a
      finetune's objective recurs across positions, an attractor of one position does not. A word
      at ≥ 2 other positions is *confirmed*: it counts as evidence with or without semantic
      neighbours in this list.

    A scale's evidence is the largest weighted quasi-clique of its top-``top`` words (the similarity
    graph of :class:`OfflineScaleGrader`; inflections count a quarter) together with its confirmed
    words; score = their summed weight + the clique's mean similarity. Without either, the best lone
    word at ``single_weight``. Ties (within ``tie``) go to the scale whose selected words recur at
    more scales of the sweep, then to the middle of the tied run — never blindly to the lowest
    scale. Without context (no controls, no other positions) only rarity and the clique remain.
    """

    min_zipf: float | None = 2.3
    skip_pieces: bool = True
    common_zipf: float = 7.0
    rarity_span: float = 3.0
    rarity_floor: float = 0.15
    recurrence_boost: float = 0.5
    single_weight: float = 0.5
    tie: float = 0.05
    full_lift: float = 3.0
    control_discount: dict[str, float] = field(default_factory=lambda: dict(CONTROL_DISCOUNT))
    name: str = "offline"
    _prep_cache: tuple[Any, dict[str, Any]] | None = field(default=None, init=False, repr=False, compare=False)

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "method": "specificity-v1", "common_zipf": self.common_zipf,
                "rarity_span": self.rarity_span, "rarity_floor": self.rarity_floor,
                "recurrence_boost": self.recurrence_boost, "single_weight": self.single_weight, "tie": self.tie,
                "full_lift": self.full_lift,
                "control_discount": dict(sorted(self.control_discount.items()))}

    # ---- evidence per word -----------------------------------------------------------------
    def _words(self, toks: Sequence[str]) -> set[str]:
        return {w for _t, w in self.content_words(list(toks)[: self.top])}

    @staticmethod
    def _stem_counts(word_sets: Sequence[set[str]]) -> tuple[Counter[str], int]:
        """How many of the lists (as word sets) hold each stem (a word's inflections counted once per
        list), and how many lists there are."""
        out: Counter[str] = Counter()
        for words in word_sets:
            out.update({st for w in words for st in word_stems(w)})
        return out, len(word_sets)

    def _prepare(self, context: ScaleContext | None) -> dict[str, Any]:
        # the tournament calls choose() several times with one context: prepare it once
        cached = self._prep_cache
        if cached is not None and cached[0] is context and context is not None:
            return cached[1]
        prep = self._prepare_new(context)
        self._prep_cache = (context, prep)
        return prep

    def _prepare_new(self, context: ScaleContext | None) -> dict[str, Any]:
        ctx = context or ScaleContext()
        controls = {name: self._stem_counts([self._words(t) for t in lists])
                    for name, lists in ctx.controls.items() if lists}
        sweep = {float(k): self._words(v) for k, v in ctx.sweep.items()}
        other_sets = [[self._words(t) for t in sw.values()] for sw in ctx.other_positions]
        others = [set(self._stem_counts(sets)[0]) for sets in other_sets]
        own = self._stem_counts(list(sweep.values()))
        # the vector's lists at every position: what the random vector's lists (every position) are compared to
        every = self._stem_counts([*sweep.values(), *(s for sets in other_sets for s in sets)])
        # scale scores, memoised: the tournament's batches, its final and profile() score the same lists
        return {"controls": controls, "others": others, "sweep": sweep, "own": own, "every": every, "scores": {}}

    def _lift(self, stems: set[str], mine: tuple[Counter[str], int], ctl: tuple[Counter[str], int]) -> float:
        """How much more often the vector's lists hold the word than the control's lists do."""
        (mc, mn), (cc, cn) = mine, ctl
        m = max((mc[s] for s in stems), default=0) / max(mn, 1)
        c = max((cc[s] for s in stems), default=0) / max(cn, 1)
        return m / max(c, 1.0 / max(cn, 1))

    def rarity(self, word: str) -> float:
        r = (self.common_zipf - word_zipf(word)) / self.rarity_span
        return float(min(1.0, max(self.rarity_floor, r)))

    def weight(self, word: str, prep: Mapping[str, Any]) -> tuple[float, str, bool]:
        """A content word's evidence weight, a short reason, and whether recurrence confirms it."""
        stems = set(word_stems(word))
        w = self.rarity(word)
        reasons = [f"rarity {w:.2f}"]
        factors: dict[str, float] = {}
        for name, ctl in prep["controls"].items():
            if not any(ctl[0][s] for s in stems):
                continue
            floor = self.control_discount.get(name, 0.5)
            if name == "unpatched":  # the model's own answer to the bare prompt
                factors[name] = floor
                continue
            # the vector's lists against the control's: at every position for the random vector, at
            # this position for δ̄ through the base model
            mine = prep["every"] if name == "random" else prep["own"]
            lift = self._lift(stems, mine, ctl)
            factors[name] = min(1.0, max(floor, lift / self.full_lift))
        confirmed = False
        f = min(factors.values(), default=1.0)
        if f < 1.0:
            w *= f
            name = min(factors, key=factors.get)
            reasons.append(f"also from {name} ×{f:.2g}")
        else:
            n = sum(1 for o in prep["others"] if stems & o)
            if n:
                f = 1.0 + self.recurrence_boost * n
                w *= f
                confirmed = n >= 2
                reasons.append(f"at {n} other position{'s' if n > 1 else ''} ×{f:g}")
        return w, ", ".join(reasons), confirmed

    # ---- one scale -------------------------------------------------------------------------
    def score_scale(self, scale: float, tokens: Sequence[str], prep: Mapping[str, Any]) -> ScaleScore:
        words = self.content_words(list(tokens)[: self.top])
        if not words:
            return ScaleScore(scale, 0.0, [], [])
        lw = [w for _t, w in words]
        ev = [self.weight(w, prep) for w in lw]
        weights = [x for x, _r, _c in ev]
        listed = [(w, round(x, 3), why) for w, (x, why, _c) in zip(lw, ev)]
        clique: list[int] = []
        mean = 0.0
        if len(words) >= 2:
            vecs = word_vectors(lw, self.embedder)
            sims = vecs @ vecs.T
            clique = self._group(sims, lw, weights)
            if len(clique) >= 2 and self._size(clique, lw) >= max(2, self.min_group):
                sub = sims[np.ix_(clique, clique)]
                mean = float((sub.sum() - len(clique)) / (len(clique) * (len(clique) - 1)))
            else:
                clique = []
        members = sorted(set(clique) | {i for i, (_x, _r, c) in enumerate(ev) if c})
        if members:
            score = self._size(members, lw, weights) + mean
        else:
            best = max(range(len(words)), key=lambda i: (weights[i], -i))
            members, score = [best], self.single_weight * weights[best]
        sel = [words[i][0] for i in members]
        return ScaleScore(scale, score, sel, listed, self._support(sel, prep))

    def _support(self, selected: Sequence[str], prep: Mapping[str, Any]) -> float:
        """Mean share of the sweep's scales whose lists hold each selected word."""
        sweep = prep["sweep"]
        if not sweep or not selected:
            return 0.0
        ws = [clean_token(t).lower() for t in selected]
        return float(np.mean([sum(w in v for v in sweep.values()) / len(sweep) for w in ws]))

    def profile(self, candidates: Mapping[float, Sequence[str]],
                context: ScaleContext | None = None) -> dict[float, ScaleScore]:
        """Every scale's :class:`ScaleScore` (the report's per-scale specificity)."""
        prep = self._prepare(context)
        memo: dict[tuple[float, tuple[str, ...]], ScaleScore] = prep["scores"]
        out = {}
        for s in sorted(candidates):
            key = (float(s), tuple(candidates[s]))
            if key not in memo:
                memo[key] = self.score_scale(float(s), candidates[s], prep)
            out[float(s)] = memo[key]
        return out

    def choose(self, candidates: dict[float, list[str]],
               context: ScaleContext | None = None) -> tuple[float, list[str], str]:
        if not candidates:
            raise ValueError("no scales to choose from")
        prof = self.profile(candidates, context)
        top = max(x.score for x in prof.values())
        if top <= 0:
            s = sorted(prof)[len(prof) // 2]
            return s, [], "offline specificity: no content words at any scale"
        tied = [x for x in prof.values() if x.score >= top - self.tie]
        best_support = max(x.support for x in tied)
        tied = [x for x in tied if x.support >= best_support - 1e-9]
        pick = sorted(tied, key=lambda x: x.scale)[(len(tied) - 1) // 2]
        chosen = {clean_token(t).lower() for t in pick.selected}
        strong = sorted((w for w in pick.words if w[0] in chosen), key=lambda w: -w[1])
        weak = [w for w in pick.words if "also from" in w[2] and w[0] not in chosen][:4]
        why = "; ".join(f"{w} {x:.2f} ({r})" for w, x, r in strong[:6])
        note = (f"offline specificity: score {pick.score:.2f} at λ={fmt_scale(pick.scale)}"
                + (f" (tied with {len(tied) - 1} other scale{'s' if len(tied) > 2 else ''})" if len(tied) > 1 else "")
                + f"; selected: {why}")
        if weak:
            note += "; left out as control words: " + ", ".join(f"{w} ({r.split('also from ')[1]})"
                                                                for w, _x, r in weak)
        return pick.scale, list(pick.selected), note


@dataclass
class LLMScaleGrader:
    client: Any
    name: str = "llm"

    def identity(self) -> dict[str, Any]:
        return {"backend": "llm", **llm_identity(self.client), "prompt": _prompt_id(PATCHSCOPE_SCALE_SYSTEM)}

    def choose(self, candidates: dict[float, list[str]],
               context: ScaleContext | None = None) -> tuple[float, list[str], str]:
        msgs = patchscope_scale_messages(candidates)  # the paper's prompt: the context is not shown
        s, toks = self.client.ask(msgs, parse=lambda r: parse_patchscope_scale(r, candidates))
        return s, toks, "llm"
