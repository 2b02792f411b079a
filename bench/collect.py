"""Benchmark: `difflens collect` vs an anchor-style extraction of the same δ̄, same samples.

Anchor-style = what a straightforward implementation does: every sample at 128 tokens through
the full depth with ``output_hidden_states``, the layer-ℓ activations of all samples buffered,
then the first k positions averaged. Ours = k tokens, forward stopped after layer ℓ, running sums.

Each method runs in its own subprocess so that peak memory (RSS sampled every 5 ms, minus the
RSS after loading the models) is measured separately. Prints time and peak-memory ratios, the
ratio of our time to the FLOP floor (k tokens × layers up to ℓ at this machine's measured matmul
throughput), and ours at N and 4N to show memory does not grow with N.

    .venv/bin/python bench/collect.py --samples 200
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import BASE, make_finetune  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> "PeakRSS":
        self.peak = rss_mb()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_mb())


def worker(method: str, ft: str, n: int, k: int, layer: float, anchor_len: int) -> dict:
    import torch

    from difflens.models.tokens import bos_prefix_ids
    from difflens.adl.collect import CollectConfig, collect
    from difflens.data.corpora import load_corpus, sample_ids
    from difflens.rundir.layout import RunLayout
    from difflens.models.pair import load_pair

    pair = load_pair(BASE, ft)
    li = pair.arch.resolve_layer(layer)
    baseline = rss_mb()
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        if method == "ours":
            with tempfile.TemporaryDirectory() as d:
                cfg = CollectConfig(samples=n, positions=k, layers=[li], norm_samples=1, norm_len=8)
                res = collect(pair, RunLayout(d), cfg, progress=False)["wiki"][0]
                delta = res.delta
        else:
            corpus = load_corpus("wiki")
            bos = bos_prefix_ids(pair.tokenizer, pair.arch)
            # same samples: the same seeded selection of texts with >= k tokens, kept at up to 128 tokens
            sample = sample_ids(corpus, pair.tokenizer, n=n, k=k, seed=0, max_len=anchor_len, bos=bos)
            buf = {"base": [], "ft": []}
            pad = pair.tokenizer.pad_token_id
            for i in range(0, len(sample.ids), 16):
                batch = sample.ids[i:i + 16]
                T = max(len(x) for x in batch)
                ids = torch.full((len(batch), T), pad)
                mask = torch.zeros((len(batch), T), dtype=torch.long)
                for r, x in enumerate(batch):
                    ids[r, :len(x)] = torch.tensor(x)
                    mask[r, :len(x)] = 1
                for side in ("base", "ft"):
                    with pair.side(side) as m, torch.no_grad():
                        hs = m(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
                    buf[side].append(hs[li + 1].clone())  # all activations of the batch, all positions
            means = {s: torch.cat([b[:, :k] for b in buf[s]]).double().mean(0) for s in buf}
            delta = (means["ft"] - means["base"]).float()
    seconds = time.perf_counter() - t0
    return {"method": method, "seconds": seconds, "peak_mb": mem.peak - baseline, "layer": li,
            "delta": delta.tolist(), "num_layers": pair.arch.num_layers}


def matmul_gflops() -> float:
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    t0 = time.perf_counter()
    for _ in range(5):
        torch.mm(a, b)
    return 5 * 2 * 2048 ** 3 / (time.perf_counter() - t0) / 1e9


def layer_params() -> tuple[int, int]:
    from difflens.models.arch import ArchAdapter
    from difflens.models.sources import load_model

    model = load_model(BASE).model
    arch = ArchAdapter(model)
    return sum(p.numel() for p in arch.layers[0].parameters()), arch.num_layers


def run_sub(method: str, args: argparse.Namespace, ft: str, n: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--ft", ft, "--samples", str(n), "--k", str(args.k),
           "--layer", str(args.layer), "--anchor-len", str(args.anchor_len)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--layer", type=float, default=0.5)
    ap.add_argument("--anchor-len", type=int, default=128)
    ap.add_argument("--ft", default=None, help="finetuned model (default: a short finetune made here)")
    ap.add_argument("--worker", default=None)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.ft, args.samples, args.k, args.layer, args.anchor_len)))
        return
    import torch

    ft = args.ft
    tmp = None
    if ft is None:
        tmp = tempfile.TemporaryDirectory()
        print("making a short finetune of", BASE, "(20 steps) ...", flush=True)
        ft = str(make_finetune(Path(tmp.name) / "ft"))
    ours = run_sub("ours", args, ft, args.samples)
    ours4 = run_sub("ours", args, ft, 4 * args.samples)
    anchor = run_sub("anchor", args, ft, args.samples)
    d_ours, d_anchor = torch.tensor(ours["delta"]), torch.tensor(anchor["delta"])
    max_err = float((d_ours - d_anchor).abs().max())
    per_layer, L = layer_params()
    flops = args.samples * args.k * 2 * 2 * per_layer * (ours["layer"] + 1)  # tokens × 2 models × 2·params
    gflops = matmul_gflops()
    floor = flops / (gflops * 1e9)
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"matmul {gflops:.0f} GFLOP/s")
    print(f"pair: {BASE} vs {args.ft or 'a short finetune'}; N={args.samples}, k={args.k}, layer {ours['layer']}/{L}, "
          f"anchor prefix {args.anchor_len} tokens")
    print(f"{'method':<22}{'seconds':>10}{'peak MB over models':>22}")
    print(f"{'anchor-style':<22}{anchor['seconds']:>10.2f}{anchor['peak_mb']:>22.1f}")
    print(f"{'difflens collect':<22}{ours['seconds']:>10.2f}{ours['peak_mb']:>22.1f}")
    print(f"{'difflens collect 4N':<22}{ours4['seconds']:>10.2f}{ours4['peak_mb']:>22.1f}")
    print(f"speed ratio (anchor / ours):          {anchor['seconds'] / ours['seconds']:.1f}x")
    print(f"peak-memory ratio (anchor / ours):    {anchor['peak_mb'] / max(ours['peak_mb'], 1.0):.1f}x")
    print(f"ours 4N / ours N peak memory:         {ours4['peak_mb'] / max(ours['peak_mb'], 1.0):.2f}")
    print(f"ours / FLOP floor ({flops / 1e12:.3f} TFLOP): {ours['seconds'] / floor:.1f}x")
    print(f"max |δ̄_ours − δ̄_anchor| = {max_err:.2e}")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
