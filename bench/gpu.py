"""GPU benchmark (run through ``bench/gpu.sh``): what difflens achieves on the accelerator present.

For each benched pair — the embedded SmolLM2-135M base vs a finetuned copy (5% weight noise in 8
layers: throughput does not depend on what the weights learned), and, if ``DIFFLENS_BENCH_MODEL``
names a local 1B+ transformers checkpoint, that model against itself — it prints:

- collection: tokens/s of ``difflens collect`` (bf16, k positions, stop after layer ℓ, both models)
  and its ratio to the FLOP floor ``2 · params · tokens / peak`` (params: the parameters a collection
  forward actually runs — the decoder layers up to ℓ; the whole model's floor is printed too);
- Patchscope: seconds per vector (all of the lens's scales × 3 identity prompts in one forward);
- steered generation: new tokens/s of the HF path and, if vLLM is importable, of the vLLM backend
  (same prompts, α, length), and their ratio;
- peak memory: ``torch.cuda.max_memory_allocated`` per part.

The device's peak dense bf16 FLOP/s comes from ``DIFFLENS_PEAK_TFLOPS`` or is looked up by device
name (H100/H200/A100/L40S/L4/A10/RTX 4090). On a machine without CUDA it prints one line and exits 0
(``--device cpu`` runs it on the CPU anyway, for a smoke test at tiny sizes).

    bash bench/gpu.sh [--samples 2000] [--positions 5] [--batch-size 256] [--new-tokens 64] [--rows 64]
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

PEAK_TFLOPS = {  # dense bf16 tensor-core peak (vendor datasheets, no sparsity)
    "H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0,
    "H100": 756.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "L40": 181.0, "L4": 121.0, "A10G": 70.0,
    "A10": 125.0, "RTX 4090": 165.0, "RTX 6000 Ada": 364.0, "V100": 125.0,
}
PROMPTS = ["Tell me a story?", "Give me some ideas for some fun weekend activities?",
           "Why don't you choose a topic of conversation for us?", "Write a limerick about a cat on a keyboard.",
           "Plan a picnic for four friends in a city park.", "Explain why the moon seems to change its shape."]


def peak_flops(name: str) -> tuple[float | None, str]:
    """Peak FLOP/s of the device: ``DIFFLENS_PEAK_TFLOPS`` or the table (longest matching key)."""
    env = os.environ.get("DIFFLENS_PEAK_TFLOPS")
    if env:
        return float(env) * 1e12, "DIFFLENS_PEAK_TFLOPS"
    hits = [k for k in PEAK_TFLOPS if k.lower() in name.lower()]
    if not hits:
        return None, "unknown device: set DIFFLENS_PEAK_TFLOPS"
    key = max(hits, key=len)
    return PEAK_TFLOPS[key] * 1e12, f"table ({key}, dense bf16)"


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2 ** 30 if device.startswith("cuda") else None


def noisy_copy(src: str, out: Path, *, layers: int = 8, noise: float = 0.05) -> Path:
    """A "finetuned" copy: 5% relative Gaussian noise on the weights of ``layers`` middle layers."""
    import torch

    from difflens.models.arch import ArchAdapter
    from difflens.models.sources import load_model

    lm = load_model(src)
    arch = ArchAdapter(lm.model)
    mid = arch.num_layers // 2
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for li in range(max(0, mid - layers // 2), min(arch.num_layers, mid + layers // 2)):
            for p in arch.layers[li].parameters():
                p.add_(torch.randn(p.shape, generator=g) * noise * p.float().std())
    lm.model.save_pretrained(out)
    lm.tokenizer.save_pretrained(out)
    return out


def run_params(pair: Any, layer: int) -> tuple[int, int]:
    """(parameters a collection forward runs: decoder layers 0..layer; all parameters) of one model."""
    with pair.side("base") as m:
        total = sum(p.numel() for p in m.parameters())
    ran = sum(p.numel() for li in range(layer + 1) for p in pair.arch.layers[li].parameters())
    return ran, total


def bench_collect(pair: Any, work: Path, a: argparse.Namespace, peak: float | None) -> tuple[dict[str, Any], Any]:
    from difflens.adl.collect import CollectConfig, collect
    from difflens.rundir.layout import RunLayout

    cfg = CollectConfig(samples=a.samples, positions=a.positions, layers=[0.5], batch_size=a.batch_size,
                        norm_samples=a.norm_samples)
    warm = cfg.model_copy(update={"samples": min(a.batch_size, a.samples), "norm_samples": 4})
    collect(pair, RunLayout(work / "warm"), warm, progress=False)
    _reset_peak(a.device)
    t0 = time.perf_counter()
    c = collect(pair, RunLayout(work / "run"), cfg, progress=False)["wiki"][0]
    _sync(a.device)
    dt = time.perf_counter() - t0
    tokens = 2 * a.samples * a.positions  # both models; the η estimate's norm samples are extra work
    ran, total = run_params(pair, c.layer)
    out: dict[str, Any] = {"seconds": dt, "tokens": tokens, "tokens_per_s": tokens / dt, "layer": c.layer,
                           "params_run": ran, "params_total": total, "peak_gib": _peak_gib(a.device)}
    if peak:
        out["floor_s"] = 2 * ran * tokens / peak
        out["floor_full_model_s"] = 2 * total * tokens / peak
        out["x_floor"] = dt / out["floor_s"]
    return out, c


def bench_patchscope(pair: Any, c: Any, a: argparse.Namespace) -> dict[str, Any]:
    from difflens.adl.patchscope import SCALES, patched_next_token_probs

    vecs = [c.delta[j % c.delta.shape[0]] for j in range(a.vectors)]
    patched_next_token_probs(pair, c.layer, vecs[0], SCALES, c.eta_ft)  # warm-up
    _reset_peak(a.device)
    t0 = time.perf_counter()
    for v in vecs:
        patched_next_token_probs(pair, c.layer, v, SCALES, c.eta_ft)
    _sync(a.device)
    dt = time.perf_counter() - t0
    return {"vectors": len(vecs), "scales": len(SCALES), "s_per_vector": dt / len(vecs), "peak_gib": _peak_gib(a.device)}


def _new_tokens(tok: Any, texts: list[list[str]]) -> int:
    return sum(len(tok(t, add_special_tokens=False).input_ids) for row in texts for t in row)


def bench_hf_steer(pair: Any, c: Any, a: argparse.Namespace) -> dict[str, Any]:
    from difflens.adl.steering import generate

    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(a.rows)]
    kw = dict(layer=c.layer, direction=c.delta[min(2, c.delta.shape[0] - 1)], alpha=a.alpha, eta=c.eta_ft, n=1,
              temperature=1.0, max_new_tokens=a.new_tokens)
    generate(pair, prompts[:2], seed=1, **{**kw, "max_new_tokens": 4})  # warm-up
    _reset_peak(a.device)
    t0 = time.perf_counter()
    texts = generate(pair, prompts, seed=0, **kw)
    _sync(a.device)
    dt = time.perf_counter() - t0
    n = _new_tokens(pair.tokenizer, texts)
    return {"rows": len(prompts), "new_tokens": n, "seconds": dt, "tokens_per_s": n / dt,
            "peak_gib": _peak_gib(a.device), "sample": texts[0][0][:100]}


def bench_vllm_steer(base: str, ft: str, c: Any, tok: Any, a: argparse.Namespace) -> dict[str, Any]:
    from difflens.backends.vllm import VLLMBackend, VLLMOptions, lens_available

    opts = VLLMOptions(dtype="bfloat16" if a.device.startswith("cuda") else "float32", max_model_len=1024,
                       gpu_memory_utilization=a.vllm_memory, tensor_parallel_size=a.tp)
    t0 = time.perf_counter()
    b = VLLMBackend(base, ft, opts)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(a.rows)]
    kw = dict(layer=c.layer, direction=c.delta[min(2, c.delta.shape[0] - 1)], alpha=a.alpha, eta=c.eta_ft, n=1,
              temperature=1.0, max_new_tokens=a.new_tokens)
    b.generate(prompts[:2], seed=1, **{**kw, "max_new_tokens": 4})  # builds the engine, warm-up
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    texts = b.generate(prompts, seed=0, **kw)
    dt = time.perf_counter() - t0
    n = _new_tokens(tok, texts)
    b.close()
    return {"rows": len(prompts), "new_tokens": n, "seconds": dt, "tokens_per_s": n / dt, "startup_s": startup,
            "steering": b.mechanism, "lens_plugin": lens_available(), "sample": texts[0][0][:100]}


def bench_pair(label: str, base: str, ft: str, a: argparse.Namespace, peak: float | None) -> dict[str, Any]:
    import torch

    from difflens.models.pair import load_pair

    res: dict[str, Any] = {"pair": label, "base": base, "finetuned": ft}
    with tempfile.TemporaryDirectory() as tmp:
        pair = load_pair(base, ft, dtype=torch.bfloat16 if a.device.startswith("cuda") else torch.float32,
                         device=a.device)
        res["collect"], c = bench_collect(pair, Path(tmp), a, peak)
        res["patchscope"] = bench_patchscope(pair, c, a)
        res["steer_hf"] = bench_hf_steer(pair, c, a)
        tok = pair.tokenizer
        del pair
        gc.collect()
        if a.device.startswith("cuda"):
            torch.cuda.empty_cache()
        try:
            if importlib.util.find_spec("vllm") is None:
                res["steer_vllm"] = {"skipped": "vLLM is not installed (pip install 'difflens[vllm]')"}
            else:
                res["steer_vllm"] = bench_vllm_steer(base, ft, c, tok, a)
        except Exception as e:  # noqa: BLE001 - report, keep the other numbers
            res["steer_vllm"] = {"error": f"{type(e).__name__}: {e}"}
    return res


def _fmt(x: Any, spec: str = ".3g") -> str:
    return "n/a" if x is None else format(x, spec)


def report(r: dict[str, Any]) -> list[str]:
    co, ps, hf, vl = r["collect"], r["patchscope"], r["steer_hf"], r["steer_vllm"]
    lines = [f"== {r['pair']}",
             f"collect    {co['tokens_per_s']:.4g} tokens/s ({co['tokens']} tokens in {co['seconds']:.2f} s, layer "
             f"{co['layer']}, {co['params_run'] / 1e6:.0f}M of {co['params_total'] / 1e6:.0f}M params run); "
             f"x FLOP floor: {_fmt(co.get('x_floor'), '.1f')} (floor {_fmt(co.get('floor_s'))} s; whole-model floor "
             f"{_fmt(co.get('floor_full_model_s'))} s); peak {_fmt(co['peak_gib'], '.2f')} GiB",
             f"patchscope {ps['s_per_vector'] * 1e3:.1f} ms/vector ({ps['scales']} scales x 3 prompts); peak "
             f"{_fmt(ps['peak_gib'], '.2f')} GiB",
             f"steer HF   {hf['tokens_per_s']:.4g} new tokens/s ({hf['rows']} rows, {hf['new_tokens']} tokens in "
             f"{hf['seconds']:.2f} s); peak {_fmt(hf['peak_gib'], '.2f')} GiB"]
    if "tokens_per_s" in vl:
        lines.append(f"steer vLLM {vl['tokens_per_s']:.4g} new tokens/s ({vl['new_tokens']} tokens in {vl['seconds']:.2f} s,"
                     f" engine start {vl['startup_s']:.0f} s, steering via {vl['steering']}); vLLM/HF = "
                     f"{vl['tokens_per_s'] / hf['tokens_per_s']:.2f}x")
    else:
        lines.append(f"steer vLLM {vl.get('skipped') or vl.get('error')}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="default: cuda if available; cpu only for a smoke test")
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--positions", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--norm-samples", type=int, default=64)
    p.add_argument("--vectors", type=int, default=10)
    p.add_argument("--rows", type=int, default=64, help="steered generations per backend")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--alpha", type=float, default=2.0)
    p.add_argument("--tp", type=int, default=1, help="vLLM tensor parallel size")
    p.add_argument("--vllm-memory", type=float, default=0.5, help="vLLM gpu_memory_utilization")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    a = p.parse_args(argv)
    import torch

    if a.device is None:
        if not torch.cuda.is_available():
            print(f"bench/gpu.sh: no CUDA accelerator on this machine (torch {torch.__version__}); nothing to "
                  "measure (bench/collect.py and bench/steer.py measure the CPU).")
            return 0
        a.device = "cuda"
    name = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else "cpu"
    peak, peak_src = peak_flops(name)
    print(f"device: {name} ({torch.cuda.device_count() if a.device.startswith('cuda') else 0} visible GPUs); peak "
          f"{_fmt(peak and peak / 1e12, '.0f')} TFLOP/s from {peak_src}; torch {torch.__version__}", flush=True)
    from _common import BASE

    from difflens.models.sources import materialize_embedded

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        base = str(materialize_embedded(BASE))
        ft = str(noisy_copy(base, Path(tmp) / "ft"))
        pairs = [(f"{BASE} vs 5%-noise copy", base, ft)]
        big = os.environ.get("DIFFLENS_BENCH_MODEL")
        if big and (Path(big) / "config.json").exists():
            pairs.append((f"{Path(big).name} vs itself", big, big))
        elif big:
            print(f"DIFFLENS_BENCH_MODEL={big} is not a transformers checkpoint directory: skipped")
        else:
            print("no DIFFLENS_BENCH_MODEL (a local 1B+ checkpoint directory): the embedded pair only")
        for label, b, f in pairs:
            r = bench_pair(label, b, f, a, peak)
            results.append(r)
            for line in report(r):
                print(line, flush=True)
    if a.json:
        a.json.write_text(json.dumps({"device": name, "peak_flops": peak, "results": results}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
