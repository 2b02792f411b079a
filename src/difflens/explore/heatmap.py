"""Per-token heat maps of any text: where the finetune changes the model's predictions.

The text is tokenised under the model's BOS policy and read once by each model (the layers captured as
the diffing pass captures them, :meth:`~difflens.models.arch.ArchAdapter.capture`), and the statistics
come from the kl method's own per-token computation (:meth:`difflens.methods.kl.TokenKL.values` on a
one-row :class:`~difflens.methods.base.PairBatch`), so a token's values here are the values the method
stores for the same tokens: KL(P_ft ‖ P_base) in nats, ‖h_ft − h_base‖ and 1 − cos at layer ℓ, and the
finetuned model's entropy H(P_ft) (the baseline). Beside them, per position, the logit difference
l_ft − l_base of the token that actually comes next, and the tokens whose probability the finetune
raised and lowered most there (p_ft − p_base).

Position t's values are about the prediction made after reading token t (what comes next), as in the
kl method's examples store and the report's heat maps.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from ..methods.base import PairBatch, PassContext
from ..methods.driver import _decoder
from ..methods.kl import KLConfig, TokenKL
from ..models.tokens import encode

__all__ = ["token_heatmap", "pair_values"]


def pair_values(pair: Any, ids: list[int], layer: int) -> tuple[dict[str, torch.Tensor], PairBatch]:
    """The kl method's per-token values of one token row (stat → [T]) and the batch they were read from."""
    x = torch.tensor([ids], dtype=torch.long)
    arch = pair.arch
    layers = sorted({arch.num_layers - 1, int(layer)})
    hidden: dict[str, dict[int, torch.Tensor]] = {}
    with torch.no_grad():
        for side in ("base", "ft"):
            with pair.side(side) as model:
                hidden[side] = pair.arch_of(side).capture(model, x, layers)

    def unembed_of(side: str):
        def fn(h: torch.Tensor) -> torch.Tensor:
            with pair.side(side), torch.no_grad():
                return pair.arch_of(side).unembed(h)
        return fn

    batch = PairBatch(samples=torch.tensor([0]), ids=x, rows=[list(ids)], starts=[0], hidden=hidden,
                      unembed={s: unembed_of(s) for s in ("base", "ft")}, vocab_size=pair.vocab_size,
                      num_layers=arch.num_layers)
    method = TokenKL(KLConfig(layer=int(layer), skip_positions=0))
    method.prepare(PassContext(dataset="explore", tokens=len(ids), n_samples=1, vocab_size=pair.vocab_size,
                               num_layers=arch.num_layers, resolve_layer=arch.resolve_layer,
                               decode=_decoder(pair.tokenizer)))
    with torch.no_grad():
        vals = method.values(batch)
    return {k: v[0] for k, v in vals.items()}, batch


def token_heatmap(pair: Any, text: str, *, layer: int, top: int = 5, max_tokens: int = 1024) -> dict[str, Any]:
    """The heat map of ``text`` as JSON-ready data (see the module docstring): ``tokens`` (one decoded
    string per id), ``stats`` (``kl``, ``norm``, ``cos``, ``ent`` and ``logit_diff`` per position; the
    last position has no next token: None), ``next`` (the next token's text), ``raised`` / ``lowered``
    (per position the ``top`` tokens with ``p_ft``, ``p_base`` and their difference)."""
    t0 = time.perf_counter()
    tok = pair.tokenizer
    full = encode(tok, pair.arch, text)
    ids = full[:max_tokens]
    if not ids:
        raise ValueError("the text has no tokens")
    decode = _decoder(tok)
    vals, batch = pair_values(pair, ids, layer)
    lf = batch.logits("ft")[0]
    lb = batch.logits("base")[0].to(lf.device)
    T = len(ids)
    nxt = torch.tensor(ids[1:], dtype=torch.long, device=lf.device)
    ld = (lf[:-1].gather(1, nxt[:, None]) - lb[:-1].gather(1, nxt[:, None])).squeeze(1).tolist() if T > 1 else []
    raised: list[list[dict[str, Any]]] = []
    lowered: list[list[dict[str, Any]]] = []
    p_next: list[tuple[float, float] | None] = []
    k = max(0, min(int(top), lf.shape[-1]))
    for s in range(0, T, 64):  # [64, V] at a time
        pf = torch.softmax(lf[s:s + 64], dim=-1)
        pb = torch.softmax(lb[s:s + 64], dim=-1)
        dp = pf - pb
        up, up_i = dp.topk(k, dim=-1)
        down, down_i = (-dp).topk(k, dim=-1)
        shown = sorted(set(up_i.reshape(-1).tolist()) | set(down_i.reshape(-1).tolist()))
        name = dict(zip(shown, decode(shown)))
        for r in range(pf.shape[0]):
            raised.append([{"token": name[int(i)], "id": int(i), "dp": float(d), "p_ft": float(pf[r, i]),
                            "p_base": float(pb[r, i])} for d, i in zip(up[r].tolist(), up_i[r].tolist())])
            lowered.append([{"token": name[int(i)], "id": int(i), "dp": -float(d), "p_ft": float(pf[r, i]),
                             "p_base": float(pb[r, i])} for d, i in zip(down[r].tolist(), down_i[r].tolist())])
            t = s + r
            p_next.append((float(pf[r, ids[t + 1]]), float(pb[r, ids[t + 1]])) if t + 1 < T else None)
    tokens = decode(ids)
    stats: dict[str, list[float | None]] = {k2: [float(x) for x in v.tolist()] for k2, v in vals.items()}
    stats["logit_diff"] = [float(x) for x in ld] + [None]
    return {"ids": ids, "tokens": tokens, "layer": int(layer), "stats": stats,
            "next": [tokens[t + 1] if t + 1 < T else None for t in range(T)],
            "p_next": [None if p is None else {"p_ft": p[0], "p_base": p[1]} for p in p_next],
            "raised": raised, "lowered": lowered, "truncated": len(full) > len(ids), "n_tokens": T,
            "seconds": round(time.perf_counter() - t0, 4)}
