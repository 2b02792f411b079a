"""Threshold searches of several positions in shared rounds (find_thresholds): one generate call per
round and grader calls shared by all positions, each position's schedule unchanged."""
from __future__ import annotations

import pytest
import torch

import difflens.adl.steered as steered
import difflens.adl.steering as steering
from difflens.adl.steering import SteeringConfig, find_threshold, find_thresholds


class LengthGrader:  # deterministic: coherent iff the text has a few words
    name = "len"

    def __init__(self):
        self.calls, self.texts = 0, 0

    def grade(self, texts):
        self.calls += 1
        self.texts += len(texts)
        return [len(t.split()) >= 3 for t in texts]


CFG = SteeringConfig(search_iters=3, refine_iters=1, search_samples=2, min_coherent=1, max_new_tokens=4, grid=1,
                     threshold_prompts=["tell me a story", "why"])


def sharpened(tiny_run):
    pair, _, c = tiny_run
    with torch.no_grad():
        pair.ft_lm.model.lm_head.weight.mul_(100)
    return pair, c


def test_one_position_equals_find_threshold(tiny_run):
    pair, c = sharpened(tiny_run)
    alone = find_threshold(pair, LengthGrader(), layer=2, position=1, direction=c.delta[1], eta=c.eta_ft, cfg=CFG,
                           progress=False)
    joint = find_thresholds(pair, LengthGrader(), layer=2, directions={1: c.delta[1]}, eta=c.eta_ft, cfg=CFG,
                            progress=False)
    assert joint == {1: alone}


def test_positions_share_rounds(tiny_run, monkeypatch):
    pair, c = sharpened(tiny_run)
    calls = []
    real = steered.generate_vectors

    def counting(pair_, prompts, add, **kw):
        calls.append(len(prompts))
        return real(pair_, prompts, add, **kw)

    monkeypatch.setattr(steered, "generate_vectors", counting)
    g = LengthGrader()
    done = []
    res = find_thresholds(pair, g, layer=2, directions={j: c.delta[j] for j in (0, 1, 2)}, eta=c.eta_ft, cfg=CFG,
                          progress=False, on_done=done.append)
    assert sorted(res) == sorted(t.position for t in done) == [0, 1, 2]
    # one generate call per round for all positions: as many rounds as the longest search (a position's
    # rounds ≤ the α's it tested); the grader's calls (waves) judge every position's samples together
    assert len(calls) <= max(len(t.steps) for t in res.values())
    assert sum(calls) == sum(t.generations_used for t in res.values())
    assert g.texts == sum(t.grader_calls for t in res.values()) <= sum(calls)
    for t in res.values():  # each position ran its own full schedule
        assert {s.prompt for s in t.steps} <= set(CFG.threshold_prompts) and len(t.steps) >= CFG.search_iters
    # a memory budget that splits a round into several calls changes nothing but the draws
    calls.clear()
    more = find_thresholds(pair, LengthGrader(), layer=2, directions={j: c.delta[j] for j in (0, 1)}, eta=c.eta_ft,
                           cfg=CFG, progress=False, max_rows=3)
    assert sorted(more) == [0, 1] and max(calls) <= 3


class FakeWorld:
    """Generations that carry their α (a single position's search passes α's, the shared rounds
    steering vectors α·η·v̂ with η = 1, ‖v̂‖ = 1); records every batch's size."""

    def __init__(self):
        self.batches = []

    def generate_rows(self, pair, prompts, alphas, **kw):
        self.batches.append(len(prompts))
        return [f"{a!r}|{p}" for p, a in zip(prompts, alphas)]

    def generate_steered(self, pair, prompts, vectors, **kw):
        return self.generate_rows(pair, prompts, [0.0 if v is None else float(v.norm()) for v in vectors])


class ThresholdGrader:
    name = "fake"

    def __init__(self, threshold):
        self.threshold = threshold

    def grade(self, texts):
        return [float(t.split("|", 1)[0]) < self.threshold for t in texts]


@pytest.mark.parametrize("grid", [1, 10])
def test_deterministic_grader_gives_each_position_its_own_search(monkeypatch, grid):
    w = FakeWorld()
    monkeypatch.setattr(steering, "generate_rows", w.generate_rows)
    monkeypatch.setattr(steering, "generate_steered", w.generate_steered)
    cfg = SteeringConfig(grid=grid)
    alone = find_threshold(None, ThresholdGrader(37.3), layer=0, position=3, direction=torch.ones(4), eta=1.0,
                           cfg=cfg, progress=False)
    single_rounds = len(w.batches)
    w.batches.clear()
    joint = find_thresholds(None, ThresholdGrader(37.3), layer=0, directions={j: torch.ones(4) for j in range(4)},
                            eta=1.0, cfg=cfg, progress=False)
    assert len(w.batches) == single_rounds  # four positions in the rounds of one
    for t in joint.values():
        assert (t.alpha, t.per_prompt, t.steps) == (alone.alpha, alone.per_prompt, alone.steps)


class RecordingGrader(ThresholdGrader):
    def __init__(self, threshold):
        super().__init__(threshold)
        self.seen = []

    def grade(self, texts):
        self.seen += list(texts)
        return super().grade(texts)


def steered_world(monkeypatch):
    """A FakeWorld behind find_thresholds' generate_steered, and the per-row temperatures of each call."""
    w, temps = FakeWorld(), []

    def steered_rows(pair, prompts, vectors, **kw):
        t = kw["temperature"]
        temps.append(list(t) if isinstance(t, list) else [t] * len(prompts))
        return w.generate_steered(pair, prompts, vectors, **kw)

    monkeypatch.setattr(steering, "generate_steered", steered_rows)
    return w, temps


