"""Steered sampling: the finetuned model's answers with ``α · η · δ̂_j`` added at layer ℓ (paper §3).

A hook adds a vector (one for all rows, or one per row) to layer ℓ's output at every non-pad
position of a left-padded batch (:func:`steering_hook`); rows are sampled on a KV cache by
:func:`difflens.models.decoding.sample_rows`, which drops finished rows and tells the hook which
rows are left. :func:`generate_steered` splits many rows into as few calls as the KV cache's
memory allows (:func:`rows_per_call`) and can skip calls an interrupted stage saved. The threshold
search and the steer stage (:mod:`difflens.adl.steering`) sample through these functions; they are
re-exported there.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

import torch

from ..models.arch import attention_heads
from ..models.decoding import sample_rows
from ..models.pair import ModelPair
from ..models.tokens import chat_prompt_ids, pad_id, pad_left
from .interventions import add as add_edit

__all__ = ["steering_hook", "encode_prompts_left", "steering_vectors", "generate_rows", "generate_vectors",
           "GenerationRequest", "rows_per_call", "stack_rows", "generate_steered", "generate_many", "generate"]


@contextlib.contextmanager
def steering_hook(pair: ModelPair, layer: int, add: torch.Tensor | None,
                  prompt_mask: torch.Tensor) -> Iterator[Callable[[torch.Tensor], None] | None]:
    """Add ``add`` to layer ``layer``'s output at every non-pad position.

    ``add`` is one vector [d] for every row, or one per batch row [B, d] (several α's in one
    batch). The prefill step sees the padded prompt (``prompt_mask`` [B, T]) and leaves pad
    positions untouched; later decode steps see only new, real tokens. Yields ``select(idx)``,
    which keeps the per-row vectors of the batch rows ``idx`` once a decode loop drops finished
    rows (:func:`difflens.models.decoding.sample_rows`); None when there is no hook.
    """
    if add is None:
        yield None
        return
    if add.dim() == 2:
        if add.shape[0] != prompt_mask.shape[0]:
            raise ValueError(f"per-row steering vectors {tuple(add.shape)} for a batch of {prompt_mask.shape[0]}")
        add = add[:, None, :]  # [B, 1, d]: broadcast over positions
    edit = [add_edit(add, prompt_mask)]
    rows = [add]

    def select(idx: torch.Tensor) -> None:
        if rows[0].dim() == 3:  # one vector per row: keep the running rows'
            rows[0] = rows[0][idx.to(rows[0].device)]
        edit[0] = add_edit(rows[0], None)  # the prefill (the only padded step) is over

    def prefill(idx: torch.Tensor) -> None:
        """The next forward is a prefill of batch rows ``idx`` only (a shared prefill)."""
        vec = rows[0][idx.to(rows[0].device)] if rows[0].dim() == 3 else rows[0]
        edit[0] = add_edit(vec, prompt_mask[idx.to(prompt_mask.device)])

    select.prefill = prefill  # type: ignore[attr-defined]
    with pair.ft_arch.edit_layer(layer, lambda h: edit[0](h)):
        yield select


def encode_prompts_left(pair: ModelPair, prompts: Sequence[str], side: str = "ft") -> tuple[torch.Tensor, torch.Tensor]:
    """Chat-formatted prompts as a left-padded batch (BOS policy of the architecture applied), on
    the ``side`` model's embedding device."""
    rows = [chat_prompt_ids(pair.tokenizer, pair.ft_arch, p) for p in prompts]
    return pad_left(rows, pad_id(pair.tokenizer), pair.input_device(side))


def steering_vectors(direction: torch.Tensor, alphas: Sequence[float], eta: float) -> torch.Tensor:
    """``α_b · η · v̂`` for every row ``b`` ([B, d], float32)."""
    unit = direction.float() / (direction.float().norm() + 1e-12)
    scale = torch.tensor([float(a) * eta for a in alphas], dtype=torch.float32, device=unit.device)
    return scale[:, None] * unit[None, :]


@torch.no_grad()
def generate_rows(pair: ModelPair, prompts: Sequence[str], alphas: Sequence[float] | None, *, layer: int,
                  direction: torch.Tensor | None, eta: float, temperature: float, max_new_tokens: int,
                  seed: int, side: str = "ft") -> list[str]:
    """One sample per row: row ``b`` answers ``prompts[b]`` steered by ``alphas[b]·η·v̂``, all rows in
    one generation call (None direction or alphas: unsteered). ``side="base"``: the base model,
    unsteered (the control for what the finetuned model says unprompted)."""
    if side == "base" and direction is not None:
        raise ValueError("steering applies to the finetuned model; the base side is generated unsteered")
    add = None
    if direction is not None and alphas is not None:
        if len(alphas) != len(prompts):
            raise ValueError(f"{len(alphas)} steering strengths for {len(prompts)} rows")
        add = steering_vectors(direction, alphas, eta)
    return generate_vectors(pair, prompts, add, layer=layer, temperature=temperature, max_new_tokens=max_new_tokens,
                            seed=seed, side=side)


