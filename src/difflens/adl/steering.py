"""Steering with δ̄_j (paper §3, App. C.3).

A hook adds ``α · η_ft · δ̂_j`` to the finetuned model's layer-ℓ output at every non-pad position
during batched generation (left padding; the sampling itself: :mod:`difflens.adl.steered`, whose
functions this module re-exports). The strength α is the largest coherent one: a tested α
is coherent if ≥ 8 of 10 samples at T=1.2 pass the coherence grader. Two search schedules reach
the paper's precision (``alpha_max / 2^search_iters`` for the first prompt, ``2α₁ / 2^refine_iters``
for the other two; the threshold is the mean of the three prompts' values):

- ``search="paper"`` — the paper's sequential binary search: 10 iterations on [0, 100] for the
  first prompt, then 5 on [0, 2α₁] for each of the two others; one α (10 samples) per generation
  call, 20 sequential rounds. ``early_stop`` draws 3 samples first and the other 7 only if the 3
  are not all incoherent (the same verdict; fewer generations, but more, smaller batches).
- ``search="batched"`` (default) — every round tests a grid of up to ``grid`` evenly spaced α's
  inside each prompt's current bracket, all samples of all α's of all active prompts in ONE
  generation call (:func:`generate_vectors`, a per-row steering vector), judged together; the
  bracket shrinks by the grid size + 1 per round. The two refinement prompts start as soon as the
  first prompt has a coherent α (their range [0, 2α₁] is capped by twice the first prompt's upper
  bound meanwhile), so all three prompts share rounds. ``grid=10``: 3 rounds for the first prompt
  (11·11·9 ≥ 2^10), 3-4 in all instead of 20, for ~2.5x the generations; ``grid=1``: the three
  prompts bisected side by side, 10-13 rounds for ~1.1x the generations. Which is faster depends
  on what a round costs against a generation (:func:`default_grid`, the default by device).

A round's samples are judged lazily (:func:`judge`): in waves of one grader call, each tested α's
in sample order only until its verdict is certain (8 passes, or the 3rd fail when 8 of 10 must
pass). The verdicts are those of all the samples, so with the same draws α is the same; a
:class:`SearchStep` records how many were judged (``n_graded``). ``grade_all`` judges every sample
(one grader call a round; the full pass counts).

Several positions search in shared rounds (:func:`find_thresholds`, what the steer stage runs):
each round tests what every position's batched schedule asks next, all rows in one ``generate``
call (a steering vector per row) and the same grader calls, so no round waits on one position. Each
position keeps its schedule and its rounds' seeds; only which rows share a call changes, so its
samples are other draws of the same distributions (one position alone: exactly
:func:`find_threshold`).

Coherent means ≥ ``min_coherent`` of ``search_samples`` by default relative to how often the
unsteered model's own samples pass the grader (:func:`required_coherent`): the paper's 8/10 when
they all pass, fewer for a small model whose unsteered text at T=1.2 is often incoherent itself.

The bracket is narrowed by a step fit to the round's verdicts (:func:`narrow`): for a monotone
pattern (coherent …, incoherent …) the new bracket is [largest coherent α, smallest incoherent α];
a non-monotone pattern (sampling noise near the threshold) takes the split with the fewest
disagreeing verdicts, the lowest one on ties. At T=1.2 the 10-sample verdict is itself random over
a band of α's (several units wide for a real organism), so two searches with different sample
draws — the two schedules, or one schedule with two seeds — agree to within that band, not to
the 0.1 resolution; with a deterministic grader both land within the resolution of the true
threshold (tests/adl/test_threshold_search.py).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import torch
from pydantic import BaseModel, Field, model_validator

from ..graders.coherence import CoherenceGrader
from ..models.pair import ModelPair
from ..models.tokens import chat_prompt_ids
from ..rundir.artifacts import Generation, SearchStep, SteeringThreshold
from .steered import (GenerationRequest, encode_prompts_left, generate, generate_many, generate_rows,  # noqa: F401
                      generate_steered, generate_vectors, rows_per_call, stack_rows, steering_hook, steering_vectors)

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
    # "unsteered": a tested α passes with ≥ min_coherent/search_samples of the UNSTEERED pass rate
    # (required_coherent); "absolute": the paper's fixed ≥ min_coherent of search_samples
    coherence_reference: Literal["unsteered", "absolute"] = "unsteered"
    search_temperature: float = 1.2
    final_samples: int = Field(5, ge=1)
    final_temperature: float = 1.1
    max_new_tokens: int = Field(128, ge=1)
    prompts: list[str] = Field(default_factory=lambda: list(STEERING_PROMPTS))
    threshold_prompts: list[str] = Field(default_factory=lambda: list(THRESHOLD_PROMPTS))
    search: Literal["batched", "paper"] = "batched"
    grid: int | None = Field(None, ge=1)  # batched: most α's per prompt and round; None: by device (default_grid)
    # batched: grade every sample of every tested α; by default a tested α's samples are graded only
    # until its verdict is certain (the same verdicts)
    grade_all: bool = False
    early_stop: bool = False  # paper schedule only: 3 samples first, the other 7 only if needed
    random_control: bool = True  # also steer along a random direction at the same α·η (final samples)
    seed: int = 0
    # set by the steer stage, not by users: the bar of each threshold prompt, from that prompt's own
    # unsteered pass rate (required_coherent); None: min_coherent for every prompt
    min_coherent_per_prompt: list[int] | None = None

    def identity(self) -> dict[str, Any]:
        """What the steer stage's fingerprint keys on: every setting that changes a result. Not
        ``positions`` (each position is resumed on its own), not ``grade_all`` (it changes which
        samples are judged, not a verdict: results from before it existed stay valid)."""
        return self.model_dump(exclude={"positions", "grade_all"})

    def need(self, prompt_index: int) -> int:
        """Coherent samples a tested α needs for threshold prompt ``prompt_index``."""
        per = self.min_coherent_per_prompt
        return per[prompt_index] if per is not None and prompt_index < len(per) else self.min_coherent

    @model_validator(mode="before")
    @classmethod
    def _legacy_early_stop(cls, data: Any) -> Any:
        """Configs written before ``search`` existed: ``early_stop: true`` was the fast schedule
        (now ``batched``), ``early_stop: false`` the paper's fixed 10 samples (``paper``)."""
        if isinstance(data, dict) and "search" not in data and data.get("early_stop") is not None:
            data = {**data, "search": "batched" if data["early_stop"] else "paper"}
        return data


