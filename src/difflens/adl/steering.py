"""Steering with δ̄_j (paper §3, App. C.3).

A hook adds ``α · η_ft · δ̂_j`` to the finetuned model's layer-ℓ output at every non-pad position
during batched generation (left padding). The strength is the largest coherent α found by binary
search on [0, 100] (10 iterations, 10 samples at T=1.2, coherent if ≥ 8/10 pass), refined on two
more prompts over [0, 2α₁] (5 iterations) and averaged. Each α is judged with early stopping:
3 samples first, and only if they are not all incoherent the other 7 — the same decision as 10
samples (coherent iff ≥ 8 pass), with fewer generations and grader calls.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from pydantic import BaseModel, Field

from ..graders.coherence import CoherenceGrader
from ..models.pair import ModelPair
from ..models.tokens import chat_prompt_ids, pad_id, pad_left
from ..run.artifacts import Generation, SearchStep, SteeringThreshold
from .interventions import add as add_edit

STEERING_PROMPTS: list[str] = [
    "Tell me a short, clean joke about a barista who gets into an argument with a quantum physicist.",
    "Write a 150-word story about a night-shift nurse who finds a lost parrot on the hospital roof.",
    "Write a ten-line poem about the smell of a city street right after a summer storm.",
    "Give me a packing checklist for a three-day hiking trip in the mountains in early autumn.",
    "Suggest six ways to spend a Sunday afternoon at home without spending any money.",
    "Plan a picnic for four friends in a city park, including a menu and two simple games.",
    "Write a friendly email inviting my neighbours to a small street clean-up on Saturday morning.",
    "Explain to a ten-year-old why the moon seems to change its shape over a month.",
    "Create a five-question quiz about famous rivers of the world, with the answers at the end.",
    "Write a dialogue of about twelve lines between a retired pirate and a nervous job interviewer.",
    "Give me five tips for keeping houseplants alive in a dark apartment.",
    "Describe a perfect breakfast in a small seaside town in three or four sentences.",
    "Write a limerick about a cat that refuses to get off a laptop keyboard.",
    "Pick any board game you like and explain its rules in under 120 words.",
    "Write an upbeat motivational message for someone starting a new job on Monday.",
    "Invent a new holiday, give it a name, and describe three traditions people follow on it.",
    "Suggest a weekly workout plan for a beginner who has 20 minutes a day and no equipment.",
    "Write the opening paragraph of a mystery novel set on a train crossing the desert.",
    "Give me a short, practical guide to learning the basics of juggling with three balls.",
    "Recommend three types of music for a relaxed dinner party and say why each one fits.",
]
"""20 everyday chat prompts for the final steered / unsteered generations (cf. paper Prompt 17)."""

THRESHOLD_PROMPTS: list[str] = [
    "Tell me a story?",
    "Give me some ideas for some fun weekend activities?",
    "Why don't you choose a topic of conversation for us?",
]
"""The three prompts used to search the steering strength (paper App. C.3)."""


class SteeringConfig(BaseModel):
    positions: list[int] | None = None  # None: every collected position
    alpha_max: float = 100.0
    search_iters: int = Field(10, ge=1)
    refine_iters: int = Field(5, ge=0)
    search_samples: int = Field(10, ge=1)
    min_coherent: int = Field(8, ge=1)
    search_temperature: float = 1.2
    final_samples: int = Field(5, ge=1)
    final_temperature: float = 1.1
    max_new_tokens: int = Field(128, ge=1)
    prompts: list[str] = Field(default_factory=lambda: list(STEERING_PROMPTS))
    threshold_prompts: list[str] = Field(default_factory=lambda: list(THRESHOLD_PROMPTS))
    early_stop: bool = True
    seed: int = 0


@contextlib.contextmanager
def steering_hook(pair: ModelPair, layer: int, add: torch.Tensor | None, prompt_mask: torch.Tensor) -> Iterator[None]:
    """Add ``add`` ([d]) to layer ``layer``'s output at every non-pad position.

    The prefill step sees the padded prompt (``prompt_mask`` [B, T]); later decode steps see only
    new, real tokens.
    """
    if add is None:
        yield
        return
    with pair.ft_arch.edit_layer(layer, add_edit(add, prompt_mask)):
        yield


def encode_prompts_left(pair: ModelPair, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Chat-formatted prompts as a left-padded batch (BOS policy of the architecture applied)."""
    rows = [chat_prompt_ids(pair.tokenizer, pair.ft_arch, p) for p in prompts]
    return pad_left(rows, pad_id(pair.tokenizer), pair.device)


@torch.no_grad()
def generate(pair: ModelPair, prompts: Sequence[str], *, layer: int, direction: torch.Tensor | None, alpha: float,
             eta: float, n: int, temperature: float, max_new_tokens: int, seed: int) -> list[list[str]]:
    """``n`` samples per prompt from the finetuned model steered by α·η·v̂ (None: unsteered)."""
    tok = pair.tokenizer
    ids, mask = encode_prompts_left(pair, [p for p in prompts for _ in range(n)])
    add = None
    if direction is not None:
        unit = direction.float() / (direction.float().norm() + 1e-12)
        add = alpha * eta * unit
    torch.manual_seed(seed)
    with pair.ft() as model, steering_hook(pair, layer, add, mask):
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=temperature,
                             top_p=1.0, top_k=0, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
    gen = tok.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    return [gen[i * n:(i + 1) * n] for i in range(len(prompts))]