@torch.no_grad()
def generate_vectors(pair: ModelPair, prompts: Sequence[str], add: torch.Tensor | None, *, layer: int,
                     temperature: float | Sequence[float], max_new_tokens: int, seed: int,
                     side: str = "ft") -> list[str]:
    """One sample per row, row ``b`` steered by ``add[b]`` ([B, d]; a zero row is unsteered, bit for
    bit; None: no hook), all rows in one batch on a KV cache, drawn from a generator seeded ``seed``
    (:func:`difflens.models.decoding.sample_rows`: inverse-CDF draws, finished rows dropped).
    ``temperature``: one for all rows, or one per row."""
    tok = pair.tokenizer
    if not isinstance(temperature, (int, float)):  # sample_rows checks one per row, before any forward
        temperature = torch.tensor([float(t) for t in temperature])
    ids, mask = encode_prompts_left(pair, prompts, side)
    with pair.side(side) as model, steering_hook(pair, layer, add, mask) as select:
        rows = sample_rows(model, ids, mask, tokenizer=tok, temperature=temperature, max_new_tokens=max_new_tokens,
                           seed=seed, on_select=select, same_prefill=prefill_groups(prompts, add),
                           on_prefill=getattr(select, "prefill", None))
    return tok.batch_decode(rows, skip_special_tokens=True)


def prefill_groups(prompts: Sequence[str], add: torch.Tensor | None) -> torch.Tensor:
    """A group id per row: rows with the same prompt and the same steering vector (the samples of one
    prompt at one α) share one prefill (:func:`difflens.models.decoding.sample_rows`)."""
    seen: dict[tuple[str, bytes], int] = {}
    vecs = add.detach().float().cpu().numpy() if add is not None and add.dim() == 2 else None
    return torch.tensor([seen.setdefault((p, vecs[b].tobytes() if vecs is not None else b""), len(seen))
                         for b, p in enumerate(prompts)], dtype=torch.long)


@dataclass
class GenerationRequest:
    """``n`` samples per prompt steered along ``direction`` at ``alpha`` (None direction: unsteered)."""

    prompts: Sequence[str]
    direction: torch.Tensor | None
    alpha: float
    n: int