@dataclass
class SearchCounter:
    generations: int = 0
    grader_calls: int = 0  # texts judged (one LLM request each for the LLM grader)
    rounds: int = 0  # sequential generate + grade rounds


# ============================================================================================
# Progress lines for log files
# ============================================================================================


class _Log:
    """``[difflens] ...`` lines on stderr (the trainer's style) when progress is on: by default
    only when stderr is not a terminal, i.e. when a rich progress bar would be invisible."""

    def __init__(self, progress: bool | None, what: str):
        self.on = (not sys.stderr.isatty()) if progress is None else progress
        self.what = what
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        if self.on:
            print(f"[difflens] {self.what}: {msg} ({time.perf_counter() - self.t0:.0f} s)", file=sys.stderr,
                  flush=True)


# ============================================================================================
# The paper's sequential schedule
# ============================================================================================


def early_stop_chunks(n: int, need: int) -> list[int]:
    """Sample chunk sizes after each of which the verdict may already be certain.

    With n=10, need=8: [3, 7] — if the first 3 are all incoherent the verdict "incoherent" is
    certain (at most 2 may fail), otherwise the remaining 7 are drawn in one batch.
    """
    first = min(n, n - need + 1)
    return [first] + ([n - first] if n > first else [])


def is_coherent_at(pair: ModelPair, grader: CoherenceGrader, prompt: str, alpha: float, *, layer: int,
                   direction: torch.Tensor, eta: float, cfg: SteeringConfig, seed: int,
                   counter: SearchCounter, need: int | None = None) -> tuple[bool, int, int]:
    """Whether ≥ ``need`` (default min_coherent) of search_samples steered samples are coherent
    (early-stopping chunks)."""
    n, need = cfg.search_samples, (cfg.min_coherent if need is None else need)
    chunks = early_stop_chunks(n, need) if cfg.early_stop else [n]
    ok = bad = drawn = 0
    for ci, m in enumerate(chunks):
        texts = generate(pair, [prompt], layer=layer, direction=direction, alpha=alpha, eta=eta, n=m,
                         temperature=cfg.search_temperature, max_new_tokens=cfg.max_new_tokens, seed=seed + ci)[0]
        counter.generations += m
        counter.grader_calls += m
        counter.rounds += 1
        drawn += m
        verdicts = grader.grade(texts)
        ok += sum(verdicts)
        bad += m - sum(verdicts)
        if ok >= need or bad > n - need:
            break
    return ok >= need, ok, drawn


