"""Benchmark: logit-difference amplification against plain sampling from one model, same batch.

Amplified sampling (:func:`difflens.methods.amplify.amplified_generate` at β) steps base and
finetuned model together, one KV cache each; plain sampling is the finetuned model alone, timed two
ways: ``model.generate`` (what the steering stage samples with) and the same loop as amplification
with one model (``side="ft"``). Every run samples ``--tokens`` new tokens per row (no stop at the
end-of-sequence token, so all runs take the same steps); tokens/s counts rows × new tokens. The
issue's target: amplified tokens/s within 2.5× of plain sampling's.

The pair: the embedded SmolLM2-135M-Instruct against ``organism:cake_bake`` when that organism is
trained under $DIFFLENS_HOME, else against a copy of itself with small weight noise; ``--ft`` names
another finetuned model. ``--random-init`` builds both models from the embedded model's config with
random weights (a machine without the weights; speed does not depend on them).

    .venv/bin/python bench/amplify.py                                   # CPU, batch 8, 32 tokens
    .venv/bin/python bench/amplify.py --device cuda --batch 64 --tokens 128
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import BASE  # noqa: E402


def random_pair(config_dir: str, device: str, dtype: str):
    """Base and finetuned from ``config_dir``'s config and tokenizer, random weights (ft = base + noise)."""
    import copy

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from difflens.models.pair import ModelPair
    from difflens.models.sources import LoadedModel, ModelSource

    torch.manual_seed(0)
    dt = getattr(torch, dtype) if dtype in ("float32", "bfloat16", "float16") else torch.float32
    base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir)).to(device=device, dtype=dt).eval()
    ft = copy.deepcopy(base)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    tok = AutoTokenizer.from_pretrained(config_dir)
    src = ModelSource("local", "random-init", config_dir)
    return ModelPair(LoadedModel(base, tok, src, "random-base"), LoadedModel(ft, tok, src, "random-ft"),
                     precision=dtype)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8, help="rows per generation call")
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per row")
    ap.add_argument("--beta", type=float, default=2.0)
    ap.add_argument("--reps", type=int, default=3, help="timed rounds (the best of each run counts)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--ft", default=None, help="finetuned model (default: organism:cake_bake if trained, "
                                                "else the base with weight noise)")
    ap.add_argument("--random-init", metavar="DIR", default=None,
                    help="a directory with config.json and tokenizer files: random weights, no checkpoint needed")
    args = ap.parse_args()

    import torch

    from difflens.methods.amplify import STEERING_PROMPTS, amplified_generate, encode_prompts

    tmp = None
    if args.random_init:
        pair, ft = random_pair(args.random_init, args.device, args.dtype), "random init (ft = base + 1e-3 noise)"
    else:
        from difflens.models.pair import load_pair

        from methods import default_finetuned

        ft, tmp = default_finetuned(args.ft)
        pair = load_pair(BASE, ft, device=args.device, dtype=args.dtype)
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    prompts = [STEERING_PROMPTS[i % len(STEERING_PROMPTS)] for i in range(args.batch)]
    T = args.tokens

    def hf_plain() -> None:
        ids, mask = encode_prompts(pair, prompts, "ft")
        torch.manual_seed(0)
        with pair.side("ft") as m, torch.no_grad():
            out = m.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                             max_new_tokens=T, min_new_tokens=T, pad_token_id=pair.tokenizer.pad_token_id)
        assert out.shape[1] - ids.shape[1] == T

    def loop_plain() -> None:
        rows = amplified_generate(pair, prompts, side="ft", temperature=1.0, max_new_tokens=T, seed=0,
                                  stop_at_eos=False)
        assert all(len(r) == T for r in rows)

    def amplified() -> None:
        rows = amplified_generate(pair, prompts, args.beta, temperature=1.0, max_new_tokens=T, seed=0,
                                  stop_at_eos=False)
        assert all(len(r) == T for r in rows)

    runs = {"plain, model.generate": hf_plain, "plain, same loop (ft alone)": loop_plain,
            f"amplified β={args.beta:g} (base + ft)": amplified}
    for fn in runs.values():  # warm up (kernels, allocator)
        fn()
    best = {name: float("inf") for name in runs}
    for _ in range(args.reps):  # interleaved rounds: a shared machine's load hits every run alike
        for name, fn in runs.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - t0)
    dev = torch.cuda.get_device_name() if cuda else f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} threads"
    print(f"machine: {dev}, torch {torch.__version__}")
    print(f"pair: {BASE} vs {ft}; precision {pair.precision}; batch {args.batch} × {T} new tokens after "
          f"prompts padded to {encode_prompts(pair, prompts, 'ft')[0].shape[1]} tokens")
    plain = best["plain, model.generate"]
    print(f"{'':34}{'seconds':>9}{'tokens/s':>11}{'÷ generate':>12}")
    for name, s in best.items():
        print(f"{name:34}{s:>9.2f}{args.batch * T / s:>11.1f}{s / plain:>12.2f}")
    amp = best[f"amplified β={args.beta:g} (base + ft)"]
    print(f"amplified vs plain sampling: {amp / plain:.2f}× the time of model.generate, "
          f"{amp / best['plain, same loop (ft alone)']:.2f}× the same loop with one model (target ≤ 2.5×)")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
