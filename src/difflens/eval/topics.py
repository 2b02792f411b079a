"""Topic groups of a ranked token list (issue 20: diff mining's optional NMF topics).

A method's top tokens often mix several themes (cake_bake's mining list: baking words, freezing
words, kitchen words) with word pieces. Grouping them makes a long list readable: the tokens are
embedded with the sentence embedder the evaluation already uses, their non-negative cosine
similarities form a symmetric matrix S, and scikit-learn's NMF factors S ≈ W·H with k components;
each token joins the component with its largest loading in W. A group is listed with its tokens in
rank order and its weight (the summed ranking weights of its tokens, or their count). Tokens that
are empty after stripping, or pure punctuation or digits, are left out.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np
from pydantic import BaseModel

__all__ = ["TopicGroup", "topic_groups"]

_CONTENT = re.compile(r"[^\W\d_]", re.UNICODE)  # at least one letter


class TopicGroup(BaseModel):
    tokens: list[str]  # in the ranking's order
    weight: float


def topic_groups(tokens: Sequence[str], weights: Sequence[float] | None = None, *, k: int = 4,
                 embed_fn: Callable[[Sequence[str]], np.ndarray] | None = None, seed: int = 0) -> list[TopicGroup]:
    """At most ``k`` groups of ``tokens`` (heaviest first); ``embed_fn`` maps texts to L2-normalised rows
    (default: the evaluation's sentence embedder)."""
    from sklearn.decomposition import NMF

    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    w = list(weights) if weights is not None else [1.0] * len(tokens)
    if len(w) != len(tokens):
        raise ValueError(f"{len(w)} weights for {len(tokens)} tokens")
    keep = [(t.strip(), float(x)) for t, x in zip(tokens, w) if _CONTENT.search(t.strip() or "")]
    seen: set[str] = set()
    items = []
    for t, x in keep:
        if t.lower() not in seen:
            seen.add(t.lower())
            items.append((t, x))
    if not items:
        return []
    if len(items) == 1:
        return [TopicGroup(tokens=[items[0][0]], weight=items[0][1])]
    if embed_fn is None:
        from ..models.embedder import embed

        def embed_fn(texts: Sequence[str]) -> np.ndarray:  # noqa: F811 - the default embedder
            return np.asarray(embed(list(texts)))
    e = np.asarray(embed_fn([t for t, _ in items]), dtype=np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    s = np.clip(e @ e.T, 0.0, None)
    n = min(k, len(items))
    loadings = NMF(n_components=n, init="nndsvda", random_state=seed, max_iter=1000).fit_transform(s)
    label = loadings.argmax(axis=1)
    groups = []
    for c in range(n):
        members = [i for i in range(len(items)) if label[i] == c]
        if members:
            groups.append(TopicGroup(tokens=[items[i][0] for i in members],
                                     weight=float(sum(items[i][1] for i in members))))
    return sorted(groups, key=lambda g: -g.weight)