def binary_search(pair: ModelPair, grader: CoherenceGrader, prompt: str, *, lo: float, hi: float, iters: int,
                  layer: int, direction: torch.Tensor, eta: float, cfg: SteeringConfig, seed: int,
                  counter: SearchCounter, log: Callable[[str], None] | None = None,
                  need: int | None = None) -> tuple[float, list[SearchStep]]:
    """Largest coherent α in [lo, hi] to a precision of (hi-lo)/2^iters."""
    steps = []
    for it in range(iters):
        mid = (lo + hi) / 2
        good, ok, drawn = is_coherent_at(pair, grader, prompt, mid, layer=layer, direction=direction, eta=eta,
                                         cfg=cfg, seed=seed + 1000 * it, counter=counter, need=need)
        steps.append(SearchStep(prompt=prompt, alpha=mid, n_coherent=ok, n_samples=drawn, coherent=good))
        if good:
            lo = mid
        else:
            hi = mid
        if log:
            log(f"round {counter.rounds}, {prompt[:24]!r} α={mid:.3g} {ok}/{drawn} → [{lo:.4g}, {hi:.4g}], "
                f"{counter.generations} generations")
    return lo, steps


def paper_threshold(pair: ModelPair, grader: CoherenceGrader, *, layer: int, direction: torch.Tensor, eta: float,
                    cfg: SteeringConfig, counter: SearchCounter,
                    log: Callable[[str], None] | None = None) -> tuple[list[float], list[SearchStep]]:
    """The paper's sequential schedule: per-prompt thresholds and every tested α."""
    prompts = cfg.threshold_prompts
    a1, steps = binary_search(pair, grader, prompts[0], lo=0.0, hi=cfg.alpha_max, iters=cfg.search_iters,
                              layer=layer, direction=direction, eta=eta, cfg=cfg, seed=cfg.seed, counter=counter,
                              log=log, need=cfg.need(0))
    alphas = [a1]
    for pi, p in enumerate(prompts[1:], 1):
        if cfg.refine_iters == 0:
            break
        # [0, 2α₁] as in the paper; when the first prompt found no coherent α at all, an empty range
        # would zero every prompt: search the full range instead
        hi, iters = (2 * a1, cfg.refine_iters) if a1 > 0 else (cfg.alpha_max, cfg.search_iters)
        a, more = binary_search(pair, grader, p, lo=0.0, hi=hi, iters=iters, layer=layer,
                                direction=direction, eta=eta, cfg=cfg, seed=cfg.seed + 7919 * pi, counter=counter,
                                log=log, need=cfg.need(pi))
        alphas.append(a)
        steps += more
    return alphas, steps


# ============================================================================================
# The batched schedule
# ============================================================================================

_EPS = 1e-9


def grid_size(width: float, tol: float, grid: int) -> int:
    """How many α's to test inside a bracket of ``width`` this round (0: already within ``tol``).

    The fewest rounds that reach ``tol`` with at most ``grid`` α's per round, with the α's spread
    evenly over those rounds (width 100, tol 100/2^10, grid 10: 10, 9, 9 — not 10, 10, 10).
    """
    if width <= tol * (1 + _EPS):
        return 0
    if tol <= 0:
        return grid
    factor = width / tol  # > 1
    rounds = max(1, math.ceil(math.log(factor) / math.log(grid + 1) - _EPS))
    return max(1, min(grid, math.ceil(factor ** (1 / rounds) - _EPS) - 1))


def grid_points(lo: float, hi: float, g: int) -> list[float]:
    """``g`` evenly spaced α's strictly inside (lo, hi)."""
    return [lo + (hi - lo) * k / (g + 1) for k in range(1, g + 1)]


