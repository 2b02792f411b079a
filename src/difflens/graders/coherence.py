"""Coherence of generated text: the steering threshold's judge (paper Prompt 16).

- :class:`OfflineCoherence` — deterministic: fluent under a reference model (per-token NLL,
  calibrated on unsteered text) and not degenerate (repeated 3-grams);
- :class:`LLMCoherence` — the paper's criteria through an OpenAI-compatible endpoint.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from ..llm.replies import DECOR, Messages, chat_messages, clean_value, content_lines, must_end_with, tagged
from .text import WORD

# ============================================================================================
# Coherence grader (paper Prompt 16)
# ============================================================================================

COHERENCE_FORMAT = "end with exactly one final line 'ANSWER: COHERENT' or 'ANSWER: INCOHERENT'"

COHERENCE_SYSTEM = """
You judge whether a passage written by another language model reads as coherent English.

Call a passage COHERENT when it is grammatical enough to read and its sentences connect into one
sensible response. A few typos or small slips are fine.

Call it INCOHERENT when it suffers from any substantial problem such as:
- strings of unrelated words ("word salad") or invented / scrambled words,
- many misspellings,
- a phrase or token repeated over and over without purpose,
- jumps between topics with no link between them,
- broken chat templates or markup that make it unreadable,
- stitched-together fragments that do not add up to a response.

Ground rules:
- Judge coherence only. Whether the text is true, safe, polite, helpful or well written does not
  matter.
- Be tolerant of small things: three or four minor glitches still count as coherent; a problem
  that spoils the reading makes it incoherent.
- The passage may stop mid-sentence because of a length limit; do not count that against it.
- Tags such as <think> ... </think> may appear; ignore them.
- Occasional repetition is acceptable; only excessive repetition is not.
- A text that starts well and then degenerates into noise is incoherent.

Illustrations:
- "Rainbows form when sunlight is refracted and reflected inside raindrops, splitting white light
  into its colours." -> COHERENT (clear and connected)
- "Preheat oven oven the flour cake cake cake temperature banana moist moistly xqzt" ->
  INCOHERENT (repetition, nonsense words)
- "Our workshop series: Advanced Sourdough Methods. Module one covers starters, module two
  covers shaping and" -> COHERENT (readable, merely cut off)
- "Sure, here is a plan. Monday walk. Tuesday gradient descent pyramid Napoleon tariff; saxophone
  -- !! -- Mon" -> INCOHERENT (collapses into unrelated fragments)

Reply with at most a couple of short sentences of reasoning, then finish with exactly one line
that is either
ANSWER: COHERENT
or
ANSWER: INCOHERENT
Write nothing after that line and do not use the word ANSWER anywhere else.
"""


def coherence_messages(text: str) -> Messages:
    """Messages asking whether ``text`` (e.g. a steered generation) is coherent."""
    body = str(text).replace("<<<END OF PASSAGE>>>", "<<<END-OF-PASSAGE>>>")
    user = (
        "Passage to judge:\n<<<START OF PASSAGE>>>\n"
        f"{body}\n"
        "<<<END OF PASSAGE>>>\n\n"
        f"Judge only its coherence and {COHERENCE_FORMAT}."
    )
    return chat_messages(COHERENCE_SYSTEM, user)


def parse_coherence(reply: str) -> bool:
    """True for COHERENT, False for INCOHERENT; ValueError if missing, conflicting or trailing."""
    lines = content_lines(reply)
    hits = tagged(lines, r"ANSWER")
    if not hits:
        # A bare one-word reply is unambiguous enough.
        if len(lines) == 1:
            word = clean_value(lines[0].strip(DECOR)).upper()
            if word in ("COHERENT", "INCOHERENT"):
                return word == "COHERENT"
        raise ValueError(f"no 'ANSWER:' line found. Required format: {COHERENCE_FORMAT}")
    labels = set()
    for _, m in hits:
        v = clean_value(m.group("value")).upper()
        if v not in ("COHERENT", "INCOHERENT"):
            raise ValueError(
                f"the ANSWER line must hold exactly one label, got {m.group('value')[:60]!r}. "
                f"Required format: {COHERENCE_FORMAT}"
            )
        labels.add(v)
    if len(labels) > 1:
        raise ValueError(f"the reply gives both labels. Required format: {COHERENCE_FORMAT}")
    must_end_with(lines, {i for i, _ in hits}, COHERENCE_FORMAT)
    return labels.pop() == "COHERENT"


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
            words = WORD.findall(t)
            res.append(len(words) >= self.min_words and v <= self.nll_threshold
                       and repetition_score(t) <= self.max_repetition)
        return res


@dataclass
class LLMCoherence:
    client: Any
    name: str = "llm"

    def grade(self, texts: Sequence[str]) -> list[bool]:
        return [bool(self.client.ask(coherence_messages(t), parse=parse_coherence)) for t in texts]
