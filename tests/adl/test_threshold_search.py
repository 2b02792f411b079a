"""The batched steering-strength search: bracket narrowing, grid sizes, rounds and tolerance with
fake generations and graders, the paper schedule kept, legacy configs, progress lines."""
from __future__ import annotations

import pytest
import torch

import difflens.adl.steering as steering
from difflens.adl.steering import SteeringConfig, find_threshold, grid_points, grid_size, narrow


# --------------------------------------------------------------------------------------------
# Bracket narrowing on hand-made pass/fail patterns
# --------------------------------------------------------------------------------------------

XS = [10.0, 20.0, 30.0, 40.0, 50.0]


@pytest.mark.parametrize("verdicts, bracket", [
    ([True, True, False, False, False], (20.0, 30.0)),  # monotone
    ([True, True, True, True, True], (50.0, 60.0)),  # all coherent: above the last α
    ([False, False, False, False, False], (0.0, 10.0)),  # all incoherent: below the first α
    ([True, False, True, True, False], (40.0, 50.0)),  # one spurious failure is outvoted
    ([True, True, False, True, False], (20.0, 30.0)),  # tie (one wrong either way): the lower split
    ([True, False, True, False, False], (10.0, 20.0)),  # ✓ ✗ ✓ ✗: largest ✓ below the first ✗
    ([False, True, True, False, False], (30.0, 40.0)),  # isolated failure at the bottom is outvoted
    ([False, True, False, False, False], (0.0, 10.0)),  # isolated pass among failures is outvoted
])
def test_narrow_patterns(verdicts, bracket):
    assert narrow(0.0, 60.0, XS, verdicts) == bracket


def test_narrow_monotone_equals_largest_pass_below_smallest_fail():
    import itertools

    for n in range(1, 7):
        xs = [float(i + 1) for i in range(n)]
        for k in range(n + 1):
            v = [True] * k + [False] * (n - k)
            lo, hi = narrow(0.0, n + 1.0, xs, v)
            assert lo == (xs[k - 1] if k else 0.0) and hi == (xs[k] if k < n else n + 1.0)
        for v in itertools.product([True, False], repeat=n):  # always two neighbouring points
            lo, hi = narrow(0.0, n + 1.0, xs, list(v))
            assert hi - lo == 1.0


def test_narrow_rejects_bad_input():
    with pytest.raises(ValueError):
        narrow(0, 1, [0.5], [True, False])
    with pytest.raises(ValueError):
        narrow(0, 1, [0.6, 0.4], [True, False])


def test_grid_sizes_reach_the_paper_resolution():
    tol = 100 / 2 ** 10
    width, sizes = 100.0, []
    while (g := grid_size(width, tol, 10)):
        sizes.append(g)
        width /= g + 1
    assert sizes == [10, 9, 9] and width <= tol
    width, rounds = 100.0, 0
    while (g := grid_size(width, tol, 1)):
        assert g == 1
        width /= 2
        rounds += 1
    assert rounds == 10 and width == pytest.approx(tol)  # grid 1 is bisection: exactly the paper's
    assert grid_size(0.05, 0.1, 10) == 0 and grid_size(0.0, 0.0, 10) == 0
    assert grid_size(0.3, 0.1, 10) == 2  # the last round uses only as many α's as it needs
    assert grid_points(0.0, 4.0, 3) == [1.0, 2.0, 3.0]


# --------------------------------------------------------------------------------------------
# Whole searches with fake generations and graders
# --------------------------------------------------------------------------------------------


class FakeWorld:
    """Generations that carry their α; records every batch."""

    def __init__(self):
        self.batches: list[list[tuple[str, float]]] = []

    def generate_rows(self, pair, prompts, alphas, **kw):
        assert len(prompts) == len(alphas)
        self.batches.append(list(zip(prompts, alphas)))
        return [f"{a!r}|{p}" for p, a in zip(prompts, alphas)]

    def generate(self, pair, prompts, *, alpha, n, **kw):
        return [self.generate_rows(pair, [p] * n, [alpha] * n) for p in prompts]


class ThresholdGrader:
    """Coherent iff α < threshold (per prompt, optional); counts grade() calls."""

    name = "fake"

    def __init__(self, threshold: float, per_prompt: dict[str, float] | None = None):
        self.threshold, self.per_prompt, self.calls = threshold, per_prompt or {}, 0

    def grade(self, texts):
        self.calls += 1
        out = []
        for t in texts:
            a, p = t.split("|", 1)
            out.append(float(a) < self.per_prompt.get(p, self.threshold))
        return out