def narrow(lo: float, hi: float, alphas: Sequence[float], verdicts: Sequence[bool]) -> tuple[float, float]:
    """The new bracket from one round's verdicts at ``alphas`` (ascending, inside (lo, hi)).

    ``lo`` counts as coherent and ``hi`` as incoherent. The split between neighbouring points
    with the fewest verdicts on the wrong side wins (coherent above it or incoherent below it),
    the lowest such split on ties. A monotone pattern gives [largest coherent α, smallest
    incoherent α]; all coherent gives [last α, hi]; all incoherent [lo, first α]; an isolated
    incoherent verdict among coherent ones (or vice versa) is outvoted by its neighbours, a tie
    (e.g. ✓ ✗ ✓ ✗) keeps the lower, conservative bracket below the first incoherent α.
    """
    if len(alphas) != len(verdicts):
        raise ValueError(f"{len(alphas)} α's but {len(verdicts)} verdicts")
    if list(alphas) != sorted(alphas):
        raise ValueError("α's must be ascending")
    pts = [lo, *alphas, hi]
    v = [bool(x) for x in verdicts]
    # split b: alphas[:b] on the coherent side, alphas[b:] on the incoherent side
    wrong = sum(v)  # b = 0: every coherent verdict is on the wrong side
    best, best_b = wrong, 0
    for b in range(1, len(v) + 1):
        wrong += -1 if v[b - 1] else 1
        if wrong < best:
            best, best_b = wrong, b
    return pts[best_b], pts[best_b + 1]


def default_grid(pair: ModelPair | None) -> int:
    """α's per prompt and round when ``SteeringConfig.grid`` is None: 1 on a CPU, 10 on an accelerator.

    Measured for a SmolLM2-135M pair on 2 CPU cores, the paper's 128 new tokens at T = 1.2: a round
    (generation + the offline grader) of 50 rows took 29.5 s, of 90 rows 45 s, of 110 rows 57 s —
    about 0.5 s a row, nearly the same at any batch size from 50 rows on. So compute, not the number
    of rounds, sets the wall time, and every α beyond bisection's one per round costs more than the
    round it saves (grid 1: the three prompts bisected side by side, 14-15 rounds for five
    positions in shared rounds). On an H100 a call costs about 1.1 s for 10 to 1000 rows: there
    rounds are the cost and a wide grid pays (3-4 rounds), the more so with a grader that judges a
    batch at once.
    """
    dev = getattr(pair, "device", None)
    return 1 if dev is None or torch.device(dev).type == "cpu" else 10


@dataclass
class _Test:
    """The samples of one tested α, judged lazily (:func:`judge`): in sample order, only until the
    verdict is certain (``need`` passes, or too many fails for ``need`` to be reached)."""

    bracket: _Bracket
    alpha: float
    n: int
    need: int
    verdicts: list[bool] = field(default_factory=list)

    @property
    def passes(self) -> int:
        return sum(self.verdicts)

    def decided(self) -> bool | None:
        """True / False once certain (coherent / incoherent), None before."""
        if self.passes >= self.need:
            return True
        if len(self.verdicts) - self.passes > self.n - self.need:
            return False
        return None

    def wanted(self, grade_all: bool) -> int:
        """Samples to judge next: all left with ``grade_all``; else the fewest that could settle it
        (none once settled; while open both distances are ≥ 1 and sum to the samples left + 1)."""
        if grade_all:
            return self.n - len(self.verdicts)
        if self.decided() is not None:
            return 0
        return min(self.need - self.passes, self.n - self.need + 1 - (len(self.verdicts) - self.passes))

    def step(self) -> SearchStep:
        """The tested α as recorded (after :func:`judge`: settled)."""
        graded = len(self.verdicts)
        return SearchStep(prompt=self.bracket.prompt, alpha=self.alpha, n_coherent=self.passes, n_samples=self.n,
                          coherent=bool(self.decided()), n_graded=None if graded == self.n else graded)


def judge(grader: CoherenceGrader, tests: Sequence[_Test], texts: Sequence[str], *, grade_all: bool = False) -> int:
    """Judge ``texts`` (``tests[i]``'s ``n`` samples in a row, test after test) in waves of one grader
    call each, each wave the samples every test still wants (:meth:`_Test.wanted`); returns how many
    texts were judged. A test's verdict is the same as from all its samples."""
    if len(texts) != sum(t.n for t in tests):
        raise ValueError(f"{len(texts)} texts for {sum(t.n for t in tests)} samples")
    starts, i = [], 0
    for t in tests:
        starts.append(i)
        i += t.n
    judged = 0
    while True:
        wave = [(t, starts[k] + len(t.verdicts) + m) for k, t in enumerate(tests) for m in range(t.wanted(grade_all))]
        if not wave:
            return judged
        for (t, _), v in zip(wave, _graded(grader, [texts[j] for _, j in wave])):
            t.verdicts.append(bool(v))
        judged += len(wave)


