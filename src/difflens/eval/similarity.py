"""Steering similarity: how close steered text is to the finetuning data (paper §3, Fig. 2b).

The paper embeds texts (Qwen3 Embedding 0.6B there; any sentence-transformers model here, the
embedded all-MiniLM-L6-v2 by default) and reports the mean pairwise cosine similarity between

- steered outputs (α·δ̄_j added) and the finetuning data D_ft — the quantity of interest,
- unsteered outputs and D_ft — the baseline steering must beat,
- random-direction-steered outputs and D_ft — our control: the same α·η along a random direction,
  so that "steering moved the text somewhere" is not mistaken for "steering moved it to D_ft",
- D_ft with itself (pairs i ≠ j) — how narrow the data are; the gray dotted line of Fig. 2b,
- steered and unsteered outputs and ordinary chat data — steering should not just make text
  "more chat-like".

D_ft and the chat data are subsampled to 500 texts each (the paper's footnote 4) with a seeded
RNG, so two evaluations of the same run compare the same pairs. Each :class:`Stat` reports the
mean and the population std over all pairs and the number of pairs: the std is the spread of
single pairs (the shaded band of Fig. 2b), not an error bar on the mean.

Every distinct text is embedded once, in one :func:`~difflens.models.embedder.embed` call for all
groups (and all positions in :func:`per_position`): embedding is the slow part on a CPU, and D_ft
and the chat data are shared by every comparison.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from pydantic import BaseModel

from ..models.embedder import DEFAULT_EMBEDDER, embed

__all__ = ["Stat", "pairwise", "steering_similarity", "per_position", "KEYS"]

KEYS: tuple[str, ...] = ("steered_vs_ft", "unsteered_vs_ft", "random_vs_ft", "ft_self",
                         "steered_vs_chat", "unsteered_vs_chat")
"""Result keys in order (``random_vs_ft`` only when random-control texts are given)."""


class Stat(BaseModel):
    """Mean and population std of pairwise cosine similarities; ``n`` is the number of pairs."""

    mean: float
    std: float
    n: int


def pairwise(a: np.ndarray, b: np.ndarray, *, exclude_diagonal: bool = False) -> Stat:
    """All cosine similarities between the rows of ``a`` [n, d] and the rows of ``b`` [m, d].

    Rows are expected to be L2-normalised (as :func:`~difflens.models.embedder.embed` returns
    them), so a similarity is a dot product. ``exclude_diagonal=True`` is for the self-similarity
    of one group (``a`` and ``b`` the same rows): the n pairs (i, i) — always 1 — are dropped, which
    leaves n·(n-1) ordered pairs (each unordered pair twice, which changes neither mean nor std).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"pairwise needs two 2-d arrays of embeddings, got shapes {a.shape} and {b.shape}")
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise ValueError(f"pairwise needs at least one embedding on each side, got {a.shape[0]} and {b.shape[0]} rows")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"embedding dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    sims = a @ b.T
    if exclude_diagonal:
        if a.shape[0] != b.shape[0]:
            raise ValueError("exclude_diagonal is for the self-similarity of one group: both sides must have the "
                             f"same rows, got {a.shape[0]} and {b.shape[0]}")
        if a.shape[0] < 2:
            raise ValueError(f"self-similarity needs at least 2 texts (pairs i != j), got {a.shape[0]}")
        sims = sims[~np.eye(a.shape[0], dtype=bool)]
    sims = sims.ravel()
    return Stat(mean=float(sims.mean()), std=float(sims.std()), n=int(sims.size))


# ============================================================================================
# Groups of texts
# ============================================================================================


def _clean(texts: Sequence[str], what: str, *, required: bool = True) -> list[str]:
    """Stripped non-blank texts. A required group, or an optional one that was given but holds only
    blank texts, must keep at least one: an empty group would silently drop a comparison."""
    if isinstance(texts, str):
        raise ValueError(f"{what}: expected a list of texts, got a single string")
    out = [t.strip() for t in texts if t is not None and t.strip()]
    if not out and (required or len(texts) > 0):
        given = "no texts" if len(texts) == 0 else f"{len(texts)} text(s), all empty or whitespace"
        raise ValueError(f"{what}: got {given}; at least one non-empty text is needed")
    return out


def _subsample(texts: list[str], max_samples: int, rng: np.random.Generator) -> list[str]:
    """At most ``max_samples`` texts, drawn without replacement, in their original order."""
    if max_samples < 1:
        raise ValueError(f"max_samples must be at least 1, got {max_samples}")
    if len(texts) <= max_samples:
        return texts
    keep = np.sort(rng.choice(len(texts), size=max_samples, replace=False))
    return [texts[i] for i in keep]


def _reference_groups(ft: Sequence[str], chat: Sequence[str], max_samples: int, seed: int) -> tuple[list[str], list[str]]:
    """D_ft and chat data cleaned and subsampled (one RNG, D_ft drawn first)."""
    rng = np.random.default_rng(seed)
    ft_c = _subsample(_clean(ft, "ft (finetuning data)"), max_samples, rng)
    chat_c = _subsample(_clean(chat, "chat data"), max_samples, rng)
    if len(ft_c) < 2:
        raise ValueError(f"ft (finetuning data): self-similarity needs at least 2 non-empty texts, got {len(ft_c)}")
    return ft_c, chat_c


