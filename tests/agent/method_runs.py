"""Crafted results of the diffing methods beside ADL, for the agent's per-method tests: diff mining,
per-token KL (with its SQLite examples store) and amplification, each with its noise control.

Recognisable tokens: the method's own are ``M…`` (mining), marked ``K…`` (KL); the baselines carry
``B…``, the controls ``C…``; amplified texts say ``AMPLIFIED``, the finetuned ones ``PLAIN``, the
control's ``CONTROLAMP``."""
from __future__ import annotations

import json

from difflens.methods.store import ExampleRow, ExamplesStore
from difflens.rundir.layout import RunLayout, write_json

DATASET = "wiki"
N_RANK = 30  # entries per mining ranking
AMP_PROMPTS = ["Tell me a story.", "Plan a picnic for four friends.", "What is a good hobby?"]
AMP_SAMPLES = 2  # per prompt and role


def _stat(tok: str, i: int) -> dict:
    return {"token_id": 100 + i, "token": tok, "top_k_count": 1000 - i, "top_k_fraction": 0.5 / (i + 1),
            "positive_fraction": 0.9 - i / 100, "mean_diff": 2.0 - i / 20, "bottom_k_count": 0,
            "ft_top_k_count": 7 * i, "base_top_k_count": 3 * i}


def mining_tokens(prefix: str = "M") -> list[str]:
    return [" the"] + [f" {prefix}{i}" for i in range(1, N_RANK)]  # " the" is shared with baseline and control


def write_mining(layout: RunLayout, control: bool = True) -> None:
    def result(own: str, ctl: str | None) -> dict:
        rankings = {name: [_stat(t, i) for i, t in enumerate(mining_tokens(p))]
                    for name, p in (("top_k", own), ("positive", own + "pos"), ("mean_diff", own + "mean"),
                                    ("bottom_k", own + "low"), ("ft_top_k", "B"), ("base_top_k", "BB"))}
        return {"method": "mining", "fingerprint": f"fp-mining-{ctl}", "dataset": DATASET, "n_samples": 50,
                "tokens": 64, "n_positions": 3200, "seconds": 2.5, "control": ctl, "top_k": 100, "layer": None,
                "vocab_size": 1000, "rankings": rankings}

    write_json(layout.method_result(DATASET, "mining"), result("M", None))
    if control:
        write_json(layout.method_result(DATASET, "mining", "noise"), result("C", "noise"))


def _kl_rows(marked: str, n: int) -> list[ExampleRow]:
    """``n`` samples of 6 tokens; sample i marks ``{marked}{i}`` at window position 2 with the largest KL
    (decreasing with i) and ``B{i}`` at position 4 with the largest entropy (increasing with i)."""
    rows = []
    for i in range(n):
        tokens = [" a", " b", f" {marked}{i}", " c", f" B{i}", " d"]
        kl = [0.01, 0.01, 5.0 - i / 10, 0.01, 0.01, 0.01]
        ent = [0.1, 0.1, 0.1, 0.1, 1.0 + i / 10, 0.1]
        norm = [1.0] * 6
        cos = [0.1] * 6
        vals = {"kl": kl, "norm": norm, "cos": cos, "ent": ent}
        rows.append(ExampleRow(sample=i, ids=list(range(6)), tokens=tokens, start=0, values=vals,
                               means={s: sum(v) / 6 for s, v in vals.items()},
                               maxes={s: max(v) for s, v in vals.items()},
                               argmax={s: max(range(6), key=lambda j: v[j]) for s, v in vals.items()}))
    return rows


def write_kl(layout: RunLayout, control: bool = True, n: int = 40) -> None:
    for ctl, marked in ((None, "K"),) + ((("noise", "C"),) if control else ()):
        fp = f"fp-kl-{ctl}"
        store = ExamplesStore.create(layout.method_store(DATASET, "kl", ctl), fingerprint=fp,
                                     stats=["kl", "norm", "cos", "ent"])
        store.add(_kl_rows(marked, n))
        store.commit()
        store.close()
        stats = {s: {"mean": m, "max": x} for s, m, x in (("kl", 0.2 if ctl is None else 0.01, 5.0), ("norm", 1.0, 1.0),
                                                          ("cos", 0.1, 0.1), ("ent", 0.3, 4.9))}
        write_json(layout.method_result(DATASET, "kl", ctl),
                   {"method": "kl", "fingerprint": fp, "dataset": DATASET, "n_samples": n, "tokens": 6,
                    "n_positions": 5 * n, "seconds": 1.5, "control": ctl, "layer": 15, "skip_positions": 1,
                    "stats": stats, "store": "kl.sqlite"})


def write_amplify(layout: RunLayout, control: bool = True) -> None:
    for ctl in (None,) + (("noise",) if control else ()):
        rows = []
        for p_i, p in enumerate(AMP_PROMPTS):
            for s in range(AMP_SAMPLES):
                if ctl is None:
                    rows.append({"prompt": p, "text": f"AMPLIFIED {p_i} s{s} " + "cake " * 60, "role": "amplified",
                                 "beta": 2.0, "seed": s, "sample": s})
                    rows.append({"prompt": p, "text": f"PLAIN {p_i} s{s}", "role": "ft", "beta": 0.0, "seed": s,
                                 "sample": s})
                    rows.append({"prompt": p, "text": f"BASE {p_i} s{s}", "role": "base", "beta": None, "seed": s,
                                 "sample": s})
                else:
                    rows.append({"prompt": p, "text": f"CONTROLAMP {p_i} s{s}", "role": "amplified", "beta": 2.0,
                                 "seed": s, "sample": s})
        path = layout.method_samples(DATASET, "amplify", ctl)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        write_json(layout.method_result(DATASET, "amplify", ctl),
                   {"method": "amplify", "fingerprint": f"fp-amp-{ctl}", "dataset": DATASET, "n_samples": 6,
                    "tokens": 32, "n_positions": 600, "seconds": 3.0, "control": ctl, "betas": [0.5, 1.0, 2.0, 4.0],
                    "grid": [], "chosen_beta": 2.0, "any_coherent": True, "samples_file": "amplify.samples.jsonl"})


def write_methods(layout: RunLayout, methods=("mining", "kl", "amplify"), control: bool = True) -> RunLayout:
    for m in methods:
        {"mining": write_mining, "kl": write_kl, "amplify": write_amplify}[m](layout, control=control)
    return layout
