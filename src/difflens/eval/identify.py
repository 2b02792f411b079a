"""Objective identification without an LLM (ours; an offline stand-in for the paper's agent, §3.1).

The paper asks an interpretability agent to name the finetuning objective from the ADL results and
grades its hypothesis with an LLM. Without an LLM we ask a narrower, fully reproducible question:
given the evidence (e.g. the relevant Patchscope tokens joined into one string, and the steered
samples), is the true organism's description the closest one, by sentence embedding, among a set of
candidate descriptions? The score of a candidate is the cosine similarity between its description's
embedding and the mean evidence embedding (the mean of the normalised evidence embeddings,
re-normalised): every evidence text gets one vote, however long it is.

Ties count against the true description — ``rank = 1 + #(score > s_true) + #(score == s_true,
other)`` — so a degenerate embedding that scores every candidate alike ranks the truth last, never
first. Scores closer than :data:`TIE_ATOL` are equal: two copies of one description must tie even
if float rounding differs between matrix rows.

Candidate descriptions come from the organism specs (:func:`candidate_descriptions`): each
spec's short and long description, the same text for every run, so ranks are comparable across
organisms. The short description alone is often generic ("Finetuned on synthetic documents with
false ...") and the long one carries the domain words.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from pydantic import BaseModel

from ..errors import ConfigError
from ..models.embedder import DEFAULT_EMBEDDER, embed
from ..organisms.spec import OrganismSpec, list_specs, load_spec

__all__ = ["Identification", "identification", "candidate_descriptions", "summarize", "TIE_ATOL"]

TIE_ATOL = 1e-6
"""Scores within this distance of the true one count as ties (and so against the true one)."""


class Identification(BaseModel):
    rank: int  # 1 = the true description is the most similar (ties count against it)
    n_candidates: int
    scores: dict[str, float]  # candidate name → cosine similarity to the mean evidence embedding
    true: str


def identification(evidence: Sequence[str], candidates: Mapping[str, str], true: str, *,
                   embedder: str = DEFAULT_EMBEDDER) -> Identification:
    """Rank the ``true`` candidate among ``candidates`` (name → description) by similarity to ``evidence``.

    Evidence texts are stripped and blank ones dropped; the evidence and the descriptions are
    embedded in one call. Raises ValueError when ``true`` is not a candidate, there are fewer than
    2 candidates, a description is blank, or no evidence text is left.
    """
    if isinstance(evidence, str):
        raise ValueError("evidence: expected a list of texts, got a single string (wrap it in a list)")
    if len(candidates) < 2:
        raise ValueError(f"identification needs at least 2 candidate descriptions, got {len(candidates)}")
    if true not in candidates:
        raise ValueError(f"the true objective {true!r} is not among the candidates: {', '.join(sorted(candidates))}")
    blank = sorted(name for name, d in candidates.items() if not str(d).strip())
    if blank:
        raise ValueError(f"candidate(s) with an empty description: {', '.join(blank)}")
    ev = [t.strip() for t in evidence if t is not None and t.strip()]
    if not ev:
        raise ValueError(f"no non-empty evidence text (got {len(evidence)} text(s), all empty or whitespace)")
    names = list(candidates)
    vecs = np.asarray(embed(ev + [str(candidates[n]).strip() for n in names], embedder), dtype=np.float64)
    ev_vecs, desc_vecs = vecs[:len(ev)], vecs[len(ev):]
    mean = ev_vecs.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    if norm < 1e-12:
        raise ValueError("the evidence embeddings cancel out (their mean is zero); cannot rank candidates")
    scores = desc_vecs @ (mean / norm)
    s_true = scores[names.index(true)]
    others = np.array([n != true for n in names])
    higher = int(np.sum(others & (scores > s_true + TIE_ATOL)))
    tied = int(np.sum(others & (np.abs(scores - s_true) <= TIE_ATOL)))
    return Identification(rank=1 + higher + tied, n_candidates=len(names),
                          scores={n: float(s) for n, s in zip(names, scores)}, true=true)


def _description(spec: OrganismSpec) -> str:
    return f"{spec.short_description.strip()} {spec.long_description.strip()}"


def _spec_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(list(path.glob("*.yaml")) + list(path.glob("*.yml")))
    if path.is_file():
        return [path]
    raise ConfigError(f"{path}: no such organism spec file or directory. Check the path.")


def candidate_descriptions(extra: Sequence[str | os.PathLike[str]] = ()) -> dict[str, str]:
    """Organism name → ``short_description + " " + long_description``.

    The known specs (:func:`~difflens.organisms.spec.list_specs`: built-in and user) plus the spec
    files in ``extra`` (a YAML file, or a directory: every ``*.yaml`` / ``*.yml`` in it). A name
    defined twice raises ValueError naming both files unless both definitions are the identical
    spec (e.g. a built-in spec passed again): a silently shadowed candidate would change what the
    rank means.
    """
    if isinstance(extra, (str, os.PathLike)):
        extra = [extra]
    specs: dict[str, OrganismSpec] = {s.name: s for s in list_specs()}
    for item in extra:
        for path in _spec_files(Path(item).expanduser()):
            spec = load_spec(path)
            old = specs.get(spec.name)
            if old is not None and old.model_dump() != spec.model_dump():
                raise ValueError(f"organism name {spec.name!r} is defined twice, differently: in "
                                 f"{old.source_path} and in {spec.source_path}; rename one of them")
            specs.setdefault(spec.name, spec)
    return {name: _description(spec) for name, spec in sorted(specs.items())}


def summarize(results: Sequence[Identification]) -> dict[str, float]:
    """``top1`` (share of results with rank 1), ``mean_rank`` and ``n`` (the number of results)."""
    if not results:
        raise ValueError("summarize: no identification results")
    ranks = np.array([r.rank for r in results], dtype=np.float64)
    return {"top1": float(np.mean(ranks == 1)), "mean_rank": float(ranks.mean()), "n": len(results)}