@pytest.fixture
def world(monkeypatch):
    w = FakeWorld()
    monkeypatch.setattr(steering, "generate_rows", w.generate_rows)
    monkeypatch.setattr(steering, "generate", w.generate)
    return w


def search(cfg, grader):
    return find_threshold(None, grader, layer=0, position=3, direction=torch.ones(4), eta=1.0, cfg=cfg,
                          progress=False)


@pytest.mark.parametrize("grid", [1, 3, 10])
def test_batched_search_lands_within_the_paper_resolution(world, grid):
    g = ThresholdGrader(37.3)
    th = search(SteeringConfig(grid=grid), g)
    a1, a2, a3 = th.per_prompt
    assert 37.3 - 100 / 2 ** 10 <= a1 < 37.3
    for a in (a2, a3):  # [0, 2α₁] to 2α₁/32
        assert 37.3 - 2 * a1 / 32 <= a < 37.3
    assert th.alpha == pytest.approx((a1 + a2 + a3) / 3)
    rounds = len(world.batches)
    assert th.generations_used == sum(len(b) for b in world.batches)
    assert th.generations_used == 10 * len(th.steps)  # every tested α recorded, 10 samples each
    assert all(s.n_samples == 10 and s.coherent == (s.alpha < 37.3) for s in th.steps)
    # judged lazily: a coherent α after its 8th pass, an incoherent one after its 3rd fail (≥ 8 of 10 can no
    # longer pass)
    assert all(s.n_graded == (8 if s.coherent else 3) for s in th.steps)
    assert th.grader_calls == sum(s.n_graded for s in th.steps) < th.generations_used
    assert g.calls >= rounds  # a grader call per wave of a round
    assert rounds <= {1: 13, 3: 6, 10: 4}[grid]
    # every sample judged: the same α's, draws and verdicts, one grader call a round
    g_all = ThresholdGrader(37.3)
    full = search(SteeringConfig(grid=grid, grade_all=True), g_all)
    assert (full.alpha, full.per_prompt, full.generations_used) == (th.alpha, th.per_prompt, th.generations_used)
    assert [(s.alpha, s.coherent) for s in full.steps] == [(s.alpha, s.coherent) for s in th.steps]
    assert full.grader_calls == full.generations_used and all(s.n_graded is None for s in full.steps)
    assert g_all.calls == rounds
    if grid == 10:
        assert max(len(b) for b in world.batches) <= 3 * 10 * 10
        # the refinement prompts share rounds with the first prompt
        assert any(len({p for p, _ in b}) == 3 for b in world.batches)


def test_paper_schedule_is_kept_and_agrees(world):
    g = ThresholdGrader(37.3)
    paper = search(SteeringConfig(search="paper"), g)
    assert len(world.batches) == g.calls == 20 and paper.generations_used == 200
    assert [len(b) for b in world.batches] == [10] * 20
    ours = search(SteeringConfig(grid=10), ThresholdGrader(37.3))
    assert abs(ours.per_prompt[0] - paper.per_prompt[0]) <= 100 / 2 ** 10
    assert abs(ours.alpha - paper.alpha) <= 2 * paper.per_prompt[0] / 32
    early = search(SteeringConfig(search="paper", early_stop=True), ThresholdGrader(37.3))
    assert early.per_prompt == paper.per_prompt and early.generations_used < paper.generations_used


def test_batched_grid_one_tests_the_papers_alphas(world):
    """Without refinement prompts, grid 1 is the paper's bisection: same α's, same verdicts."""
    cfg = SteeringConfig(refine_iters=0)
    paper = search(cfg.model_copy(update={"search": "paper"}), ThresholdGrader(37.3))
    ours = search(cfg.model_copy(update={"grid": 1}), ThresholdGrader(37.3))
    assert [(s.alpha, s.coherent) for s in ours.steps] == [(s.alpha, s.coherent) for s in paper.steps]
    assert ours.per_prompt == paper.per_prompt