@dataclass
class _Bracket:
    """One threshold prompt's search state."""

    prompt: str
    lo: float
    hi: float
    steps: list[SearchStep] = field(default_factory=list)
    started: bool = True


class _PositionSearch:
    """The batched schedule's state for one direction: the first prompt's bracket and the refinement
    prompts' brackets, what the next round tests (:meth:`plan`) and how its verdicts narrow them
    (:meth:`update`)."""

    def __init__(self, pair: ModelPair | None, cfg: SteeringConfig):
        self.cfg = cfg
        self.n = cfg.search_samples
        self.set_bars(cfg)
        self.grid = cfg.grid or default_grid(pair)
        self.first = _Bracket(cfg.threshold_prompts[0], 0.0, cfg.alpha_max)
        self.tol1 = cfg.alpha_max / 2 ** cfg.search_iters
        self.refine = ([_Bracket(p, 0.0, 0.0, started=False) for p in cfg.threshold_prompts[1:]]
                       if cfg.refine_iters > 0 else [])
        self.shrink = 2.0 ** -cfg.refine_iters

    def set_bars(self, cfg: SteeringConfig) -> None:
        """Grade from now on with ``cfg``'s coherence bars (``min_coherent``, per prompt); the rest
        of the schedule stays as it was built."""
        self.need = {p: cfg.need(i) for i, p in enumerate(cfg.threshold_prompts)}

    def plan(self) -> list[tuple[_Bracket, list[float]]]:
        """The next round's α's per bracket (empty: the search is over)."""
        cfg, first = self.cfg, self.first
        out = []
        g = grid_size(first.hi - first.lo, self.tol1, self.grid)
        if g:
            out.append((first, grid_points(first.lo, first.hi, g)))
        done1 = g == 0
        # the first prompt found no coherent α at all: an empty [0, 2α₁] would zero every prompt, so
        # the others search the full range to the first prompt's precision instead
        free = done1 and first.lo <= 0
        for b in self.refine:
            # the paper searches [0, 2α₁] to 2α₁/2^refine_iters: while α₁ ∈ [lo₁, hi₁] is open,
            # cap the range at 2·hi₁ and aim for the finer 2·lo₁/2^refine_iters
            cap = cfg.alpha_max if free else 2 * (first.lo if done1 else first.hi)
            if not b.started:
                if not (done1 or first.lo > 0):
                    continue
                b.started, b.hi = True, cap
            b.hi = min(b.hi, cap)
            b.lo = min(b.lo, b.hi)
            gb = grid_size(b.hi - b.lo, self.tol1 if free else 2 * first.lo * self.shrink, self.grid)
            if gb:
                out.append((b, grid_points(b.lo, b.hi, gb)))
        return out

    def rows(self, todo: list[tuple[_Bracket, list[float]]]) -> list[tuple[str, float]]:
        """(prompt, α) of every sample of a round, ``search_samples`` per tested α."""
        return [(b.prompt, a) for b, points in todo for a in points for _ in range(self.n)]

    def tests(self, todo: list[tuple[_Bracket, list[float]]]) -> list[_Test]:
        """One :class:`_Test` per tested α (in :meth:`rows` order), each held to its prompt's bar."""
        return [_Test(b, a, self.n, self.need[b.prompt]) for b, points in todo for a in points]

    def update(self, todo: list[tuple[_Bracket, list[float]]], tests: Sequence[_Test]) -> None:
        """Narrow each bracket by its α's verdicts (``tests``: :meth:`tests` of ``todo``, judged)."""
        i = 0
        for b, points in todo:
            mine, i = list(tests[i:i + len(points)]), i + len(points)
            b.steps += [t.step() for t in mine]
            b.lo, b.hi = narrow(b.lo, b.hi, points, [bool(t.decided()) for t in mine])

    def state(self) -> str:
        return "; ".join(f"{b.prompt[:24]!r} [{b.lo:.4g}, {b.hi:.4g}]" for b in [self.first, *self.refine]
                         if b.started)

    def result(self) -> tuple[list[float], list[SearchStep]]:
        a1 = self.first.lo
        alphas = [a1]
        for b in self.refine:
            # the paper never tests above 2α₁: its result is at most 2α₁ − 2α₁/2^refine_iters
            alphas.append((min(b.lo, 2 * a1 * (1 - self.shrink)) if a1 > 0 else b.lo) if b.started else 0.0)
        return alphas, [s for b in [self.first, *self.refine] for s in b.steps]


