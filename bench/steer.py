"""Benchmark: generations and grader calls of the steering threshold search per position, ours
(early stopping: 3 samples per tested α, the other 7 only if needed) vs the paper's schedule (10 samples per α: 10 iterations on
[0, 100], then 5 on [0, 2α₁] for two more prompts), and the precision both reach.

    .venv/bin/python bench/steer.py [--ft organism:cake_bake] [--positions 1 2] [--max-new-tokens 32]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import BASE, pair_and_collected  # noqa: E402


def main() -> None:
    from difflens.graders import graders_for
    from difflens.adl.steering import SteeringConfig, find_threshold, generate

    ap = argparse.ArgumentParser()
    ap.add_argument("--ft", default=None)
    ap.add_argument("--positions", type=int, nargs="+", default=[2])
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    pair, c, ft = pair_and_collected(args.ft, Path(tmp.name), samples=500, norm_samples=64)
    graders = graders_for(pair, "offline")
    base_cfg = SteeringConfig(max_new_tokens=args.max_new_tokens)
    calib = generate(pair, base_cfg.threshold_prompts, layer=c.layer, direction=None, alpha=0, eta=c.eta_ft, n=10,
                     temperature=1.2, max_new_tokens=args.max_new_tokens, seed=99)
    graders.coherence.calibrate([t for ts in calib for t in ts])
    print(f"pair {BASE} vs {'short finetune' if not args.ft else ft}, layer {c.layer}, "
          f"max_new_tokens {args.max_new_tokens}, offline coherence grader")
    print(f"{'pos':>4} {'schedule':<16}{'generations':>12}{'grader calls':>14}{'alpha':>8}{'seconds':>9}")
    for j in args.positions:
        rows = []
        for name, early in (("paper 10x10", False), ("ours early-stop", True)):
            cfg = base_cfg.model_copy(update={"early_stop": early})
            t0 = time.perf_counter()
            th = find_threshold(pair, graders.coherence, layer=c.layer, position=j, direction=c.delta[j],
                                eta=c.eta_ft, cfg=cfg)
            rows.append((name, th, time.perf_counter() - t0))
            print(f"{j:>4} {name:<16}{th.generations_used:>12}{th.grader_calls:>14}{th.alpha:>8.3f}"
                  f"{rows[-1][2]:>9.1f}")
        paper, ours = rows[0][1], rows[1][1]
        print(f"     generations ratio paper/ours: {paper.generations_used / ours.generations_used:.2f}x; "
              f"precision (both): first prompt {100 / 2 ** 10:.3f}, refinements 2·α₁/2^5")
    tmp.cleanup()


if __name__ == "__main__":
    main()