def test_refinement_prompts_differ_and_are_capped_at_twice_alpha_one(world):
    per = {"Give me some ideas for some fun weekend activities?": 12.0,
           "Why don't you choose a topic of conversation for us?": 500.0}
    th = search(SteeringConfig(grid=10), ThresholdGrader(30.0, per))
    a1, a2, a3 = th.per_prompt
    assert 30 - 100 / 1024 <= a1 < 30
    assert 12 - 2 * a1 / 32 <= a2 < 12
    assert a3 == pytest.approx(2 * a1 * (1 - 1 / 32))  # as in the paper: never above 2α₁
    # while α₁ is open (after round 1: [300/11, 400/11]) the refinements stay below twice its upper bound
    first = SteeringConfig().threshold_prompts[0]
    assert all(s.alpha < 2 * 400 / 11 for s in th.steps if s.prompt != first)


@pytest.mark.parametrize("search_kind", ["batched", "paper"])
def test_all_incoherent_and_all_coherent(world, search_kind):
    none = search(SteeringConfig(search=search_kind, grid=10), ThresholdGrader(0.0))
    assert none.per_prompt[0] == 0.0 and none.alpha == 0.0
    every = search(SteeringConfig(search=search_kind, grid=10), ThresholdGrader(1e9))
    assert 100 - 100 / 1024 <= every.per_prompt[0] < 100
    assert every.per_prompt[1] == pytest.approx(2 * every.per_prompt[0] * (1 - 1 / 32))


def test_batched_search_is_deterministic(world):
    import random

    class Noisy(ThresholdGrader):
        def grade(self, texts):
            rng = random.Random(hash(tuple(texts)) & 0xFFFF)
            return [float(t.split("|")[0]) < 37.3 + rng.uniform(-3, 3) for t in texts]

    a = search(SteeringConfig(grid=5), Noisy(0))
    b = search(SteeringConfig(grid=5), Noisy(0))
    assert a == b


def test_progress_lines_on_stderr(world, capsys):
    find_threshold(None, ThresholdGrader(37.3), layer=7, position=2, direction=torch.ones(4), eta=1.0,
                   cfg=SteeringConfig(grid=10), progress=True)
    err = capsys.readouterr().err.splitlines()
    assert err and all(line.startswith("[difflens] steering layer 7 position 2 (batched, ≥8/10 coherent): ")
                       for line in err)
    assert any("round 1:" in line for line in err) and "α = " in err[-1] and err[-1].endswith(" s)")
    find_threshold(None, ThresholdGrader(37.3), layer=7, position=2, direction=torch.ones(4), eta=1.0,
                   cfg=SteeringConfig(grid=10), progress=False)
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


def test_search_config_and_legacy_early_stop(tmp_path):
    assert SteeringConfig().search == "batched" and SteeringConfig().grid is None
    assert SteeringConfig(early_stop=True).search == "batched"  # the old fast default
    assert SteeringConfig(early_stop=False).search == "paper"  # the old "paper's fixed 10 samples"
    assert SteeringConfig(early_stop=True, search="paper").search == "paper"
    with pytest.raises(ValueError):
        SteeringConfig(search="fast")
    with pytest.raises(ValueError):
        SteeringConfig(grid=0)
    from conftest import write_run_config
    from difflens.run.config import load_config

    for early, kind in ((True, "batched"), (False, "paper")):
        cfg = load_config(write_run_config(tmp_path, out=str(tmp_path / "run"), finetuned="organism:cake_bake",
                                           steering={"early_stop": early, "search_iters": 10}))
        assert cfg.steering.search == kind and cfg.steering.early_stop is early


def test_default_grid_by_device():
    from types import SimpleNamespace

    assert steering.default_grid(SimpleNamespace(device=torch.device("cpu"))) == 1
    assert steering.default_grid(SimpleNamespace(device=torch.device("cuda"))) == 10
    assert steering.default_grid(None) == 1


@pytest.mark.parametrize("rate, need", [(1.0, 8), (0.95, 8), (0.875, 7), (0.7, 6), (0.6, 5), (0.1, 1), (0.0, 1),
                                        (None, 8)])
def test_required_coherent_is_relative_to_the_unsteered_pass_rate(rate, need):
    from difflens.adl.steering import required_coherent

    assert required_coherent(SteeringConfig(), rate) == need
    # the paper's absolute rule ignores the pass rate
    assert required_coherent(SteeringConfig(coherence_reference="absolute"), rate) == 8


class CountGrader:
    """Per prompt, a fixed number of the 10 samples of any α pass (α-independent): ``ok[prompt]``."""

    name = "count"

    def __init__(self, ok: dict[str, int], default: int = 10):
        self.ok, self.default, self.seen = ok, default, {}

    def grade(self, texts):  # counts across calls: a tested α's samples may come in several
        out = []
        for t in texts:
            a, p = t.split("|", 1)
            k = self.seen[(a, p)] = self.seen.get((a, p), 0) + 1
            out.append(k <= self.ok.get(p, self.default))
        return out