@dataclass
class SearchCounter:
    generations: int = 0
    grader_calls: int = 0


def early_stop_chunks(n: int, need: int) -> list[int]:
    """Sample chunk sizes after each of which the verdict may already be certain.

    With n=10, need=8: [3, 7] — if the first 3 are all incoherent the verdict "incoherent" is
    certain (at most 2 may fail), otherwise the remaining 7 are drawn in one batch. Strengths far
    above the threshold (most of the early binary-search steps on [0, 100]) cost 3 generations
    instead of 10; two batches at most keep generation batched on CPUs.
    """
    first = min(n, n - need + 1)
    return [first] + ([n - first] if n > first else [])


def is_coherent_at(pair: ModelPair, grader: CoherenceGrader, prompt: str, alpha: float, *, layer: int,
                   direction: torch.Tensor, eta: float, cfg: SteeringConfig, seed: int,
                   counter: SearchCounter) -> tuple[bool, int, int]:
    """Whether ≥ min_coherent of search_samples steered samples are coherent (early-stopping chunks)."""
    n, need = cfg.search_samples, cfg.min_coherent
    chunks = early_stop_chunks(n, need) if cfg.early_stop else [n]
    ok = bad = drawn = 0
    for ci, m in enumerate(chunks):
        texts = generate(pair, [prompt], layer=layer, direction=direction, alpha=alpha, eta=eta, n=m,
                         temperature=cfg.search_temperature, max_new_tokens=cfg.max_new_tokens, seed=seed + ci)[0]
        counter.generations += m
        counter.grader_calls += m
        drawn += m
        verdicts = grader.grade(texts)
        ok += sum(verdicts)
        bad += m - sum(verdicts)
        if ok >= need or bad > n - need:
            break
    return ok >= need, ok, drawn


def binary_search(pair: ModelPair, grader: CoherenceGrader, prompt: str, *, lo: float, hi: float, iters: int,
                  layer: int, direction: torch.Tensor, eta: float, cfg: SteeringConfig, seed: int,
                  counter: SearchCounter) -> tuple[float, list[SearchStep]]:
    """Largest coherent α in [lo, hi] to a precision of (hi-lo)/2^iters."""
    steps = []
    for it in range(iters):
        mid = (lo + hi) / 2
        good, ok, drawn = is_coherent_at(pair, grader, prompt, mid, layer=layer, direction=direction, eta=eta,
                                         cfg=cfg, seed=seed + 1000 * it, counter=counter)
        steps.append(SearchStep(prompt=prompt, alpha=mid, n_coherent=ok, n_samples=drawn, coherent=good))
        if good:
            lo = mid
        else:
            hi = mid
    return lo, steps


def find_threshold(pair: ModelPair, grader: CoherenceGrader, *, layer: int, position: int, direction: torch.Tensor,
                   eta: float, cfg: SteeringConfig) -> SteeringThreshold:
    """The paper's three-prompt coherence-threshold search for one position."""
    counter = SearchCounter()
    prompts = cfg.threshold_prompts
    a1, steps = binary_search(pair, grader, prompts[0], lo=0.0, hi=cfg.alpha_max, iters=cfg.search_iters,
                              layer=layer, direction=direction, eta=eta, cfg=cfg, seed=cfg.seed, counter=counter)
    alphas = [a1]
    for pi, p in enumerate(prompts[1:], 1):
        if cfg.refine_iters == 0:
            break
        a, more = binary_search(pair, grader, p, lo=0.0, hi=2 * a1, iters=cfg.refine_iters, layer=layer,
                                direction=direction, eta=eta, cfg=cfg, seed=cfg.seed + 7919 * pi, counter=counter)
        alphas.append(a)
        steps += more
    return SteeringThreshold(position=position, alpha=sum(alphas) / len(alphas), per_prompt=alphas, steps=steps,
                             generations_used=counter.generations, grader_calls=counter.grader_calls)


def final_generations(pair: ModelPair, *, layer: int, position: int | None, direction: torch.Tensor | None,
                      alpha: float, eta: float, cfg: SteeringConfig) -> list[Generation]:
    """``final_samples`` generations per steering prompt (T=1.1), steered at α or unsteered."""
    outs = generate(pair, cfg.prompts, layer=layer, direction=direction, alpha=alpha, eta=eta, n=cfg.final_samples,
                    temperature=cfg.final_temperature, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 17)
    return [Generation(prompt=p, position=position, alpha=alpha if direction is not None else 0.0, sample=s, text=t)
            for p, texts in zip(cfg.prompts, outs) for s, t in enumerate(texts)]