def _graded(grader: CoherenceGrader, texts: Sequence[str]) -> list[Any]:
    verdicts = grader.grade(texts)
    if len(verdicts) != len(texts):
        raise ValueError(f"the coherence grader returned {len(verdicts)} verdicts for {len(texts)} texts")
    return list(verdicts)


def batched_threshold(pair: ModelPair, grader: CoherenceGrader, *, layer: int, direction: torch.Tensor, eta: float,
                      cfg: SteeringConfig, counter: SearchCounter,
                      log: Callable[[str], None] | None = None) -> tuple[list[float], list[SearchStep]]:
    """The batched schedule (see the module docstring): per-prompt thresholds and every tested α."""
    search = _PositionSearch(pair, cfg)
    for _ in range(10_000):  # every round shrinks some bracket at least twofold: ends long before
        todo = search.plan()
        if not todo:
            break
        rows = search.rows(todo)
        texts = generate_rows(pair, [p for p, _ in rows], [a for _, a in rows], layer=layer, direction=direction,
                              eta=eta, temperature=cfg.search_temperature, max_new_tokens=cfg.max_new_tokens,
                              seed=cfg.seed + 1000 * counter.rounds)
        tests = search.tests(todo)
        judged = judge(grader, tests, texts, grade_all=cfg.grade_all)
        counter.generations += len(texts)
        counter.grader_calls += judged
        counter.rounds += 1
        search.update(todo, tests)
        if log:
            log(f"round {counter.rounds}: {sum(len(p) for _, p in todo)} α's, {len(texts)} generations "
                f"({judged} graded) → {search.state()}")
    return search.result()


def required_coherent(cfg: SteeringConfig, unsteered_pass_rate: float | None) -> int:
    """How many of ``search_samples`` steered samples must pass for a tested α to count as coherent.

    The paper requires 8 of 10. That presumes a grader that passes (nearly) every unsteered sample,
    as a GPT-class judge does for 1B-32B chat models. A 135M model at T=1.2 writes incoherent text
    on its own a third of the time, so 8/10 fails already at α=0 and the search collapses to α≈0.
    With ``coherence_reference="unsteered"`` the bar is relative: a steered α must keep
    ``min_coherent/search_samples`` (80%) of the unsteered pass rate, i.e.
    ``ceil(min_coherent · pass_rate)`` samples. At a pass rate of 1 this is the paper's rule exactly.
    """
    if cfg.coherence_reference == "absolute" or unsteered_pass_rate is None:
        return cfg.min_coherent
    rate = min(max(float(unsteered_pass_rate), 0.0), 1.0)
    return max(1, min(cfg.min_coherent, math.ceil(cfg.min_coherent * rate - 1e-9)))


def _bars(cfg: SteeringConfig) -> str:
    return (f"≥{', '.join(str(cfg.need(i)) for i in range(len(cfg.threshold_prompts)))} of {cfg.search_samples}"
            if cfg.min_coherent_per_prompt else f"≥{cfg.min_coherent}/{cfg.search_samples}")


def _threshold(position: int, alphas: list[float], steps: list[SearchStep], counter: SearchCounter,
               cfg: SteeringConfig, log: Callable[[str], None]) -> SteeringThreshold:
    alpha = sum(alphas) / len(alphas)
    log(f"α = {alpha:.4g} (per prompt {', '.join(f'{a:.4g}' for a in alphas)}), {counter.generations} generations "
        f"in {counter.rounds} rounds")
    return SteeringThreshold(position=position, alpha=alpha, per_prompt=alphas, steps=steps,
                             generations_used=counter.generations, grader_calls=counter.grader_calls,
                             min_coherent=cfg.min_coherent)