class _Table:
    """Embeddings of every distinct text, computed in one call."""

    def __init__(self, groups: Sequence[Sequence[str]], embedder: str):
        distinct = list(dict.fromkeys(t for g in groups for t in g))
        vecs = np.asarray(embed(distinct, embedder), dtype=np.float64)
        self.index = {t: i for i, t in enumerate(distinct)}
        self.vecs = vecs

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self.vecs[[self.index[t] for t in texts]]


def _compare(table: _Table, steered: list[str], random: list[str], shared: dict[str, Stat],
             ft_e: np.ndarray, chat_e: np.ndarray) -> dict[str, Stat]:
    """One position's result: the steered/random comparisons plus the ``shared`` ones, in KEYS order."""
    steered_e = table(steered)
    out = {k: v.model_copy() for k, v in shared.items()}
    out["steered_vs_ft"] = pairwise(steered_e, ft_e)
    out["steered_vs_chat"] = pairwise(steered_e, chat_e)
    if random:
        out["random_vs_ft"] = pairwise(table(random), ft_e)
    return {k: out[k] for k in KEYS if k in out}


def _shared(table: _Table, unsteered: list[str], ft_e: np.ndarray, chat_e: np.ndarray) -> dict[str, Stat]:
    """The comparisons that do not involve steered text (the same for every position)."""
    unsteered_e = table(unsteered)
    return {"unsteered_vs_ft": pairwise(unsteered_e, ft_e),
            "ft_self": pairwise(ft_e, ft_e, exclude_diagonal=True),
            "unsteered_vs_chat": pairwise(unsteered_e, chat_e)}


# ============================================================================================
# Public API
# ============================================================================================


def steering_similarity(steered: Sequence[str], unsteered: Sequence[str], ft: Sequence[str], chat: Sequence[str], *,
                        random: Sequence[str] = (), embedder: str = DEFAULT_EMBEDDER, max_samples: int = 500,
                        seed: int = 0) -> dict[str, Stat]:
    """Fig. 2b's similarities for one set of steered samples.

    Returns the keys of :data:`KEYS` in order: ``steered_vs_ft``, ``unsteered_vs_ft``,
    ``random_vs_ft`` (omitted when ``random`` is empty), ``ft_self``, ``steered_vs_chat``,
    ``unsteered_vs_chat``. Texts are stripped and blank ones dropped (a steered model sometimes
    stops at once); ``ft`` and ``chat`` are subsampled to ``max_samples`` with ``seed``. Steered,
    unsteered and random texts are all kept (a few hundred at most). Raises ValueError when a
    group has no non-empty text, or D_ft fewer than 2.
    """
    return per_position({0: steered}, unsteered, ft, chat, random=random, embedder=embedder,
                        max_samples=max_samples, seed=seed)[0]


def per_position(steered_by_position: Mapping[int, Sequence[str]], unsteered: Sequence[str], ft: Sequence[str],
                 chat: Sequence[str], *, random: Sequence[str] | Mapping[int, Sequence[str]] = (),
                 embedder: str = DEFAULT_EMBEDDER, max_samples: int = 500, seed: int = 0) -> dict[int, dict[str, Stat]]:
    """:func:`steering_similarity` for the steered samples of every position (paper Fig. 6b, 30).

    ``random`` is one list of random-control texts for every position, or a mapping position →
    texts (the pipeline steers the random direction at each position's own α, so each position has
    its own control); a position missing from the mapping gets no ``random_vs_ft``. All positions
    share the same D_ft and chat subsample, and every distinct text is embedded once; the
    position-independent entries (``unsteered_*``, ``ft_self``) are computed once and repeated.
    """
    if not steered_by_position:
        raise ValueError("per_position: no positions given (steered_by_position is empty)")
    ft_c, chat_c = _reference_groups(ft, chat, max_samples, seed)
    unsteered_c = _clean(unsteered, "unsteered outputs")
    steered_c = {int(p): _clean(texts, f"steered outputs (position {p})") for p, texts in steered_by_position.items()}
    if isinstance(random, Mapping):
        random_c = {int(p): _clean(texts, f"random-control outputs (position {p})", required=False)
                    for p, texts in random.items()}
        unknown = sorted(set(random_c) - set(steered_c))
        if unknown:
            raise ValueError(f"random-control outputs for position(s) {unknown} without steered outputs")
    else:
        shared_random = _clean(random, "random-control outputs", required=False)
        random_c = {p: shared_random for p in steered_c}
    table = _Table([ft_c, chat_c, unsteered_c, *steered_c.values(), *random_c.values()], embedder)
    ft_e, chat_e = table(ft_c), table(chat_c)
    shared = _shared(table, unsteered_c, ft_e, chat_e)
    return {p: _compare(table, steered_c[p], random_c.get(p, []), shared, ft_e, chat_e) for p in steered_c}
