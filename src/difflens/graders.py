"""Graders behind one interface, each with an ``llm`` backend (the paper's criteria through an
OpenAI-compatible endpoint) and an ``offline`` backend (deterministic, no API).

- coherence of generated text (steering threshold search);
- Patchscope scale choice + the semantically coherent token subset (batches of 10, then a final);
- token relevance to the finetuning objective (evaluation).
"""
from __future__ import annotations

import math
import re
from functools import lru_cache
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from . import prompts
from .embeddings import DEFAULT_EMBEDDER, embed

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")
STOPWORDS = frozenset("""a an the and or but if of to in on at by for with from as is are was were be been being it its this
that these those i you he she we they me him her us them my your his our their not no yes do does did have has had
so than then there here what which who whom when where why how all any some can could would should will just also
very more most much many such only own same too into about over under again out up down off""".split())


def clean_token(tok: str) -> str:
    """A token as a word: tokenizer whitespace markers and surrounding punctuation removed."""
    return tok.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\n").strip().strip(".,;:!?\"'()[]{}").strip()


def is_wordlike(tok: str) -> bool:
    w = clean_token(tok)
    return bool(_WORD.fullmatch(w)) and len(w) >= 3 and w.lower() not in STOPWORDS


def embedder_lexicon(name: str = DEFAULT_EMBEDDER) -> frozenset[str]:
    """Whole words known to the embedding model's tokenizer (e.g. BERT WordPiece vocabulary).

    Used to tell real words ("cake", "vanilla") from word fragments ("landsl", "ceram") that a
    language model's BPE vocabulary is full of; empty if the tokenizer exposes no vocabulary.
    """
    return _lexicon(name)


@lru_cache(maxsize=4)
def _lexicon(name: str) -> frozenset[str]:
    from .embeddings import get_embedder

    vocab = getattr(get_embedder(name).tokenizer, "vocab", None) or {}
    return frozenset(w for w in vocab if w.isalpha() and len(w) >= 3)


# ---- coherence ----------------------------------------------------------------------------------

class CoherenceGrader(Protocol):
    name: str

    def grade(self, texts: Sequence[str]) -> list[bool]: ...


def repetition_score(text: str) -> float:
    """Share of word 3-grams that repeat an earlier 3-gram (0: none repeated)."""
    words = text.lower().split()
    if len(words) < 6:
        return 0.0
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return 1.0 - len(set(grams)) / len(grams)


@dataclass
class OfflineCoherence:
    """Coherent = fluent under a reference model (per-token NLL) and not degenerate (repetition).

    ``calibrate`` sets the NLL threshold from texts known to be coherent (unsteered generations):
    mean + ``z`` standard deviations, at least ``min_margin`` nats above the mean.
    """

    model: Any
    tokenizer: Any
    nll_threshold: float = 5.0
    max_repetition: float = 0.35
    min_words: int = 3
    z: float = 2.5
    min_margin: float = 0.75
    name: str = "offline"
    calibration: dict[str, float] = field(default_factory=dict)

    @torch.no_grad()
    def nll(self, texts: Sequence[str]) -> list[float]:
        out = []
        dev = next(self.model.parameters()).device
        for t in texts:
            ids = self.tokenizer(t, return_tensors="pt", truncation=True, max_length=256).input_ids.to(dev)
            if ids.shape[1] < 2:
                out.append(float("inf"))
                continue
            logits = self.model(input_ids=ids).logits[0, :-1].float()
            out.append(float(torch.nn.functional.cross_entropy(logits, ids[0, 1:])))
        return out

    def calibrate(self, coherent_texts: Sequence[str]) -> "OfflineCoherence":
        vals = [v for v in self.nll([t for t in coherent_texts if t.strip()]) if math.isfinite(v)]
        if len(vals) >= 2:
            mu, sd = float(np.mean(vals)), float(np.std(vals))
            self.nll_threshold = mu + max(self.z * sd, self.min_margin)
            self.calibration = {"mean_nll": mu, "std_nll": sd, "threshold": self.nll_threshold, "n": len(vals)}
        return self

    def grade(self, texts: Sequence[str]) -> list[bool]:
        nlls = self.nll(texts)
        res = []
        for t, v in zip(texts, nlls):
            words = _WORD.findall(t)
            res.append(len(words) >= self.min_words and v <= self.nll_threshold
                       and repetition_score(t) <= self.max_repetition)
        return res


