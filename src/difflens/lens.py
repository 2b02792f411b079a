"""Logit lens and Patchscope on δ̄_j and the baselines h̄_base_j, h̄_ft_j (paper §3, App. C.1).

Logit lens: ``softmax(W_U · final_norm(±v))`` through the finetuned model's own final norm and
unembedding (Gemma softcapping included, via :mod:`difflens.arch`).

Patchscope: the finetuned model reads the identity prompts ``a -> a\\nb -> b\\nc -> c\\n?``; the
layer-ℓ output at the last token is replaced by ``λ · η_ft · v/‖v‖``. Tokens in the top-16384 of
all three prompts are kept and ranked by mean probability. All 30 scales × 3 prompts of one
vector run as one batched forward. A grader picks the scale (batches of 10, then a final) and the
coherent subset of its top-20 tokens.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from rich.progress import Progress

from .artifacts import (SOURCES, LogitLensEntry, LogitLensResult, PatchscopeEntry, PatchscopeResult,
                        PatchscopeScale, Source, TokenProb)
from .collect import Collected
from .graders import ScaleGrader, tournament
from .pair import ModelPair

IDENTITY_TRIPLES: tuple[tuple[str, str, str], ...] = (("man", "1135", "hello"), ("bear", "42", "blue"),
                                                     ("921", "target", "anna"))
SCALES: tuple[float, ...] = tuple([round(0.5 + 0.1 * i, 1) for i in range(16)] + [3.0, 4.0, 5.0, 10.0, 20.0]
                                  + [float(x) for x in range(40, 201, 20)])
INTERSECT_TOP = 16384
KEEP_TOP = 50


def identity_prompt(triple: Sequence[str]) -> str:
    return "".join(f"{t} -> {t}\n" for t in triple) + "?"


IDENTITY_PROMPTS: tuple[str, ...] = tuple(identity_prompt(t) for t in IDENTITY_TRIPLES)


def vectors_of(c: Collected, source: Source) -> torch.Tensor:
    return {"delta": c.delta, "base": c.base_mean, "ft": c.ft_mean}[source]


def _decode(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    return [tokenizer.decode([int(i)]) for i in ids]


def top_tokens(tokenizer: Any, probs: torch.Tensor, k: int) -> list[TokenProb]:
    p, idx = probs.topk(min(k, probs.shape[-1]))
    return [TokenProb(token=t, token_id=int(i), prob=float(q)) for t, i, q in zip(_decode(tokenizer, idx.tolist()),
                                                                                 idx.tolist(), p.tolist())]


@torch.no_grad()
def logit_lens(pair: ModelPair, c: Collected, positions: Sequence[int], *, k: int = 20) -> LogitLensResult:
    """Top tokens of the logit lens for +v and −v, v ∈ {δ̄_j, h̄_base_j, h̄_ft_j}."""
    entries = []
    with pair.ft():
        arch = pair.ft_arch
        for source in SOURCES:
            v = vectors_of(c, source)[list(positions)].to(pair.device)
            pos_probs = arch.unembed(v).softmax(-1).cpu()
            neg_probs = arch.unembed(-v).softmax(-1).cpu()
            for row, j in enumerate(positions):
                entries.append(LogitLensEntry(source=source, position=j,
                                              top_positive=top_tokens(pair.tokenizer, pos_probs[row], k),
                                              top_negative=top_tokens(pair.tokenizer, neg_probs[row], k)))
    return LogitLensResult(dataset=c.dataset, layer=c.layer, entries=entries)


def _encode_prompts(pair: ModelPair, prompts: Sequence[str]) -> list[list[int]]:
    from .arch import bos_prefix_ids

    bos = bos_prefix_ids(pair.tokenizer, pair.ft_arch)
    return [bos + list(pair.tokenizer(p, add_special_tokens=True).input_ids) for p in prompts]


@torch.no_grad()
def patched_next_token_probs(pair: ModelPair, layer: int, vector: torch.Tensor, scales: Sequence[float],
                             eta: float, prompts: Sequence[str] = IDENTITY_PROMPTS) -> torch.Tensor:
    """Next-token distributions [S, P, V] of the finetuned model with the last token's layer output
    replaced by ``scale · eta · v̂`` (one batched forward over all scales × prompts, right padding)."""
    enc = _encode_prompts(pair, prompts)
    S, P = len(scales), len(prompts)
    rows = [(s, p) for s in range(S) for p in range(P)]
    T = max(len(e) for e in enc)
    pad = pair.tokenizer.pad_token_id or 0
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    last = torch.zeros(len(rows), dtype=torch.long)
    for r, (_, p) in enumerate(rows):
        ids[r, :len(enc[p])] = torch.tensor(enc[p])
        mask[r, :len(enc[p])] = 1
        last[r] = len(enc[p]) - 1
    unit = vector.float() / (vector.float().norm() + 1e-12)
    lam = torch.tensor([scales[s] for s, _ in rows], dtype=torch.float32)
    dev = pair.device
    ids, mask, last = ids.to(dev), mask.to(dev), last.to(dev)
    rows_idx = torch.arange(len(rows), device=dev)

    def replace(h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        h[rows_idx, last] = (lam.to(dev)[:, None] * eta * unit.to(dev)[None, :]).to(h.dtype)
        return h

    with pair.ft() as model, pair.ft_arch.edit_layer(layer, replace):
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    final = logits[rows_idx, last].float()
    return final.softmax(-1).view(S, P, -1).cpu()


def intersect_rank(probs: torch.Tensor, top: int = INTERSECT_TOP, keep: int = KEEP_TOP) -> tuple[list[int], list[float]]:
    """Tokens in the top-``top`` of every prompt ([P, V] probs), ranked by mean probability."""
    P, V = probs.shape
    t = min(top, V)
    member = torch.ones(V, dtype=torch.bool)
    for p in range(P):
        in_top = torch.zeros(V, dtype=torch.bool)
        in_top[probs[p].topk(t).indices] = True
        member &= in_top
    mean = probs.mean(0)
    mean = torch.where(member, mean, torch.full_like(mean, -1.0))
    k = min(keep, int(member.sum()))
    vals, idx = mean.topk(k)
    return idx.tolist(), vals.tolist()


def patchscope_vector(pair: ModelPair, layer: int, vector: torch.Tensor, eta: float, grader: ScaleGrader, *,
                      source: Source, position: int, scales: Sequence[float] = SCALES) -> PatchscopeEntry:
    probs = patched_next_token_probs(pair, layer, vector, scales, eta)
    per_scale = []
    candidates: dict[float, list[str]] = {}
    for si, s in enumerate(scales):
        idx, vals = intersect_rank(probs[si])
        toks = _decode(pair.tokenizer, idx)
        per_scale.append(PatchscopeScale(scale=s, tokens=[TokenProb(token=t, token_id=i, prob=v)
                                                          for t, i, v in zip(toks, idx, vals)]))
        candidates[s] = toks[:20]
    chosen, selected, note = tournament(grader, candidates)
    return PatchscopeEntry(source=source, position=position, scales=per_scale, chosen_scale=chosen,
                           selected_tokens=list(selected), grader=grader.name, rationale=note)


def patchscope(pair: ModelPair, c: Collected, positions: Sequence[int], grader: ScaleGrader, *,
               sources: Sequence[Source] = SOURCES, progress: bool = True) -> PatchscopeResult:
    """Patchscope for every source × position, each at the grader's chosen scale."""
    entries = []
    jobs = [(s, j) for s in sources for j in positions]
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"patchscope layer {c.layer}", total=len(jobs))
        for source, j in jobs:
            v = vectors_of(c, source)[j]
            entries.append(patchscope_vector(pair, c.layer, v, c.eta_ft, grader, source=source, position=j))
            bar.advance(task)
    return PatchscopeResult(dataset=c.dataset, layer=c.layer, prompts=list(IDENTITY_PROMPTS), eta_ft=c.eta_ft,
                            entries=entries)