@pytest.mark.parametrize("schedule", ["batched", "paper"])
def test_a_first_prompt_without_any_coherent_alpha_does_not_zero_the_others(world, schedule):
    """roman_concrete: the first threshold prompt never passed, and the refinement range [0, 2α₁]
    collapsed to [0, 0] for the other two, so α = 0 at every position."""
    first = steering.THRESHOLD_PROMPTS[0]
    per = {first: -1.0}  # incoherent at every α
    th = search(SteeringConfig(search=schedule, grid=1), ThresholdGrader(30.0, per))
    a1, a2, a3 = th.per_prompt
    assert a1 == 0.0
    for a in (a2, a3):  # the full range, to the first prompt's precision
        assert 30 - 100 / 2 ** 10 <= a < 30
    assert th.alpha == pytest.approx((a2 + a3) / 3)


@pytest.mark.parametrize("schedule", ["batched", "paper"])
def test_each_threshold_prompt_is_held_to_its_own_bar(world, schedule):
    """A prompt whose unsteered samples pass 2 of 10 can never reach a pooled bar of 4: with its own
    bar (2) it passes at every α; with the pooled one it is 0."""
    p2 = steering.THRESHOLD_PROMPTS[1]
    pooled = search(SteeringConfig(search=schedule, grid=1, min_coherent=4), CountGrader({p2: 2}))
    assert pooled.per_prompt[1] == 0.0
    own = search(SteeringConfig(search=schedule, grid=1, min_coherent=4, min_coherent_per_prompt=[4, 2, 4]),
                 CountGrader({p2: 2}))
    assert own.per_prompt[1] > 0 and own.per_prompt[0] > 90
    assert all(s.coherent == (s.n_coherent >= (2 if s.prompt == p2 else 4)) for s in own.steps)


def test_steering_config_need_falls_back_to_min_coherent():
    cfg = SteeringConfig(min_coherent=6)
    assert [cfg.need(i) for i in range(3)] == [6, 6, 6]
    cfg = cfg.model_copy(update={"min_coherent_per_prompt": [3, 4]})
    assert [cfg.need(i) for i in range(3)] == [3, 4, 6]


def test_judging_lazily_stops_exactly_where_the_verdict_becomes_certain():
    """Every pass/fail pattern of 10 samples and every bar: the verdict is that of all 10 samples, and the
    samples judged are the shortest prefix that settles it (waves never overshoot)."""
    import itertools

    from difflens.adl.steering import _Bracket, _Test, judge

    class Pattern:  # text "k|v": sample k, verdict v
        calls = 0

        def grade(self, texts):
            self.calls += 1
            return [t.endswith("|1") for t in texts]

    b = _Bracket("p", 0.0, 1.0)
    for need in range(1, 11):
        for bits in itertools.product((0, 1), repeat=10):
            t = _Test(b, 0.5, 10, need)
            judge(Pattern(), [t], [f"{k}|{v}" for k, v in enumerate(bits)])
            assert t.decided() == (sum(bits) >= need)
            passes = list(itertools.accumulate(bits))
            settled = next(k + 1 for k in range(10) if passes[k] >= need or (k + 1 - passes[k]) > 10 - need)
            assert len(t.verdicts) == settled and t.verdicts == [bool(v) for v in bits[:settled]]
            full = _Test(b, 0.5, 10, need)
            judge(Pattern(), [full], [f"{k}|{v}" for k, v in enumerate(bits)], grade_all=True)
            assert full.decided() == t.decided() and len(full.verdicts) == 10


def test_judge_refuses_texts_that_do_not_match_the_samples():
    from difflens.adl.steering import _Bracket, _Test, judge

    with pytest.raises(ValueError, match="9 texts for 10 samples"):
        judge(object(), [_Test(_Bracket("p", 0.0, 1.0), 0.5, 10, 8)], ["x"] * 9)


def test_judging_every_sample_is_not_part_of_the_steer_fingerprint():
    """grade_all changes which samples are judged, never a verdict: a steer result cached either way (or
    before the field existed) stays valid."""
    assert SteeringConfig(grade_all=True).identity() == SteeringConfig().identity()
    assert set(SteeringConfig().identity()) == set(SteeringConfig.model_fields) - {"positions", "grade_all"}
    assert SteeringConfig(grid=3).identity() != SteeringConfig().identity()
