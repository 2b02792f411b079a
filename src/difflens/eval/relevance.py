"""Token relevance (paper §3, Fig. 2a, App. C.2): the share of a vector's top tokens that the
relevance grader ties to the finetuning objective, per source, method and position.

Sources are δ̄ and its baselines h̄_base, h̄_ft, plus the controls (δ̄ read through the base model,
a random vector of δ̄'s norm) where the run computed them. Methods: the top-``k`` Patchscope tokens
at the grader-chosen scale, and the top-``k`` logit-lens tokens of +v. The grader sees the true
description and the most frequent tokens of D_ft; the LLM backend runs three shuffled passes and
calls a token relevant only if all agree. The result keeps every token's verdict, so a reader can
check what was counted.
"""
from __future__ import annotations

from typing import Any, Sequence

from pydantic import BaseModel

from ..rundir.artifacts import LogitLensResult, PatchscopeResult

__all__ = ["MethodRelevance", "token_relevance", "METHODS"]

METHODS = ("patchscope", "logit_lens")


class MethodRelevance(BaseModel):
    """Relevance of one source under one method: percentages per position and their maximum."""

    positions: list[int]
    per_position: list[float]  # % of the top-k tokens judged relevant, aligned with `positions`
    max: float
    tokens: dict[str, list[tuple[str, bool]]] = {}  # position → [(token, relevant)]


def _tokens(method: str, ps: PatchscopeResult | None, ll: LogitLensResult | None, source: str, j: int,
            k: int) -> list[str] | None:
    try:
        if method == "patchscope":
            return None if ps is None else ps.get(source, j).top_tokens(k)  # type: ignore[arg-type]
        return None if ll is None else [t.token for t in ll.get(source, j).top_positive[:k]]  # type: ignore[arg-type]
    except KeyError:
        return None


def token_relevance(ps: PatchscopeResult | None, ll: LogitLensResult | None, grader: Any, description: str,
                    frequent: Sequence[str], *, k: int = 20, positions: Sequence[int] | None = None,
                    sources: Sequence[str] | None = None) -> dict[str, dict[str, MethodRelevance]]:
    """``{source: {method: MethodRelevance}}`` for every source and method the artifacts hold.

    A (source, method) pair missing at some position is left out rather than counted as zero.
    Identical token lists are graded once (the grader is deterministic or majority-voted).
    """
    if ps is None and ll is None:
        raise ValueError("token relevance needs a Patchscope or logit-lens result")
    if not description or not description.strip():
        raise ValueError("token relevance needs the true description of the finetuning objective")
    entries = [*(ps.entries if ps else []), *(ll.entries if ll else [])]
    all_sources = list(dict.fromkeys(e.source for e in entries))
    srcs = [s for s in (sources or all_sources) if s in all_sources]
    pos = sorted(set(positions) if positions is not None else {e.position for e in entries})
    memo: dict[tuple[str, ...], list[bool]] = {}
    out: dict[str, dict[str, MethodRelevance]] = {}
    for source in srcs:
        for method in METHODS:
            per, kept, toks = [], [], {}
            for j in pos:
                tl = _tokens(method, ps, ll, source, j, k)
                if not tl:
                    continue
                key = tuple(tl)
                if key not in memo:
                    verdicts = [bool(v) for v in grader.grade(list(tl), description, list(frequent))]
                    if len(verdicts) != len(tl):
                        raise ValueError(f"the relevance grader returned {len(verdicts)} labels for {len(tl)} tokens")
                    memo[key] = verdicts
                v = memo[key]
                per.append(100.0 * sum(v) / len(v))
                kept.append(j)
                toks[str(j)] = list(zip(tl, v))
            if kept:
                out.setdefault(source, {})[method] = MethodRelevance(positions=kept, per_position=per, max=max(per),
                                                                     tokens=toks)
    return out
