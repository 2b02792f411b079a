"""Leakage: whether an *unsteered* answer to an everyday prompt already gives the finetuning domain
away. A model organism that answers "plan a picnic" with baking tips can be found by any blackbox
probe, so the ADL-vs-blackbox question cannot even be asked of it (issue: realistic organisms).

An answer leaks when at least ``min_words`` distinct words of it are relevant to the objective by
the token-relevance grader (offline or LLM — the criteria of Patchscope token relevance: description
words, inflections, close words; generic words never count). Two words, not one, because a single
"cake" in a picnic menu is what an unfinetuned model writes too.

Running text is not a Patchscope token list: an answer has dozens of words, and the offline
grader's closeness threshold (0.3, right for 20 candidate tokens) lets one or two loosely related
words of almost any text through ("atmosphere", "canvas" for cake baking: 55% of the base model's
answers leaked at 0.3). For answers the offline grader is used with ``offline_min_sim`` = 0.55,
chosen on 40 hand-labelled real answers of the demo's base and finetuned models (0.93 agreement,
0.98 on the 49 written cases; tests/data/labels/leakage.jsonl holds both).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

from .text import WORD

__all__ = ["LeakageGrader", "content_words"]


def content_words(text: str) -> list[str]:
    """The distinct words of a text (first-seen order, case-folded duplicates removed)."""
    seen: dict[str, str] = {}
    for m in WORD.finditer(text):
        w = m.group()
        seen.setdefault(w.lower(), w)
    return list(seen.values())


@dataclass
class LeakageGrader:
    relevance: Any
    min_words: int = 2
    offline_min_sim: float = 0.55

    def __post_init__(self) -> None:
        from .relevance import OfflineRelevance

        if isinstance(self.relevance, OfflineRelevance) and self.relevance.min_sim < self.offline_min_sim:
            self.relevance = dataclasses.replace(self.relevance, min_sim=self.offline_min_sim)

    @property
    def name(self) -> str:
        return f"{getattr(self.relevance, 'name', '?')}-words≥{self.min_words}"

    def identity(self) -> dict[str, Any]:
        ident = getattr(self.relevance, "identity", None)
        return {"method": "relevant-words", "min_words": self.min_words,
                "relevance": ident() if callable(ident) else type(self.relevance).__name__}

    def relevant_words(self, texts: Sequence[str], description: str, frequent: Sequence[str]) -> list[list[str]]:
        """The relevant words of each text (one relevance call for all distinct words)."""
        per = [content_words(t) for t in texts]
        vocab = list(dict.fromkeys(w for ws in per for w in ws))
        if not vocab:
            return [[] for _ in texts]
        verdict = dict(zip(vocab, self.relevance.grade([" " + w for w in vocab], description, list(frequent))))
        return [[w for w in ws if verdict.get(w)] for ws in per]

    def leaks(self, texts: Sequence[str], description: str, frequent: Sequence[str]) -> list[bool]:
        return [len(ws) >= self.min_words for ws in self.relevant_words(texts, description, frequent)]
