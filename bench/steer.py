"""Benchmark: the steering-strength search per position, the paper's sequential schedule against
the batched one, on the same pair, position(s), grader and seed.

Per schedule: the threshold α (and per prompt), generations, grader calls (texts judged), sequential
rounds (generate + grade calls), wall and CPU seconds, and the wall-time ratio to the paper's
schedule. The paper's schedule: binary search on [0, 100] with 10 iterations, then 5 on [0, 2α₁]
for two more prompts, 10 samples per tested α (20 rounds, 200 generations); the batched schedule
tests a grid of up to ``--grid`` α's per prompt and round, all in one generate call.

    .venv/bin/python bench/steer.py [--ft organism:cake_bake] [--positions 2] [--max-new-tokens 32]
                                    [--grid 0 10] [--early-stop]

``--grid 0`` is the device's default grid (difflens.adl.steering.default_grid).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import BASE, pair_and_collected  # noqa: E402


class CountingGrader:
    """The coherence grader, counting grade() calls (one per sequential round)."""

    def __init__(self, inner):
        self.inner, self.name, self.calls = inner, inner.name, 0

    def grade(self, texts):
        self.calls += 1
        return self.inner.grade(texts)


def main() -> None:
    from difflens.adl.steering import SteeringConfig, default_grid, find_threshold, generate, required_coherent
    from difflens.graders import graders_for

    ap = argparse.ArgumentParser()
    ap.add_argument("--ft", default=None)
    ap.add_argument("--positions", type=int, nargs="+", default=[2])
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--grid", type=int, nargs="+", default=[0], help="batched grid sizes to run (0: device default)")
    ap.add_argument("--early-stop", action="store_true", help="also run the paper schedule with early stopping")
    ap.add_argument("--collect-samples", type=int, default=500)
    ap.add_argument("--progress", action="store_true", help="[difflens] lines per search round on stderr")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    pair, c, ft = pair_and_collected(args.ft, Path(tmp.name), samples=args.collect_samples, norm_samples=64)
    graders = graders_for(pair, "offline")
    base_cfg = SteeringConfig(max_new_tokens=args.max_new_tokens)
    calib = generate(pair, base_cfg.threshold_prompts, layer=c.layer, direction=None, alpha=0, eta=c.eta_ft, n=10,
                     temperature=1.2, max_new_tokens=args.max_new_tokens, seed=99)
    calib = [t for ts in calib for t in ts]
    graders.coherence.calibrate(calib)
    pass_rate = sum(graders.coherence.grade(calib)) / len(calib)
    need = required_coherent(base_cfg, pass_rate)
    base_cfg = base_cfg.model_copy(update={"min_coherent": need})
    schedules = [("paper", {"search": "paper", "early_stop": False})]
    if args.early_stop:
        schedules.append(("paper early-stop", {"search": "paper", "early_stop": True}))
    for g in args.grid:
        grid = g or default_grid(pair)
        schedules.append((f"batched grid {grid}", {"search": "batched", "grid": grid}))
    print(f"pair {BASE} vs {'short finetune' if not args.ft else ft} on {pair.device}, layer {c.layer}, "
          f"max_new_tokens {args.max_new_tokens}, offline coherence grader; unsteered pass rate {pass_rate:.2f} "
          f"→ a tested α needs ≥ {need}/{base_cfg.search_samples} coherent")
    head = (f"{'pos':>4} {'schedule':<18}{'alpha':>8}  {'per prompt':<24}{'gens':>6}{'graded':>8}{'rounds':>8}"
            f"{'wall s':>9}{'cpu s':>9}{'wall/paper':>12}")
    print(head)
    for j in args.positions:
        paper_wall = paper_alpha = None
        for name, update in schedules:
            cfg = base_cfg.model_copy(update=update)
            grader = CountingGrader(graders.coherence)
            t0, c0 = time.perf_counter(), time.process_time()
            th = find_threshold(pair, grader, layer=c.layer, position=j, direction=c.delta[j], eta=c.eta_ft, cfg=cfg,
                                progress=args.progress)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if paper_wall is None:
                paper_wall, paper_alpha = wall, th
            per = "/".join(f"{a:.3f}" for a in th.per_prompt)
            print(f"{j:>4} {name:<18}{th.alpha:>8.3f}  {per:<24}{th.generations_used:>6}{th.grader_calls:>8}"
                  f"{grader.calls:>8}{wall:>9.1f}{cpu:>9.1f}{wall / paper_wall:>11.2f}x", flush=True)
        a1 = paper_alpha.per_prompt[0]
        print(f"     resolution (both schedules): first prompt {100 / 2 ** 10:.3f}, refinements 2·α₁/2^5 = "
              f"{2 * a1 / 32:.3f}; differences beyond that are sampling noise at T=1.2 (different draws)")
    tmp.cleanup()


if __name__ == "__main__":
    main()
