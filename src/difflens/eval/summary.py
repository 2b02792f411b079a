"""The evaluation summary ``RUN/eval/summary.json`` (typed; path owned by :class:`RunLayout`).

Schema (version 1)::

    {
      "schema_version": 1,
      "ft_data": {"name", "organism", "type", "source", "n_texts", "hash"} | null,
      "organism": str | null, "description": str | null,
      "frequent_tokens": [str],                 # the relevance grader's D_ft context
      "graders": {"relevance": {...identity}}, "embedder": str,
      "skipped": {part: reason},                # parts skipped for the whole run (e.g. no D_ft)
      "results": {dataset: {layer: {
          "dataset", "layer",
          "relevance": {source: {method: {"positions": [j], "per_position": [%], "max": %,
                                          "tokens": {j: [[token, relevant]]}}}},
                       # source ∈ delta, base (read by the base model), ft, delta_via_base, random,
                       # base_via_ft; method ∈ patchscope, logit_lens
          "steering_similarity": {"steered_vs_ft", "unsteered_vs_ft", "random_vs_ft", "ft_self",
                                  "steered_vs_chat", "unsteered_vs_chat": {"mean", "std", "n"}},
                       # steered: all positions' samples pooled; "n" counts text pairs
          "steering_similarity_per_position": {j: {same keys}},
          "causal": {"layer", "positions", "delta": {"ft": [ΔCE per position], "pt": [...]},
                     "random": {"ft": {"mean", "std"}, "pt": {...}}, "random_values": {...},
                     "n_texts": {...}, "n_tokens": {...}},
          "identification": {"adl_rank", "blackbox_rank", "n_candidates", "true",
                             "adl_scores": {name: sim}, "blackbox_scores": {name: sim}},
          "leakage": {"ft": {"share", "n", "examples"}, "base": {...} | null, "min_words", "grader"},
                       # unsteered answers to the steering prompts with ≥ min_words domain words
          "skipped": {part: reason}}}},
      "methods": {method: {                     # every diffing method the run has (adl, mining, kl, amplify)
          "method", "dataset", "title",
          "relevance": {list name: {"role": "method" | "baseline" | "control", "max": %, "mean": %,
                                    "lists": [{"group", "tokens": [[token, relevant]], "relevance": %}]}},
                       # e.g. mining: "top-K occurrence of ft − base" (method), "ft alone: top-K
                       # occurrence" (baseline), "noise pair: ..." (control); ADL: one list per position
          "similarity": {text set name: {"mean", "std", "n"}},   # cosine similarity to D_ft
          "similarity_roles": {text set name: role},
          "identification": {"rank", "n_candidates", "true", "scores"} | null,   # from its own evidence
          "cost": {"seconds", "forward_tokens"}, "missing": [what is not computed, with the command],
          "skipped": {part: reason}}}
    }

Percentages are 0-100; ΔCE in nats per token (positive: removing the direction's component from
the finetuned model hurts its loss on that data); ranks start at 1 (ties count against the truth).
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .causal import CausalResult
from .methods import MethodEval
from .relevance import MethodRelevance
from .similarity import Stat

__all__ = ["EvalSummary", "LayerEval", "IdentificationResult", "LeakageResult", "LeakageSide", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1


class IdentificationResult(BaseModel):
    adl_rank: int
    blackbox_rank: int
    n_candidates: int
    true: str
    adl_scores: dict[str, float] = {}
    blackbox_scores: dict[str, float] = {}


class LeakageSide(BaseModel):
    share: float  # leaking answers / answers
    n: int
    examples: list[dict[str, Any]] = []  # leaking answers: {"prompt", "text", "words"}


class LeakageResult(BaseModel):
    """Unsteered answers to the steering prompts that give the domain away, finetuned vs base model."""

    ft: LeakageSide
    base: LeakageSide | None = None
    min_words: int
    grader: dict[str, Any] = {}


class LayerEval(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str
    layer: int
    relevance: dict[str, dict[str, MethodRelevance]] | None = None
    steering_similarity: dict[str, Stat] | None = None
    steering_similarity_per_position: dict[str, dict[str, Stat]] | None = None
    causal: CausalResult | None = None
    identification: IdentificationResult | None = None
    leakage: LeakageResult | None = None
    skipped: dict[str, str] = Field(default_factory=dict)


class EvalSummary(BaseModel):
    """The whole summary. Unknown fields are refused: a file of another schema is an error, not a
    summary with every part silently missing."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    ft_data: dict[str, Any] | None = None
    organism: str | None = None
    description: str | None = None
    frequent_tokens: list[str] = Field(default_factory=list)
    graders: dict[str, Any] = Field(default_factory=dict)
    embedder: str | None = None
    skipped: dict[str, str] = Field(default_factory=dict)
    results: dict[str, dict[str, LayerEval]] = Field(default_factory=dict)
    methods: dict[str, MethodEval] = Field(default_factory=dict)

    def layers(self) -> list[LayerEval]:
        return [le for per in self.results.values() for le in per.values()]
