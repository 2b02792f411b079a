"""Benchmark: Patchscope time per vector (30 scales × 3 identity prompts in one batched forward)
against the straightforward loop of 90 separate patched forwards, same vector, same results.

    .venv/bin/python bench/lens.py [--ft organism:cake_bake]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import BASE, pair_and_collected  # noqa: E402


def main() -> None:
    import torch

    from difflens.graders import OfflineScaleGrader
    from difflens.lens import IDENTITY_PROMPTS, SCALES, patched_next_token_probs, patchscope_vector

    ap = argparse.ArgumentParser()
    ap.add_argument("--ft", default=None)
    ap.add_argument("--vectors", type=int, default=3)
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    pair, c, ft = pair_and_collected(args.ft, Path(tmp.name), samples=200, norm_samples=32)
    grader = OfflineScaleGrader()
    grader.cluster(["cake", "oven"])  # load the embedding model outside the timing

    t0 = time.perf_counter()
    for j in range(args.vectors):
        batched = patched_next_token_probs(pair, c.layer, c.delta[j], SCALES, c.eta_ft)
    t_batched = (time.perf_counter() - t0) / args.vectors

    t0 = time.perf_counter()
    loop = torch.zeros_like(batched)
    for si, s in enumerate(SCALES):
        for pi, prompt in enumerate(IDENTITY_PROMPTS):
            loop[si, pi] = patched_next_token_probs(pair, c.layer, c.delta[args.vectors - 1], [s], c.eta_ft,
                                                    prompts=[prompt])[0, 0]
    t_loop = time.perf_counter() - t0

    t0 = time.perf_counter()
    patchscope_vector(pair, c.layer, c.delta[args.vectors - 1], c.eta_ft, grader, source="delta", position=0)
    t_full = time.perf_counter() - t0

    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}; pair {BASE} vs {'short finetune' if not args.ft else ft}")
    print(f"Patchscope forward per vector, 30 scales x 3 prompts batched: {t_batched:.2f} s")
    print(f"same, 90 separate forwards:                                 {t_loop:.2f} s")
    print(f"speed ratio (loop / batched):                               {t_loop / t_batched:.1f}x")
    print(f"full Patchscope per vector (forward + intersection + offline grader tournament): {t_full:.2f} s")
    print(f"max |p_batched - p_loop| = {float((batched - loop).abs().max()):.2e}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
