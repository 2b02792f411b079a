"""Logit lens on δ̄_j and the baselines h̄_base_j, h̄_ft_j (paper §3, App. C.1).

``softmax(W_U · final_norm(±v))`` through the finetuned model's own final norm and unembedding
(Gemma softcapping included, via :mod:`difflens.models.arch`), over the pair's shared
vocabulary (embedding rows beyond the tokenizer, or tokens only one side added, are left out).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..models.pair import ModelPair
from ..rundir.artifacts import SOURCES, LogitLensEntry, LogitLensResult, Source, TokenProb
from .collect import Collected

__all__ = ["logit_lens", "top_tokens", "decode_tokens"]


def decode_tokens(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each id decoded on its own (whitespace kept)."""
    return [tokenizer.decode([int(i)]) for i in ids]


def top_tokens(tokenizer: Any, probs: torch.Tensor, k: int) -> list[TokenProb]:
    p, idx = probs.topk(min(k, probs.shape[-1]))
    return [TokenProb(token=t, token_id=int(i), prob=float(q))
            for t, i, q in zip(decode_tokens(tokenizer, idx.tolist()), idx.tolist(), p.tolist())]


@torch.no_grad()
def logit_lens(pair: ModelPair, c: Collected, positions: Sequence[int], *, k: int = 20,
               sources: Sequence[Source] = (*SOURCES, "random")) -> LogitLensResult:
    """Top tokens of the logit lens for +v and −v, v ∈ {δ̄_j, h̄_base_j, h̄_ft_j} and the control
    ``random`` (a random vector of δ̄_j's norm)."""
    entries = []
    with pair.ft():
        arch = pair.ft_arch
        for source in sources:
            if source == "delta_via_base":
                raise ValueError("the logit lens reads through the finetuned model only")
            v = c.vectors(source)[list(positions)]  # unembed moves it to the norm's and W_U's devices
            pos_probs = pair.logits_vocab(arch.unembed(v)).softmax(-1).cpu()
            neg_probs = pair.logits_vocab(arch.unembed(-v)).softmax(-1).cpu()
            for row, j in enumerate(positions):
                entries.append(LogitLensEntry(source=source, position=j,
                                              top_positive=top_tokens(pair.tokenizer, pos_probs[row], k),
                                              top_negative=top_tokens(pair.tokenizer, neg_probs[row], k)))
    return LogitLensResult(dataset=c.dataset, layer=c.layer, entries=entries)
