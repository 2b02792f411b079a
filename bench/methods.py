"""Benchmark: diff mining + per-token KL + activation differences in one pass over N × T tokens.

Against the FLOP floor of two full forward passes over the same tokens (2 models × 2 × params ×
tokens, params = decoder layers + unembedding, at this machine's measured matmul rate), beside the
measured time of the two bare forward passes (the models' own logits, nothing else), and the peak
memory above the loaded models at each N (it must stay flat in N: the methods hold [V]-sized
statistics, never [N × T × V]). Each N runs in its own subprocess so peaks are measured apart.

The pair: the embedded SmolLM2-135M-Instruct against ``organism:cake_bake`` when that organism is
already trained under $DIFFLENS_HOME, else against a copy of itself with small Gaussian weight noise
(relative σ = 1e-3; no training here). ``--ft`` names another finetuned model.

    .venv/bin/python bench/methods.py --samples 1000,8000            # the issue's two N (slow on CPU)
    .venv/bin/python bench/methods.py --samples 8,32 --tokens 16     # a smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import BASE  # noqa: E402
from collect import PeakRSS, rss_mb  # noqa: E402


def default_finetuned(ft: str | None) -> tuple[str, "tempfile.TemporaryDirectory[str] | None"]:
    """The benches' finetuned model: ``ft`` when given, else organism:cake_bake when trained here, else a
    noisy copy of the base in a temporary directory (returned too: the caller cleans it up)."""
    if ft is not None:
        return ft, None
    if trained_organism():
        return "organism:cake_bake", None
    tmp = tempfile.TemporaryDirectory()
    print(f"organism:cake_bake is not trained here: using {BASE} with weight noise (σ = 1e-3 relative)", flush=True)
    return str(noisy_copy(Path(tmp.name) / "noisy")), tmp


def trained_organism(name: str = "cake_bake") -> bool:
    from difflens.rundir.layout import home

    root = home().root / "organisms" / name / BASE
    return any((d / "card.json").exists() and any(d.glob("*.safetensors")) for d in root.glob("*")) \
        if root.exists() else False


def noisy_copy(out: Path, sigma: float = 1e-3, seed: int = 0) -> Path:
    """The base model with N(0, (σ·std(w))²) noise on every weight matrix: a pair with no narrow finetune."""
    import torch

    from difflens.models.sources import load_model

    lm = load_model(BASE)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lm.model.parameters():
            if p.dim() >= 2:
                p.add_(torch.randn(p.shape, generator=g) * (sigma * float(p.float().std())))
    lm.model.save_pretrained(out)
    lm.tokenizer.save_pretrained(out)
    return out


def matmul_gflops(device: str, dtype: str) -> float:
    import torch

    dt = getattr(torch, dtype) if dtype in ("float32", "bfloat16", "float16") else torch.float32
    n = 4096 if device.startswith("cuda") else 2048
    a, b = torch.randn(n, n, device=device, dtype=dt), torch.randn(n, n, device=device, dtype=dt)
    torch.mm(a, b)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    reps = 20 if device.startswith("cuda") else 5
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    sync()
    return reps * 2 * n ** 3 / (time.perf_counter() - t0) / 1e9


def forward_params(pair) -> int:
    """Parameters a token's forward multiplies with: the decoder layers and the unembedding."""
    return sum(p.numel() for p in pair.arch.layers.parameters()) + pair.vocab_size * pair.arch.hidden_size