def rows_per_call(pair: ModelPair, context: int, budget_bytes: int | None = None) -> int:
    """The most rows one generation call holds: the KV cache of ``context`` tokens per row within
    ``budget_bytes`` (None: 2 GiB on a CPU, 16 GiB on an accelerator)."""
    arch = pair.ft_arch
    cfg = arch.config
    _, heads, head_dim = attention_heads(cfg)
    dtype_bytes = next(pair.ft_lm.model.parameters()).element_size()
    per_row = 2 * arch.num_layers * heads * head_dim * dtype_bytes * max(1, context)
    dev = getattr(pair, "device", "cpu")
    budget = budget_bytes or ((2 << 30) if torch.device(dev).type == "cpu" else (16 << 30))
    return max(1, budget // per_row)


def stack_rows(vectors: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """Per-row steering vectors ([d] each; None: unsteered) as one [B, d] float32 batch, a zero row
    for each unsteered one; None when no row is steered (no hook at all)."""
    some = next((v for v in vectors if v is not None), None)
    if some is None:
        return None
    zero = torch.zeros_like(some, dtype=torch.float32)
    return torch.stack([v.float() if v is not None else zero for v in vectors])


def generate_steered(pair: ModelPair, prompts: Sequence[str], vectors: Sequence[torch.Tensor | None], *,
                     layer: int, temperature: float | Sequence[float], max_new_tokens: int, seed: int,
                     max_rows: int | None = None, done: Mapping[tuple[int, int], list[str]] | None = None,
                     on_call: Callable[[int, int, list[str]], None] | None = None) -> list[str]:
    """One sample per row, row ``b`` answering ``prompts[b]`` steered by ``vectors[b]`` ([d]; None:
    unsteered), in as few :func:`generate_vectors` calls as the KV cache's memory allows
    (:func:`rows_per_call`, or ``max_rows``), calls of even size, call ``c`` seeded ``seed + c``.

    ``done`` holds the texts of calls finished before, keyed ``(c, calls)`` (an interrupted stage
    resumes: those calls are not run again; a call saved under another split of the rows, e.g. on
    another device's memory budget, is run again); ``on_call(c, calls, texts)`` after each call that
    ran (the caller saves it). ``temperature``: one for all rows, or one per row."""
    if len(vectors) != len(prompts):
        raise ValueError(f"{len(vectors)} steering vectors for {len(prompts)} rows")
    if not isinstance(temperature, (int, float)) and len(temperature) != len(prompts):
        raise ValueError(f"{len(temperature)} temperatures for {len(prompts)} rows")
    if not prompts:
        return []
    longest = max(len(chat_prompt_ids(pair.tokenizer, pair.ft_arch, p)) for p in set(prompts))
    chunk = max_rows or rows_per_call(pair, longest + max_new_tokens)
    n_calls = math.ceil(len(prompts) / chunk)
    chunk = math.ceil(len(prompts) / n_calls)
    texts: list[str] = []
    for c in range(n_calls):
        part = vectors[c * chunk:(c + 1) * chunk]
        prev = (done or {}).get((c, n_calls))
        if prev is not None and len(prev) == len(part):
            texts += prev
            continue
        temp = temperature if isinstance(temperature, (int, float)) else temperature[c * chunk:(c + 1) * chunk]
        out = generate_vectors(pair, prompts[c * chunk:(c + 1) * chunk], stack_rows(part), layer=layer,
                               temperature=temp,
                               max_new_tokens=max_new_tokens, seed=seed + c)
        texts += out
        if on_call is not None:
            on_call(c, n_calls, out)
    return texts


def generate_many(pair: ModelPair, requests: Sequence[GenerationRequest], *, layer: int, eta: float,
                  temperature: float, max_new_tokens: int, seed: int, max_rows: int | None = None,
                  done: Mapping[tuple[int, int], list[str]] | None = None,
                  on_call: Callable[[int, int, list[str]], None] | None = None) -> list[list[list[str]]]:
    """Every request's samples (``[request][prompt][sample]``) in as few generation calls as the
    KV cache's memory allows (:func:`rows_per_call`): each row carries its own steering vector
    (zero for an unsteered request). Call ``c`` is seeded ``seed + c``; ``done`` / ``on_call`` as
    in :func:`generate_steered`."""
    prompts, vectors = request_rows(requests, eta)
    texts = generate_steered(pair, prompts, vectors, layer=layer, temperature=temperature,
                             max_new_tokens=max_new_tokens, seed=seed, max_rows=max_rows, done=done, on_call=on_call)
    return request_texts(requests, texts)


def request_rows(requests: Sequence[GenerationRequest], eta: float) -> tuple[list[str], list[torch.Tensor | None]]:
    """The rows of ``requests`` (each prompt ``n`` times, request by request) and each row's
    steering vector (None: unsteered)."""
    prompts: list[str] = []
    vectors: list[torch.Tensor | None] = []
    for r in requests:
        vec = None
        if r.direction is not None:
            vec = steering_vectors(r.direction, [r.alpha], eta)[0]
        prompts += [p for p in r.prompts for _ in range(r.n)]
        vectors += [vec] * (len(r.prompts) * r.n)
    return prompts, vectors


def request_texts(requests: Sequence[GenerationRequest], texts: Sequence[str]) -> list[list[list[str]]]:
    """The texts of :func:`request_rows`'s rows as ``[request][prompt][sample]``."""
    if len(texts) != sum(len(r.prompts) * r.n for r in requests):
        raise ValueError(f"{len(texts)} texts for {sum(len(r.prompts) * r.n for r in requests)} rows")
    out, i = [], 0
    for r in requests:
        per = []
        for _ in r.prompts:
            per.append(list(texts[i:i + r.n]))
            i += r.n
        out.append(per)
    return out


def generate(pair: ModelPair, prompts: Sequence[str], *, layer: int, direction: torch.Tensor | None, alpha: float,
             eta: float, n: int, temperature: float, max_new_tokens: int, seed: int,
             side: str = "ft") -> list[list[str]]:
    """``n`` samples per prompt from the finetuned model steered by α·η·v̂ (None: unsteered;
    ``side="base"``: the base model, unsteered)."""
    rows = [p for p in prompts for _ in range(n)]
    gen = generate_rows(pair, rows, [alpha] * len(rows), layer=layer, direction=direction, eta=eta,
                        temperature=temperature, max_new_tokens=max_new_tokens, seed=seed, side=side)
    return [gen[i * n:(i + 1) * n] for i in range(len(prompts))]
