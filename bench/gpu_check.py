"""GPU path check (CUDA, bf16) on a 1B-parameter Llama-shaped pair built from a config.

No hub weights are needed: the base model is random-init with the Llama-3.2-1B shape and the
"finetuned" model is a copy with small weight noise in some layers, so the numbers below measure
the *code paths* (device placement, dtypes, hooks, batching) and the numerics of mixed precision,
not what a real finetune reads like.

    python bench/gpu_check.py [--samples 2000] [--layers 16] [--noise 0.05]

Prints: collection throughput (fp32 and bf16), the relative deviation of bf16 δ̄ from fp32 δ̄ per
position (weights rounded to bf16 vs compute in bf16), Patchscope and steering on CUDA, and checks
(α = 0 steering equals unsteered greedy decoding; the patched forward carries the vector).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from conftest import WORDS, tiny_tokenizer  # noqa: E402
from difflens.adl.collect import CollectConfig, collect  # noqa: E402
from difflens.adl.patchscope import patched_next_token_probs  # noqa: E402
from difflens.adl.steering import encode_prompts_left, generate, steering_hook  # noqa: E402
from difflens.models.pair import ModelPair  # noqa: E402
from difflens.models.sources import LoadedModel, ModelSource  # noqa: E402
from difflens.rundir.layout import RunLayout  # noqa: E402


def build(layers: int, noise: float, dtype: torch.dtype, device: str, seed: int = 0):
    import transformers as T

    cfg = T.LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=layers,
                        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=2048,
                        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
                        pad_token_id=1, bos_token_id=2, eos_token_id=3)
    torch.manual_seed(seed)
    base = T.LlamaForCausalLM(cfg).to(torch.float32)
    ft = T.LlamaForCausalLM(cfg).to(torch.float32)
    ft.load_state_dict(base.state_dict())
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for i, layer in enumerate(ft.model.layers):
            if i % 2 == 0:  # half the layers change, by `noise` of each weight's scale
                for p in layer.parameters():
                    if p.ndim == 2:
                        p.add_(torch.randn(p.shape, generator=g) * noise * p.std())
    return base.to(device=device, dtype=dtype).eval(), ft.to(device=device, dtype=dtype).eval()


def pair_of(base, ft, tok) -> ModelPair:
    src_b = ModelSource("local", "random-llama-1b", "<memory>")
    src_f = ModelSource("local", "random-llama-1b-noised", "<memory>")
    return ModelPair(LoadedModel(base, tok, src_b, "base0"), LoadedModel(ft, tok, src_f, "ft0"))


def corpus(path: Path, n: int) -> Path:
    rng = random.Random(0)
    words = [w for w in WORDS if w.strip() and w != "\n"]
    with path.open("w") as f:
        for _ in range(n):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(12, 80)))}) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--noise", type=float, default=0.05)
    ap.add_argument("--out", default="/tmp/difflens-gpu-check")
    a = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device {dev}: {torch.cuda.get_device_name(0) if dev == 'cuda' else 'cpu'}; torch {torch.__version__}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = corpus(out / "corpus.jsonl", max(a.samples, 300))
    tok = tiny_tokenizer()
    report: dict = {"device": dev, "samples": a.samples, "layers": a.layers, "noise": a.noise}
    deltas = {}
    for label, dtype, weights_dtype in [("fp32", torch.float32, torch.float32),
                                        ("bf16 weights, fp32 compute", torch.float32, torch.bfloat16),
                                        ("bf16", torch.bfloat16, torch.bfloat16)]:
        base, ft = build(a.layers, a.noise, weights_dtype, dev)
        if dtype != weights_dtype:  # rounded to bf16, computed in fp32: isolates weight rounding
            base, ft = base.to(dtype), ft.to(dtype)
        pair = pair_of(base, ft, tok)
        n_params = sum(p.numel() for p in base.parameters())
        cfg = CollectConfig(datasets=[str(data)], samples=a.samples, layers=[0.5], batch_size=256, norm_samples=128)
        if dev == "cuda":
            torch.cuda.synchronize()
        t0 = time.time()
        res = collect(pair, RunLayout(out / label.replace(" ", "_").replace(",", "")), cfg, progress=False)
        if dev == "cuda":
            torch.cuda.synchronize()
        secs = time.time() - t0
        c = res[str(data)][0]
        deltas[label] = c.delta.double()
        report[label] = {"params": n_params, "collect_s": round(secs, 2), "samples_per_s": round(c.n / secs, 1),
                         "layer": c.layer, "eta_ft": c.eta_ft, "delta_norms": [round(x, 4) for x in c.delta.norm(dim=-1).tolist()]}
        print(f"{label}: {n_params / 1e9:.2f}B params, collect N={c.n} in {secs:.1f}s ({c.n / secs:.0f}/s), "
              f"layer {c.layer}, ‖δ̄_j‖ {report[label]['delta_norms']}")
        if label == "bf16":
            # Patchscope on CUDA: the patched forward carries the vector (λ=0 vs λ=2 differ; rows sum to 1)
            probs = patched_next_token_probs(pair, c.layer, c.delta[2], [0.0, 2.0], c.eta_ft)
            assert torch.allclose(probs.sum(-1), torch.ones_like(probs.sum(-1)), atol=1e-3)
            report["patchscope_changes_output"] = bool((probs[0] - probs[1]).abs().max() > 1e-4)
            # steering: α = 0 equals unsteered
            kw = dict(layer=c.layer, eta=c.eta_ft, n=2, temperature=1.0, max_new_tokens=12, seed=3)
            t0 = time.time()
            s0 = generate(pair, ["tell me a story", "give me some ideas"], direction=c.delta[2], alpha=0.0, **kw)
            un = generate(pair, ["tell me a story", "give me some ideas"], direction=None, alpha=0.0, **kw)
            report["steer_alpha0_equals_unsteered"] = s0 == un
            report["steer_s"] = round(time.time() - t0, 2)
            # the random model samples ids the tiny tokenizer cannot decode, so compare logits, not text
            ids, mask = encode_prompts_left(pair, ["tell me a story", "give me some ideas"])
            unit = c.delta[2].float() / c.delta[2].float().norm()
            with torch.no_grad(), pair.ft() as m:
                plain = m(input_ids=ids, attention_mask=mask).logits[:, -1].float()
                with steering_hook(pair, c.layer, 0.0 * c.eta_ft * unit, mask):
                    zero = m(input_ids=ids, attention_mask=mask).logits[:, -1].float()
                with steering_hook(pair, c.layer, 8.0 * c.eta_ft * unit, mask):
                    steered = m(input_ids=ids, attention_mask=mask).logits[:, -1].float()
            report["steer_alpha0_logits_equal"] = bool(torch.equal(plain, zero))
            report["steer_alpha8_logit_change"] = float((steered - plain).abs().max())
            print(f"patchscope changes output: {report['patchscope_changes_output']}; steering α=0 == unsteered: "
                  f"{s0 == un} (logits equal: {report['steer_alpha0_logits_equal']}); α=8 moves the last-token "
                  f"logits by up to {report['steer_alpha8_logit_change']:.3f}")
        del base, ft, pair
        if dev == "cuda":
            torch.cuda.empty_cache()
    ref = deltas["fp32"]
    for label in ("bf16 weights, fp32 compute", "bf16"):
        rel = ((deltas[label] - ref).norm(dim=-1) / ref.norm(dim=-1)).tolist()
        cos = torch.nn.functional.cosine_similarity(deltas[label], ref, dim=-1).tolist()
        report[label]["rel_dev_vs_fp32"] = [round(x, 4) for x in rel]
        report[label]["cos_vs_fp32"] = [round(x, 5) for x in cos]
        print(f"{label} vs fp32: relative deviation of δ̄_j {[f'{x:.1%}' for x in rel]}, cosine {[f'{x:.4f}' for x in cos]}")
    print("RESULT " + json.dumps(report))


if __name__ == "__main__":
    main()
