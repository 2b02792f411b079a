"""The evaluation's per-method parts: every diffing method graded by the same graders (issue 20).

For each method a run has (:func:`difflens.methods.evidence.available`), from its
:class:`~difflens.methods.evidence.Evidence`:

- **token relevance** of each token list — the method's own, its baselines (one model alone) and
  its controls (a pair without a narrow finetune) — by the run's relevance grader against the true
  description and the frequent D_ft tokens, exactly as δ̄'s Patchscope tokens are graded;
  per list name the maximum and the mean over its groups (ADL: over positions; the paper reports
  the maximum — a method with one list has max = mean);
- **similarity to D_ft** of each text set (amplified samples, the finetuned model's own, the
  noise pair's amplified ones; ADL's steered, unsteered and random-direction samples): the mean
  cosine similarity of their embeddings to D_ft's, the same embedder as steering similarity;
- **identification**: the rank of the true description among the candidates from the method's
  own evidence (its token lists joined, its texts), as :mod:`difflens.eval.identify` ranks ADL's;
- **cost**: the seconds and forward tokens its compute stage spent;
- **topics**: for a method with one token list (mining, KL), NMF groups of its tokens
  (:mod:`difflens.eval.topics`), so a mixed list reads as a few themes.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, Field

from ..methods.evidence import Evidence
from .similarity import Stat, pairwise
from .topics import TopicGroup, topic_groups

__all__ = ["ListRelevance", "NameRelevance", "MethodEval", "evaluate_method", "ROLES"]

ROLES = ("method", "baseline", "control")


class ListRelevance(BaseModel):
    group: str = ""
    tokens: list[tuple[str, bool]]
    relevance: float  # % of the list's tokens judged relevant


class NameRelevance(BaseModel):
    """All lists of one name (e.g. "h̄_base Patchscope" at each position)."""

    role: str
    max: float
    mean: float
    lists: list[ListRelevance]


class MethodEval(BaseModel):
    method: str
    dataset: str
    title: str
    relevance: dict[str, NameRelevance] = Field(default_factory=dict)  # list name -> its relevance
    similarity: dict[str, Stat] = Field(default_factory=dict)  # text-set name -> similarity to D_ft
    similarity_roles: dict[str, str] = Field(default_factory=dict)  # text-set name -> role
    identification: dict[str, Any] | None = None  # {"rank", "n_candidates", "true", "scores"}
    cost: dict[str, float] = Field(default_factory=dict)
    topics: list[TopicGroup] = Field(default_factory=list)  # NMF groups of the method's one token list
    missing: list[str] = Field(default_factory=list)
    skipped: dict[str, str] = Field(default_factory=dict)

    def role_relevance(self, role: str, how: str = "max") -> float | None:
        """The best list name of ``role`` (``how``: its max or mean over groups); None when absent."""
        vals = [getattr(r, how) for r in self.relevance.values() if r.role == role]
        return max(vals) if vals else None

    def role_similarity(self, role: str) -> float | None:
        vals = [s.mean for name, s in self.similarity.items() if self.similarity_roles.get(name) == role]
        return max(vals) if vals else None

    def numbers(self) -> dict[str, Any]:
        """The method's row of a comparison (the shape of ``Cell.methods``): relevance of its best list
        (max and mean over groups), of its best baseline and control, similarity to D_ft per role,
        identification rank, cost, what is missing."""
        ident = self.identification or {}
        return {"title": self.title, "relevance": self.role_relevance("method"),
                "relevance_mean": self.role_relevance("method", "mean"), "baseline": self.role_relevance("baseline"),
                "control": self.role_relevance("control"),
                "similarity": {r: self.role_similarity(r) for r in ("method", "baseline", "control")},
                "rank": ident.get("rank"), "n_candidates": ident.get("n_candidates"),
                "seconds": self.cost.get("seconds"), "forward_tokens": self.cost.get("forward_tokens"),
                "missing": list(self.missing)}


def _relevance(ev: Evidence, grader: Any, description: str, frequent: Sequence[str],
               memo: dict[tuple[str, ...], list[bool]]) -> dict[str, NameRelevance]:
    out: dict[str, NameRelevance] = {}
    for tl in ev.token_lists:
        if not tl.tokens:
            continue
        key = tuple(tl.tokens)
        if key not in memo:
            verdicts = [bool(v) for v in grader.grade(list(tl.tokens), description, list(frequent))]
            if len(verdicts) != len(tl.tokens):
                raise ValueError(f"the relevance grader returned {len(verdicts)} labels for {len(tl.tokens)} tokens")
            memo[key] = verdicts
        v = memo[key]
        lr = ListRelevance(group=tl.group, tokens=list(zip(tl.tokens, v)), relevance=100.0 * sum(v) / len(v))
        nr = out.setdefault(tl.name, NameRelevance(role=tl.role, max=0.0, mean=0.0, lists=[]))
        nr.lists.append(lr)
    for nr in out.values():
        vals = [x.relevance for x in nr.lists]
        nr.max, nr.mean = max(vals), float(np.mean(vals))
    return out


def evaluate_method(ev: Evidence, *, grader: Any = None, description: str | None = None,
                    frequent: Sequence[str] = (), ft_texts: Sequence[str] | None = None,
                    embed_fn: Callable[[Sequence[str]], np.ndarray] | None = None,
                    candidates: Mapping[str, str] | None = None, true: str | None = None,
                    embedder: str | None = None, max_texts: int = 200, seed: int = 0, topics: int = 3,
                    memo: dict[tuple[str, ...], list[bool]] | None = None) -> MethodEval:
    """Grade one method's evidence (each part skipped, with the reason, when its input is missing)."""
    out = MethodEval(method=ev.method, dataset=ev.dataset, title=ev.title, cost=dict(ev.cost), missing=list(ev.missing))
    if grader is None:
        out.skipped["relevance"] = "no relevance grader configured"
    elif not description:
        out.skipped["relevance"] = "no true description: pass --description TEXT"
    elif not ev.token_lists:
        out.skipped["relevance"] = "the method surfaces texts, not tokens"
    else:
        out.relevance = _relevance(ev, grader, description, frequent, memo if memo is not None else {})
    own = ev.lists("method")
    if embed_fn is not None and len(own) == 1 and own[0].tokens:  # ADL has a list per position: not grouped
        out.topics = topic_groups(own[0].tokens, k=topics, embed_fn=embed_fn, seed=seed)
    text_sets = [ts for ts in ev.texts if [t for t in ts.texts if t.strip()]]
    if not ft_texts or embed_fn is None:
        out.skipped["similarity"] = "no finetuning data (D_ft)"
    elif not text_sets:
        out.skipped["similarity"] = "the method surfaces no texts"
    else:
        rng = np.random.default_rng(seed)
        ref = list(ft_texts)
        if len(ref) > max_texts:
            ref = [ref[i] for i in sorted(rng.choice(len(ref), max_texts, replace=False))]
        ref_e = embed_fn(ref)
        for ts in text_sets:
            texts = [t for t in ts.texts if t.strip()][:max_texts]
            out.similarity[ts.name] = pairwise(embed_fn(texts), ref_e)
            out.similarity_roles[ts.name] = ts.role
    if candidates is None or true is None:
        out.skipped["identification"] = "no candidates / true description"
    else:
        texts = ev.identification_texts()
        if not texts:
            out.skipped["identification"] = "the method surfaced no evidence"
        else:
            from .identify import identification

            kw = {"embedder": embedder} if embedder else {}
            idn = identification(texts, candidates, true, **kw)
            out.identification = {"rank": idn.rank, "n_candidates": idn.n_candidates, "true": idn.true,
                                  "scores": idn.scores}
    return out
