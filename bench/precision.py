"""Benchmark: how far does reduced precision move δ̄, and is it the weights or the compute?

The embedded SmolLM2-135M against a copy with 5% Gaussian weight noise (relative to each matrix's
std) in 8 decoder layers (4-11), N plain wiki samples, k=5 positions, layer 15 of 30 (0.5). δ̄ is
computed the way `difflens collect` does (first k tokens, forward stopped after the layer) under
each configuration and compared with float32 per position:

  fp32            float32 weights and compute, float64 means (the reference)
  bf16-weights    weights rounded to bfloat16, compute in float32 (isolates weight rounding)
  bf16            bfloat16 weights and compute, float64 means (today's `--dtype bfloat16`)
  bf16-e2e        bfloat16 weights, compute AND running sums (a naive implementation)
  bf16-fp32res    bfloat16 weights and matmuls (autocast), float32 residual stream, float64 means
  fp16            float16 weights and compute, float64 means
  fp16-fp32res    float16 weights and matmuls (autocast), float32 residual stream, float64 means

Columns: ‖δ̄_j − δ̄_j^fp32‖ / ‖δ̄_j^fp32‖ per position, cos(δ̄_j, δ̄_j^fp32) (min over j), the relative
change of η_ft, and how many of fp32's logit-lens top-20 tokens of δ̄_j survive (mean over j,
read through the float32 finetuned model so only δ̄ differs). The weight-rounding share is
bf16-weights' error over bf16's.

    .venv/bin/python bench/precision.py --samples 300      # ~2-3 min on 2 CPU cores
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from _common import BASE  # noqa: E402

CONFIGS = ("fp32", "bf16-weights", "bf16", "bf16-e2e", "bf16-fp32res", "fp16", "fp16-fp32res")


def noised_copy(model: torch.nn.Module, layers: range, scale: float, seed: int) -> torch.nn.Module:
    """A copy of ``model`` with ``scale`` × std Gaussian noise added to every matrix of ``layers``."""
    from difflens.models.arch import ArchAdapter

    ft = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    arch = ArchAdapter(ft)
    with torch.no_grad():
        for li in layers:
            for p in arch.layers[li].parameters():
                if p.dim() == 2:
                    p.add_(scale * p.std() * torch.randn(p.shape, generator=g))
    return ft


def as_config(model: torch.nn.Module, config: str) -> torch.nn.Module:
    """A copy of a float32 ``model`` in the configuration ``config``."""
    from difflens.models.arch import ArchAdapter
    from difflens.models.precision import use_fp32_residual

    m = copy.deepcopy(model)
    if config == "fp32":
        return m
    if config == "bf16-weights":
        return m.to(torch.bfloat16).to(torch.float32)
    if config in ("bf16", "bf16-e2e"):
        return m.to(torch.bfloat16)
    if config == "fp16":
        return m.to(torch.float16)
    if config in ("bf16-fp32res", "fp16-fp32res"):
        half = torch.bfloat16 if config.startswith("bf16") else torch.float16
        m = m.to(half)
        use_fp32_residual(m, ArchAdapter(m).embedding, half)
        return m
    raise ValueError(config)


def delta(base: torch.nn.Module, ft: torch.nn.Module, ids: list[list[int]], layer: int, *, accumulate: torch.dtype,
          batch_size: int) -> tuple[torch.Tensor, float]:
    """δ̄ [k, d] (float64) on the k-token rows ``ids`` and η_ft (mean norm of ft's positions ≥ 3)."""
    from difflens.models.arch import ArchAdapter

    k = len(ids[0])
    d = ArchAdapter(base).hidden_size
    sums = {s: torch.zeros(k, d, dtype=accumulate) for s in ("base", "ft")}
    eta, count = 0.0, 0
    for i in range(0, len(ids), batch_size):
        x = torch.tensor(ids[i:i + batch_size], dtype=torch.long)
        for side, m in (("base", base), ("ft", ft)):
            h = ArchAdapter(m).capture(m, x, [layer])[layer]
            sums[side] += h.to(accumulate).sum(0)
            if side == "ft":
                eta += float(h[:, 3:].double().norm(dim=-1).sum())
                count += h[:, 3:].shape[0] * h[:, 3:].shape[1]
    n = len(ids)
    return (sums["ft"].double() / n - sums["base"].double() / n), eta / max(count, 1)


def lens_top(model: torch.nn.Module, v: torch.Tensor, k: int = 20) -> list[set[int]]:
    from difflens.models.arch import ArchAdapter

    with torch.no_grad():
        logits = ArchAdapter(model).unembed(v.float())
    return [set(row.topk(k).indices.tolist()) for row in logits]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--positions", type=int, default=5)
    ap.add_argument("--layer", type=float, default=0.5)
    ap.add_argument("--noise", type=float, default=0.05)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from difflens.data.corpora import load_corpus, sample_ids
    from difflens.models.arch import ArchAdapter
    from difflens.models.sources import load_model
    from difflens.models.tokens import bos_prefix_ids

    t0 = time.time()
    lm = load_model(BASE, dtype=torch.float32)
    base32 = lm.model
    arch = ArchAdapter(base32)
    layer = arch.resolve_layer(args.layer)
    ft32 = noised_copy(base32, range(4, 12), args.noise, seed=0)
    k = args.positions
    sample = sample_ids(load_corpus("wiki"), lm.tokenizer, n=args.samples, k=k, seed=0, max_len=k,
                        bos=bos_prefix_ids(lm.tokenizer, arch))
    ids = [list(r) for r in sample.ids]
    print(f"{BASE} vs a copy with {args.noise:.0%} weight noise in layers 4-11; N={len(ids)}, k={k}, "
          f"layer {layer}/{arch.num_layers}; threads={torch.get_num_threads()} (setup {time.time() - t0:.0f}s)")
    ref = None
    ref_eta = 0.0
    ref_top: list[set[int]] = []
    rows = []
    for config in args.configs.split(","):
        t1 = time.time()
        b, f = as_config(base32, config), as_config(ft32, config)
        acc = torch.bfloat16 if config == "bf16-e2e" else torch.float64
        d, eta = delta(b, f, ids, layer, accumulate=acc, batch_size=args.batch_size)
        secs = time.time() - t1
        if ref is None:
            ref, ref_eta, ref_top = d, eta, lens_top(ft32, d)
        rel = ((d - ref).norm(dim=-1) / ref.norm(dim=-1)).tolist()
        cos = torch.nn.functional.cosine_similarity(d, ref, dim=-1).tolist()
        top = lens_top(ft32, d)
        overlap = sum(len(a & t) for a, t in zip(ref_top, top)) / (20 * len(top))
        rows.append((config, rel, min(cos), abs(eta - ref_eta) / ref_eta, overlap, secs))
        print(f"  {config:<13} done in {secs:.0f}s", flush=True)
    by = {r[0]: r for r in rows}
    print()
    head = " | ".join(f"j={j}" for j in range(k))
    print(f"| config | ‖Δδ̄_j‖/‖δ̄_j‖: {head} | max | min cos | Δη_ft | lens top-20 kept | s |")
    print("|---|" + "---|" * (k + 5))
    for config, rel, cmin, deta, overlap, secs in rows:
        cells = " | ".join(f"{x:.1%}" for x in rel)
        print(f"| {config} | {cells} | {max(rel):.1%} | {cmin:.4f} | {deta:.2%} | {overlap:.0%} | {secs:.0f} |")
    if "bf16-weights" in by and "bf16" in by:
        share = [w / c if c else float("nan") for w, c in zip(by["bf16-weights"][1], by["bf16"][1])]
        print(f"\nweight rounding / total bf16 error per position: {', '.join(f'{s:.0%}' for s in share)}")
    print(f"fp32 ‖δ̄_j‖: {', '.join(f'{x:.2f}' for x in ref.norm(dim=-1).tolist())}; η_ft {ref_eta:.1f}")
    print(f"total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