def worker(ft: str, n: int, tokens: int, batch_size: int, device: str, dtype: str, forward_ref: bool) -> dict:
    import torch

    from difflens.methods import DiffMining, PassConfig, TokenKL, run_methods
    from difflens.methods.driver import sample_pass
    from difflens.data.corpora import load_corpus
    from difflens.models.pair import load_pair
    from difflens.rundir.layout import RunLayout

    cuda = device.startswith("cuda")
    pair = load_pair(BASE, ft, device=device, dtype=dtype)
    cfg = PassConfig(samples=n, tokens=tokens, batch_size=batch_size)
    sample = sample_pass(pair, load_corpus("wiki"), cfg)  # tokenised once here too: not part of the timing below
    out: dict = {"n": len(sample.ids), "tokens": tokens, "params": forward_params(pair), "vocab": pair.vocab_size,
                 "precision": pair.precision}
    if forward_ref:  # the two bare forward passes over the same batches: the models' own full logits
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(sample.ids), batch_size):
                x = torch.tensor(sample.ids[i:i + batch_size], device=pair.device)
                for side in ("base", "ft"):
                    with pair.side(side) as m:
                        m(input_ids=x, use_cache=False).logits.float().sum().item()
        sync()
        out["forward_s"] = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base_alloc = torch.cuda.memory_allocated()
    baseline = rss_mb()
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        with PeakRSS() as mem:
            res = run_methods(pair, RunLayout(d), [DiffMining(), TokenKL()], cfg, progress=False)
        if cuda:
            torch.cuda.synchronize()
        out["seconds"] = time.perf_counter() - t0
    out["peak_rss_mb"] = mem.peak - baseline
    if cuda:
        out["peak_gpu_mb"] = (torch.cuda.max_memory_allocated() - base_alloc) / 2**20
    out["top_tokens"] = [e.token for e in res["mining"].rankings["top_k"][:10]]
    out["kl_mean"] = res["kl"].stats["kl"].mean
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", default="1000,8000", help="comma-separated N values (each in its own process)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--ft", default=None, help="finetuned model (default: organism:cake_bake if trained, "
                                                "else the base with weight noise)")
    ap.add_argument("--no-forward-ref", action="store_true", help="skip timing the two bare forward passes")
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--n", type=int, default=0)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.ft, args.n, args.tokens, args.batch_size, args.device, args.dtype,
                                not args.no_forward_ref)))
        return
    import torch

    ft, tmp = default_finetuned(args.ft)
    rows = []
    for n in [int(x) for x in args.samples.split(",")]:
        cmd = [sys.executable, __file__, "--worker", "--ft", ft, "--n", str(n), "--tokens", str(args.tokens),
               "--batch-size", str(args.batch_size), "--device", args.device, "--dtype", args.dtype]
        if args.no_forward_ref:
            cmd.append("--no-forward-ref")
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
        if res.returncode != 0:
            sys.exit(f"worker for N={n} failed:\n{res.stderr[-3000:]}")
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    gflops = matmul_gflops(args.device, args.dtype)
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{os.cpu_count()} CPU cores"
    print(f"machine: {dev}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"matmul {gflops:.0f} GFLOP/s ({args.dtype})")
    print(f"pair: {BASE} vs {ft}; T={args.tokens}, batch {args.batch_size}, precision {rows[0]['precision']}, "
          f"{rows[0]['params'] / 1e6:.1f}M params per forward, V={rows[0]['vocab']}")
    mem_col = "peak GPU MB" if args.device.startswith("cuda") else "peak RSS MB"
    print(f"{'N':>7}{'tokens':>10}{'seconds':>10}{'2 fwd s':>10}{'floor s':>10}{'÷ floor':>9}{'÷ 2 fwd':>9}"
          f"{mem_col:>14}")
    for r in rows:
        tokens = r["n"] * r["tokens"]
        floor = 2 * 2 * r["params"] * tokens / (gflops * 1e9)
        fwd = r.get("forward_s")
        mem = r.get("peak_gpu_mb", r["peak_rss_mb"])
        print(f"{r['n']:>7}{tokens:>10}{r['seconds']:>10.2f}{(fwd or float('nan')):>10.2f}{floor:>10.2f}"
              f"{r['seconds'] / floor:>9.2f}{(r['seconds'] / fwd if fwd else float('nan')):>9.2f}{mem:>14.1f}")
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        ma, mb = a.get("peak_gpu_mb", a["peak_rss_mb"]), b.get("peak_gpu_mb", b["peak_rss_mb"])
        print(f"peak memory N={b['n']} / N={a['n']}: {mb / max(ma, 1.0):.2f}")
    print(f"top-K tokens (N={rows[-1]['n']}): {rows[-1]['top_tokens']}; mean KL {rows[-1]['kl_mean']:.4g} nats")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