def test_riders_share_the_rounds_and_leave_every_search_unchanged(monkeypatch):
    w, temps = steered_world(monkeypatch)
    cfg = SteeringConfig(grid=1, search_temperature=1.2)
    dirs = {j: torch.ones(4) for j in range(3)}
    plain = find_thresholds(None, ThresholdGrader(37.3), layer=0, directions=dirs, eta=1.0, cfg=cfg, progress=False)
    rounds, sizes = len(w.batches), list(w.batches)
    w.batches.clear()
    temps.clear()
    asked, got = [], []

    def riders(room):
        asked.append(room)
        if len(asked) > 2:  # two rides, then nothing left to carry
            return None
        k = len(asked)
        return steering.Ride(prompts=[f"final {k}.{i}" for i in range(3)], vectors=[torch.full((4,), 5.0)] * 3,
                             temperature=0.7, done=got.append)

    g = RecordingGrader(37.3)
    ridden = find_thresholds(None, g, layer=0, directions=dirs, eta=1.0, cfg=cfg, progress=False, max_rows=100,
                             riders=riders)
    assert ridden == plain and len(w.batches) == rounds  # the same searches in the same rounds
    assert sizes[0] == len(dirs) * cfg.search_samples and asked[0] == 100 - sizes[0]  # the room a call had left
    # each ride came back with its own rows' texts, in order, and the grader never saw them
    assert got == [[f"10.0|final {k}.{i}" for i in range(3)] for k in (1, 2)]  # ‖5·1₄‖ = 10
    assert not any("final" in t for t in g.seen)
    assert w.batches[:2] == [sizes[0] + 3, sizes[1] + 3] and w.batches[2:] == sizes[2:]
    assert temps[0] == [1.2] * sizes[0] + [0.7] * 3 and set(temps[-1]) == {1.2}


class HalfGrader(RecordingGrader):
    """Below the threshold every other sample of an α passes: 5 of its 10 (counted across calls: the search
    judges an α's samples in waves)."""

    def __init__(self, threshold):
        super().__init__(threshold)
        self.count = {}

    def grade(self, texts):
        out = []
        for t, ok in zip(texts, super().grade(texts)):
            k = self.count[t] = self.count.get(t, 0) + 1
            out.append(ok and k % 2 == 1)
        return out


def test_a_prelude_rides_the_first_round_and_the_bars_it_returns_grade_every_round(monkeypatch):
    """The steer stage's unsteered samples join round 1's call; their done() runs before that round
    is graded, and the bars it returns (set by the grader's calibration) grade it and every later one."""
    w, temps = steered_world(monkeypatch)
    cfg = SteeringConfig(grid=1, search_temperature=1.2)  # 8 of 10 must pass
    lenient = cfg.model_copy(update={"min_coherent": 5})
    dirs = {j: torch.ones(4) for j in range(2)}
    strict = find_thresholds(None, HalfGrader(37.3), layer=0, directions=dirs, eta=1.0, cfg=cfg, progress=False)
    assert all(t.alpha == 0 for t in strict.values())  # 5 of 10 never pass 8 of 10: the bars matter here
    w.batches.clear()
    expected = find_thresholds(None, HalfGrader(37.3), layer=0, directions=dirs, eta=1.0, cfg=lenient,
                               progress=False)
    assert all(t.alpha > 30 for t in expected.values())
    rounds = len(w.batches)
    w.batches.clear()
    temps.clear()
    g = HalfGrader(37.3)
    seen = []

    def calibrated(texts):
        seen.append(("prelude", list(texts), len(g.seen)))
        return lenient

    asked = []

    def riders(room):  # one ride, in round 1 beside the prelude
        asked.append(room)
        if len(asked) == 1:
            return steering.Ride(prompts=["ride"], vectors=[torch.full((4,), 5.0)], temperature=0.7,
                                 done=lambda texts: seen.append(("ride", list(texts), len(g.seen))))

    prelude = steering.Ride(prompts=["cal"] * 4 + ["fin"] * 2, vectors=[None] * 6, temperature=[1.2] * 4 + [1.1] * 2,
                            done=calibrated)
    got = find_thresholds(None, g, layer=0, directions=dirs, eta=1.0, cfg=cfg, progress=False, max_rows=100,
                          prelude=prelude, riders=riders)
    assert got == expected and len(w.batches) == rounds  # the searches graded by the prelude's bars throughout
    # each its own texts, once, before any grading; the ride saved before the prelude calibrates
    assert seen == [("ride", ["10.0|ride"], 0), ("prelude", ["0.0|cal"] * 4 + ["0.0|fin"] * 2, 0)]
    assert not any("cal" in t or "fin" in t or "ride" in t for t in g.seen)
    n = len(dirs) * cfg.search_samples
    assert w.batches[0] == n + 6 + 1 and temps[0] == [1.2] * n + [1.2] * 4 + [1.1] * 2 + [0.7]
    assert asked[0] == 100 - n - 6  # riders get what the search rows and the prelude left
    assert set(temps[1]) == {1.2} and w.batches[1] == n
    # no round to join: the prelude runs alone
    alone = []
    p2 = steering.Ride(prompts=["cal"] * 2, vectors=[None] * 2, temperature=1.2, done=alone.append)
    assert find_thresholds(None, g, layer=0, directions={}, eta=1.0, cfg=cfg, progress=False, prelude=p2) == {}
    assert alone == [["0.0|cal"] * 2]
    with pytest.raises(ValueError, match="prelude"):
        find_thresholds(None, g, layer=0, directions=dirs, eta=1.0, cfg=cfg.model_copy(update={"search": "paper"}),
                        progress=False, prelude=p2)
