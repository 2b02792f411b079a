"""Graders behind one interface, each with an ``llm`` backend (the paper's criteria through an
OpenAI-compatible endpoint) and an ``offline`` backend (deterministic, no API).

One module per grader, each with its prompt and reply parser:

- :mod:`.coherence` — coherence of generated text (steering threshold search; Prompt 16);
- :mod:`.scale` — Patchscope scale choice + the semantically coherent token subset (Prompt 21);
- :mod:`.relevance` — token relevance to the finetuning objective (Prompt 15);
- :mod:`.hypothesis` — a hypothesis about the finetuning objective against the truth (Prompts 1-5, 20).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..models.embedder import DEFAULT_EMBEDDER
from .coherence import CoherenceGrader, LLMCoherence, OfflineCoherence
from .relevance import LLMRelevance, OfflineRelevance, RelevanceGrader
from .scale import LLMScaleGrader, OfflineScaleGrader, ScaleContext, ScaleGrader, SpecificScaleGrader, tournament

__all__ = ["Graders", "make_graders", "graders_for", "grader_identity", "CoherenceGrader", "OfflineCoherence", "LLMCoherence",
           "ScaleGrader", "ScaleContext", "OfflineScaleGrader", "SpecificScaleGrader", "LLMScaleGrader", "tournament", "RelevanceGrader",
           "OfflineRelevance", "LLMRelevance"]



@dataclass
class Graders:
    coherence: CoherenceGrader
    scale: ScaleGrader
    relevance: RelevanceGrader


def make_graders(backend: str, *, model: Any = None, tokenizer: Any = None, client: Any = None,
                 embedder: str = DEFAULT_EMBEDDER, scope: Any = None) -> Graders:
    """Graders for ``backend`` ∈ {offline, llm}. ``llm`` needs a client (difflens.llm.LLMClient).

    Offline coherence scores text under the reference ``model``; ``scope`` (a context manager
    factory such as ``pair.base``) is entered around scoring, e.g. to switch a shared adapter off.
    """
    if backend == "offline":
        if model is None or tokenizer is None:
            raise ConfigError("offline coherence grading needs a reference model and tokenizer.")
        return Graders(OfflineCoherence(model, tokenizer, scope=scope), SpecificScaleGrader(embedder),
                       OfflineRelevance(embedder))
    if backend == "llm":
        if client is None:
            raise ConfigError("grader backend 'llm' needs an endpoint: set --llm-model/--llm-base-url "
                              "(and the API-key environment variable).")
        return Graders(LLMCoherence(client), LLMScaleGrader(client), LLMRelevance(client))
    raise ConfigError(f"unknown grader backend '{backend}': use 'offline' or 'llm'.")


def graders_for(pair: Any, backend: str, llm: Any = None) -> Graders:
    """Graders for a model pair. Offline coherence scores text under the *base* model (the finetuned
    model finds its own domain's word salad predictable) and is calibrated on the finetuned model's
    unsteered answers by the steering stage."""
    if backend == "offline":
        return make_graders("offline", model=pair.base_lm.model, tokenizer=pair.tokenizer, scope=pair.base)
    return make_graders(backend, client=llm)


def grader_identity(grader: Any) -> dict[str, Any]:
    """Everything that changes a grader's verdicts (backend, models, embedder, thresholds; never an
    API key) — part of every stage fingerprint, so a changed grader recomputes what it judged."""
    ident = getattr(grader, "identity", None)
    if callable(ident):
        return {"class": type(grader).__name__, **ident()}
    return {"class": type(grader).__name__, "name": getattr(grader, "name", "?")}