def find_threshold(pair: ModelPair, grader: CoherenceGrader, *, layer: int, position: int, direction: torch.Tensor,
                   eta: float, cfg: SteeringConfig, progress: bool | None = None) -> SteeringThreshold:
    """The three-prompt coherence-threshold search for one position (``cfg.search`` picks the
    schedule). ``progress``: ``[difflens]`` lines on stderr per round and at the end (None: only
    when stderr is not a terminal)."""
    counter = SearchCounter()
    log = _Log(progress, f"steering layer {layer} position {position} ({cfg.search}, {_bars(cfg)} coherent)")
    search = batched_threshold if cfg.search == "batched" else paper_threshold
    alphas, steps = search(pair, grader, layer=layer, direction=direction, eta=eta, cfg=cfg, counter=counter,
                           log=log if log.on else None)
    return _threshold(position, alphas, steps, counter, cfg, log)


@dataclass
class Ride:
    """Rows of other work that ride along a search round's generation call (the final generations of
    positions whose search has ended; the unsteered samples that calibrate the grader), and
    ``done(texts)``, called with their texts (in row order) before the round's search rows are
    graded. ``temperature``: one for all rows, or one per row."""

    prompts: list[str]
    vectors: list[torch.Tensor | None]
    temperature: float | list[float]
    done: Callable[[list[str]], Any]

    def temperatures(self) -> list[float]:
        t = self.temperature
        out = [float(t)] * len(self.prompts) if isinstance(t, (int, float)) else [float(x) for x in t]
        if len(out) != len(self.prompts):
            raise ValueError(f"a ride of {len(self.prompts)} rows with {len(out)} temperatures")
        return out