@dataclass
class LLMCoherence:
    client: Any
    name: str = "llm"

    def grade(self, texts: Sequence[str]) -> list[bool]:
        return [bool(self.client.ask(prompts.coherence_messages(t), parse=prompts.parse_coherence)) for t in texts]


# ---- Patchscope scale ---------------------------------------------------------------------------

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


@dataclass
class OfflineScaleGrader:
    """Picks the scale whose top tokens form the largest semantically coherent word cluster.

    Tokens are filtered to real words (known to the embedding model's vocabulary; BPE fragments
    such as "landsl" are dropped), embedded, and the coherent subset is the tokens whose
    cosine similarity to the subset's centroid exceeds ``min_sim`` (iterated to a fixed point).
    Score = (#coherent words) × (mean within-cluster similarity).
    """

    embedder: str = DEFAULT_EMBEDDER
    min_sim: float = 0.45
    name: str = "offline"

    def cluster(self, tokens: Sequence[str]) -> tuple[list[str], float]:
        words, seen = [], set()
        lexicon = embedder_lexicon(self.embedder)
        for t in tokens:
            w = clean_token(t)
            if is_wordlike(t) and w.lower() not in seen and (not lexicon or w.lower() in lexicon):
                seen.add(w.lower())
                words.append(t)
        if len(words) < 2:
            return [], 0.0
        vecs = embed([clean_token(w).lower() for w in words], self.embedder)
        keep = np.ones(len(words), dtype=bool)
        for _ in range(5):
            centroid = vecs[keep].mean(0)
            centroid /= np.linalg.norm(centroid) + 1e-9
            sims = vecs @ centroid
            new = sims >= self.min_sim
            if new.sum() < 2:
                return [], 0.0
            if (new == keep).all():
                break
            keep = new
        sub = vecs[keep]
        pair_sims = sub @ sub.T
        n = len(sub)
        mean_sim = float((pair_sims.sum() - n) / (n * (n - 1)))
        return [w for w, k in zip(words, keep) if k], mean_sim

    def choose(self, candidates: dict[float, list[str]]) -> tuple[float, list[str], str]:
        best: tuple[float, float, list[str]] | None = None
        for s in sorted(candidates):
            sel, coh = self.cluster(candidates[s][:20])
            score = len(sel) * coh
            if best is None or score > best[0] + 1e-9:
                best = (score, s, sel)
        if best is None:
            raise ValueError("no scales to choose from")
        score, s, sel = best
        return s, sel, f"offline: {len(sel)} coherent words, score {score:.2f}"


@dataclass
class LLMScaleGrader:
    client: Any
    name: str = "llm"

    def choose(self, candidates: dict[float, list[str]]) -> tuple[float, list[str], str]:
        msgs = prompts.patchscope_scale_messages(candidates)
        s, toks = self.client.ask(msgs, parse=lambda r: prompts.parse_patchscope_scale(r, candidates))
        return s, toks, "llm"


# ---- token relevance ----------------------------------------------------------------------------

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
        desc_words = sorted({w.lower() for w in _WORD.findall(description) if w.lower() not in STOPWORDS})
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
            msgs = prompts.relevance_messages(description, list(frequent_tokens), shuffled)
            labels = self.client.ask(msgs, parse=lambda rep, n=len(shuffled): prompts.parse_relevance(rep, n))
            for pos, i in enumerate(order):
                votes[i] = votes[i] and bool(labels[pos])
        return votes


# ---- factory ------------------------------------------------------------------------------------

@dataclass
class Graders:
    coherence: CoherenceGrader
    scale: ScaleGrader
    relevance: RelevanceGrader


def make_graders(backend: str, *, model: Any = None, tokenizer: Any = None, client: Any = None,
                 embedder: str = DEFAULT_EMBEDDER) -> Graders:
    """Graders for ``backend`` ∈ {offline, llm}. ``llm`` needs a client (difflens.llm.LLMClient)."""
    from .errors import ConfigError

    if backend == "offline":
        if model is None or tokenizer is None:
            raise ConfigError("offline coherence grading needs a reference model and tokenizer.")
        return Graders(OfflineCoherence(model, tokenizer), OfflineScaleGrader(embedder), OfflineRelevance(embedder))
    if backend == "llm":
        if client is None:
            raise ConfigError("grader backend 'llm' needs an endpoint: set --llm-model/--llm-base-url "
                              "(and the API-key environment variable).")
        return Graders(LLMCoherence(client), LLMScaleGrader(client), LLMRelevance(client))
    raise ConfigError(f"unknown grader backend '{backend}': use 'offline' or 'llm'.")