def find_thresholds(pair: ModelPair, grader: CoherenceGrader, *, layer: int, directions: dict[int, torch.Tensor],
                    eta: float, cfg: SteeringConfig, progress: bool | None = None,
                    on_done: Callable[[SteeringThreshold], None] | None = None,
                    max_rows: int | None = None,
                    riders: Callable[[int], Ride | None] | None = None,
                    prelude: Ride | None = None) -> dict[int, SteeringThreshold]:
    """The threshold searches of several positions, in shared rounds.

    With ``search="batched"`` every round tests what each position's schedule asks next (the same
    brackets, grids and ``search_samples`` as :func:`find_threshold`), the rows of all positions in
    one generation call (a steering vector per row; split only where the KV cache's memory asks,
    :func:`rows_per_call`, call ``c`` of round ``r`` seeded ``seed + 1000·r + c``), judged in shared
    grader calls (:func:`judge`), so no position's round waits on another's. Round ``r`` of each
    position is seeded as in :func:`find_threshold` (``seed + 1000·r``); only the rows a call holds
    differ, so its samples are other draws of the same distributions: one position alone gives
    exactly :func:`find_threshold`'s α, several give α's of the same sampling distribution.
    ``search="paper"`` runs the positions one after another. ``on_done(threshold)`` as each
    position finishes (the caller saves it).

    ``riders(room)`` (batched search only): asked before each round's call with the rows left in it
    (:func:`rows_per_call` for the longest search or steering prompt, or ``max_rows``); the
    :class:`Ride` it returns joins the call, each row at the ride's temperature. A round of a few
    dozen rows pays for reading every weight at each of its ~128 steps (a 50-row SmolLM2 step takes
    about 3x its FLOPs on 2 cores, a 256-row step 2x): rows riding along share those reads.

    ``prelude`` (batched search only): rows that join the first round's call, before any rider.
    Its ``done(texts)`` runs after the riders' (which only save texts) and before that round is
    graded, and may return a configuration whose coherence bars grade every round from then on: the
    steer stage's unsteered samples, which calibrate the grader and set the bars, so they need no
    call of their own. (Were there no round to join, the prelude runs alone.)"""
    out: dict[int, SteeringThreshold] = {}
    if prelude is not None and cfg.search != "batched":
        raise ValueError("a prelude rides the batched search's first round; the paper schedule has none")
    if cfg.search != "batched":
        for j, d in directions.items():
            out[j] = find_threshold(pair, grader, layer=layer, position=j, direction=d, eta=eta, cfg=cfg,
                                    progress=progress)
            if on_done is not None:
                on_done(out[j])
        return out
    searches = {j: _PositionSearch(pair, cfg) for j in directions}
    counters = {j: SearchCounter() for j in directions}

    def label(j: int) -> str:
        return f"steering layer {layer} position {j} ({cfg.search}, {_bars(cfg)} coherent)"

    logs = {j: _Log(progress, label(j)) for j in directions}

    def settle(ride: Ride, texts: list[str]) -> None:
        """The prelude's texts to its ``done``; the bars it returns grade from now on."""
        nonlocal cfg
        new = ride.done(texts)
        if new is not None:
            cfg = new
            for j, s in searches.items():
                s.set_bars(cfg)
                logs[j].what = label(j)
    log = _Log(progress, f"steering layer {layer} positions {', '.join(str(j) for j in directions)}")
    room = max_rows or 0
    if riders is not None and not room:  # the rows one call holds: the KV cache of the longest prompt a row may have
        longest = max(len(chat_prompt_ids(pair.tokenizer, pair.ft_arch, p))
                      for p in {*cfg.threshold_prompts, *cfg.prompts})
        room = rows_per_call(pair, longest + cfg.max_new_tokens)
    for r in range(10_000):
        plans = {j: s.plan() for j, s in searches.items() if j not in out}
        for j in [j for j, todo in plans.items() if not todo]:  # finished: no α left to test
            out[j] = _threshold(j, *searches[j].result(), counters[j], cfg, logs[j])
            if on_done is not None:
                on_done(out[j])
        plans = {j: todo for j, todo in plans.items() if todo}
        if not plans:
            break
        rows = [(j, p, a) for j, todo in plans.items() for p, a in searches[j].rows(todo)]
        prompts = [p for _, p, _ in rows]
        vectors: list[torch.Tensor | None] = [steering_vectors(directions[j], [a], eta)[0] for j, _, a in rows]
        temps = [cfg.search_temperature] * len(rows)
        first, prelude = prelude, None
        if first is not None:  # its temperatures checked before riders hand over their jobs
            prompts, vectors = prompts + list(first.prompts), vectors + list(first.vectors)
            temps += first.temperatures()
        taken = len(prompts)
        ride = riders(room - taken) if riders is not None and room > taken else None
        if ride is not None:
            prompts, vectors = prompts + list(ride.prompts), vectors + list(ride.vectors)
            temps += ride.temperatures()
        riding = len(prompts) - len(rows)
        texts = generate_steered(pair, prompts, vectors, layer=layer,
                                 temperature=temps if riding else cfg.search_temperature,
                                 max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 1000 * r, max_rows=max_rows)
        if ride is not None:  # saved first: calibrating on the prelude's texts may fail
            ride.done(texts[taken:])
        if first is not None:
            settle(first, texts[len(rows):taken])
        texts = texts[:len(rows)]
        tests = {j: searches[j].tests(todo) for j, todo in plans.items()}  # after settle: its bars
        graded = judge(grader, [t for ts in tests.values() for t in ts], texts, grade_all=cfg.grade_all)
        for j, todo in plans.items():
            searches[j].update(todo, tests[j])
            counters[j].generations += sum(t.n for t in tests[j])
            counters[j].grader_calls += sum(len(t.verdicts) for t in tests[j])
            counters[j].rounds += 1
        log(f"round {r + 1}: {len(plans)} position(s) searching, {len(texts)} generations ({graded} graded)"
            + (f" (+ {riding} unsteered / final ones riding its call)" if riding else "") + " → "
            + " | ".join(f"{j}: {searches[j].state()}" for j in plans))
    if prelude is not None:  # no round to join
        prelude.done(generate_steered(pair, prelude.prompts, prelude.vectors, layer=layer,
                                      temperature=prelude.temperatures(), max_new_tokens=cfg.max_new_tokens,
                                      seed=cfg.seed, max_rows=max_rows))
    return out


def final_generations(pair: ModelPair, *, layer: int, position: int | None, direction: torch.Tensor | None,
                      alpha: float, eta: float, cfg: SteeringConfig) -> list[Generation]:
    """``final_samples`` generations per steering prompt (T=1.1), steered at α or unsteered."""
    outs = generate(pair, cfg.prompts, layer=layer, direction=direction, alpha=alpha, eta=eta, n=cfg.final_samples,
                    temperature=cfg.final_temperature, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 17)
    return [Generation(prompt=p, position=position, alpha=alpha if direction is not None else 0.0, sample=s, text=t)
            for p, texts in zip(cfg.prompts, outs) for s, t in enumerate(texts)]
