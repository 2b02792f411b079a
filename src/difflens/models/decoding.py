"""Batched sampling on a KV cache: the decode loop the steering stage's generations run on.

``model.generate(do_sample=True)`` spends much of a CPU decode step outside the model (a
``torch.profiler`` profile of 128 steered rows × 32 new tokens of SmolLM2-135M on 2 cores):

- ``torch.multinomial`` draws one exponential variate per vocabulary entry and row, single-threaded:
  117 ms a step at 128 rows × 49,152 ids, 19 % of the wall time — more than the attention;
- a row that has finished keeps being computed (padded) until the longest row ends;

:func:`sample_rows` does the same sampling (softmax at temperature T over the model's logits, no
top-k / top-p, the model's end-of-sequence ids) with

- **inverse-CDF draws** (:func:`draw`): one uniform per row against the cumulative sum of the
  row's ``exp((logit - max) / T)``, computed in place in the logits, 2.5 ms a step at that size.
  Scaled by its total, the float32 sum is within 1.2e-7 of a float64 cumulative softmax (logits
  ``3·randn``, 49,152 ids; summing the normalised softmax instead was within 1.2e-6), so the
  tokens' distribution differs from the exact one by less than that in total variation;
- **finished rows dropped** from the batch, its KV cache (``Cache.batch_select_indices``) and every
  per-row edit (``on_select``) once an eighth of the batch has finished, so the work follows the
  tokens actually sampled;
- **keys and values written into room reserved for the whole sample** (:func:`growing_cache`)
  instead of concatenated: ``DynamicLayer.update`` copies a layer's whole cache at every step
  (``torch.cat``), 17 % of the wall time at 128 rows × 64 tokens, more for longer samples;
- **weights packed once per batch size** for the decode steps on a CPU (:mod:`difflens.models.packed`):
  MKL otherwise re-packs every weight on every call, about 20 % of the matmul time at 64–250 rows;
- **decode steps without transformers' forward** for Llama, Qwen2 and Qwen3 decoders
  (:mod:`difflens.models.decode_step`: fused q/k/v and gate/up products, one mask a step, the
  layers' forward hooks run on their outputs): 104 → 90 ms a step at 90 rows of SmolLM2-135M;
- draws from its own ``torch.Generator`` (seeded per call), never the global RNG, and keeps the
  tokens on the device until the end (on an accelerator it looks for finished rows every 8 steps:
  each look waits for the device).

Samples at a seed are other draws than ``generate``'s at that seed: the same distribution, other
random numbers (tests/models/test_decoding.py checks the draws against the model's softmax, and
greedy decoding against ``generate`` token for token while rows finish and leave the batch).
"""
from __future__ import annotations

import contextlib
import inspect
import os
from typing import Any, Callable, Iterator

import torch

from .arch import attention_heads, unwrap
from .cpu_kernels import decode_attention_kernel, kernel_fits
from .decode_step import additive_mask, decode_step
from .packed import PackedLinears

__all__ = ["eos_ids", "cache_kwarg", "draw", "growing_cache", "broadcast_cache", "DECODE_ATTENTION", "decode_attention",
           "decode_attention_on", "sample_rows"]

PRUNE_FRACTION = 1 / 8
"""Finished rows are dropped once they are this share of the running batch (a KV-cache copy each
time: dropping after every finished row would copy the cache once per row)."""


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """The end-of-sequence ids ``generate`` stops at: the model's generation config, else its config,
    else the tokenizer's."""
    inner = unwrap(model)
    for src in (getattr(inner, "generation_config", None), getattr(inner, "config", None)):
        eos = getattr(src, "eos_token_id", None)
        if eos is not None:
            return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
    return [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]


def cache_kwarg(model: Any) -> str | None:
    """The forward argument that takes a KV cache ("cache" in recent transformers, formerly
    "past_key_values"); None if the model takes neither."""
    for m in (model, getattr(model, "get_base_model", lambda: None)()):
        if m is None:
            continue
        try:
            params = inspect.signature(m.forward).parameters
        except (TypeError, ValueError):
            continue
        for key in ("cache", "past_key_values"):
            if key in params:
                return key
    return None


def draw(scores: torch.Tensor, temperature: float | torch.Tensor, generator: torch.Generator | None, *,
         inplace: bool = False) -> torch.Tensor:
    """One token per row of ``scores`` [B, V] from ``softmax(scores / temperature)`` (temperature 0:
    the argmax): a uniform per row against the float32 cumulative sum of ``exp((scores - max) /
    temperature)``, scaled by its total (first id whose sum exceeds it, so a zero-probability id is
    never drawn). ``inplace``: ``scores`` (float32) may be overwritten; the decode loop's own logits
    are, which saves a [B, V] tensor per pass: 11 ms a step against 26 ms at 256 rows × 49,152 ids
    (2 Xeon cores) for normalising, then summing, a copy. ``temperature`` may be a [B] tensor: a
    temperature per row, each above 0 (:func:`sample_rows` checks that once; here it would wait for
    an accelerator at every step)."""
    if isinstance(temperature, torch.Tensor):
        if temperature.shape != scores.shape[:1]:
            raise ValueError(f"{tuple(temperature.shape)} temperatures for {scores.shape[0]} rows")
        scale, greedy = temperature.to(device=scores.device, dtype=torch.float32)[:, None], False
    else:
        scale, greedy = temperature, temperature <= 0
    if scores.dtype != torch.float32:
        scores = scores.float()
    elif not inplace and not greedy:
        scores = scores.clone()
    if greedy:
        return scores.argmax(dim=-1)
    cdf = scores.sub_(scores.amax(dim=-1, keepdim=True)).div_(scale).exp_().cumsum_(dim=-1)
    u = torch.rand((scores.shape[0], 1), generator=generator, device=scores.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=scores.shape[-1] - 1)


def growing_cache(config: Any, room: int) -> Any:
    """A ``DynamicCache`` for ``config`` whose full-attention layers keep their keys and values in
    buffers of ``room`` positions (doubled when a step needs more) and hand the model views of the
    filled part: no copy of the cache per step. Sliding-window and other layer kinds stay as
    transformers makes them."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        def __init__(self) -> None:
            super().__init__()
            self.filled = 0
            self.kbuf: torch.Tensor | None = None
            self.vbuf: torch.Tensor | None = None

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
                   **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n, m = self.filled, key_states.shape[-2]
            if self.kbuf is None or n + m > self.kbuf.shape[-2]:
                cap = max(n + m, room, 2 * (self.kbuf.shape[-2] if self.kbuf is not None else 0))
                kb = key_states.new_empty((*key_states.shape[:-2], cap, key_states.shape[-1]))
                vb = value_states.new_empty((*value_states.shape[:-2], cap, value_states.shape[-1]))
                if n:
                    kb[..., :n, :] = self.kbuf[..., :n, :]
                    vb[..., :n, :] = self.vbuf[..., :n, :]
                self.kbuf, self.vbuf = kb, vb
            self.kbuf[..., n:n + m, :] = key_states
            self.vbuf[..., n:n + m, :] = value_states
            self.filled = n + m
            self.keys, self.values = self.kbuf[..., :self.filled, :], self.vbuf[..., :self.filled, :]
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            """Keep (or repeat) rows ``indices``: a buffer of the same room, only the filled part copied."""
            if self.kbuf is not None:
                n = self.filled
                kb = self.kbuf.new_empty((len(indices), *self.kbuf.shape[1:]))
                vb = self.vbuf.new_empty((len(indices), *self.vbuf.shape[1:]))
                idx = indices.to(self.kbuf.device)
                kb[..., :n, :] = self.kbuf[idx, :, :n]
                vb[..., :n, :] = self.vbuf[idx, :, :n]
                self.kbuf, self.vbuf = kb, vb
                self.keys, self.values = self.kbuf[..., :n, :], self.vbuf[..., :n, :]

    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def broadcast_cache(cache: Any, batch: int) -> Any:
    """A cache of ``batch`` rows that all continue the one-row prompt prefix in ``cache``, without
    copying it: each layer's keys and values are ``expand``-ed views of the prefix's (batch stride
    0), so the first update's concatenation is the only copy (``deepcopy`` +
    ``batch_repeat_interleave`` copy every layer twice more, the layers a forward skips included).
    ``cache`` itself is left as it was (updates replace a layer's tensors, never write into them).
    A cache without per-layer keys and values (another kind) is deep-copied and repeated instead."""
    import copy

    layers = getattr(cache, "layers", None)
    if not layers or not all(hasattr(layer, "keys") and hasattr(layer, "values") for layer in layers):
        past = copy.deepcopy(cache)
        past.batch_repeat_interleave(batch)
        return past
    out = copy.copy(cache)
    out.layers = []
    for layer in layers:
        new = copy.copy(layer)
        k, v = layer.keys, layer.values
        if isinstance(k, torch.Tensor) and k.dim() == 4 and k.shape[0] == 1:
            new.keys, new.values = k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)
        elif isinstance(k, torch.Tensor) and k.numel():
            raise ValueError(f"broadcast_cache needs a one-row cache, got keys of shape {tuple(k.shape)}")
        out.layers.append(new)
    return out


DECODE_ATTENTION = "difflens_sdpa"
"""The attention implementation :func:`decode_attention_on` gives a model during a decode loop."""

# keyword arguments an attention call may carry that change nothing here (the mask already holds
# the sliding window); any other with a value set sends the call to transformers' sdpa
_HARMLESS = frozenset({"sliding_window", "position_ids", "cache_position", "output_attentions", "use_cache"})


def decode_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' ``sdpa`` attention, except for a float32 CPU decode step (one query per row):
    there ``softmax(q·Kᵀ·scale + mask)·V`` as two batched matmuls over the key/value heads, each
    head's query group together (no ``repeat_kv``).

    ``scaled_dot_product_attention``'s CPU kernels are built for blocks of queries: at one query per
    row they read the KV cache at 7–18 GB/s (2 AMD Zen 5 cores, 64–128 rows × 100–200 positions of
    SmolLM2's 3 × 64-wide key/value heads), the matmuls at 10–15 GB/s in a decode loop. Softmax in
    float32 as sdpa's math path does; the values differ from the fused kernels' by float rounding.

    Inside :func:`decode_attention_on`, where the compiled kernel serves the model's heads
    (:mod:`difflens.models.cpu_kernels`: AVX-512, heads of 64 or 128 dims, up to 8 queries per
    key/value head), the step runs on it instead: one pass over each row's cache, 22–29 GB/s."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    fast = (query.shape[2] == 1 and query.device.type == "cpu" and query.dtype == torch.float32 and not dropout
            and key.shape[-1] == value.shape[-1] == query.shape[-1] and query.shape[1] % key.shape[1] == 0
            and (attention_mask is None or attention_mask.dim() == 4)
            and not any(v is not None and v is not False for k, v in kwargs.items() if k not in _HARMLESS))
    add = _additive_mask(attention_mask, query.shape[0], key.shape[2]) if fast else False
    if add is False:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    out = step_attention(query, key, value, add, query.shape[-1] ** -0.5 if scaling is None else scaling)
    return out.transpose(1, 2), None


def step_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, add: torch.Tensor | None,
                   scale: float) -> torch.Tensor:
    """``softmax(q·Kᵀ·scale + add)·V`` for one float32 query per row and head on a CPU: ``query``
    [B, heads, 1, D], ``key`` / ``value`` [B, kv heads, L, D] (heads a multiple of kv heads),
    ``add`` an additive mask [B or 1, L] (None or empty: none). Returns [B, heads, 1, D].

    On the compiled kernel inside :func:`decode_attention_on` where it serves these heads, else as
    two batched matmuls over the key/value heads, each head's query group together (no
    ``repeat_kv``); softmax in float32."""
    b, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    if add is not None and not add.numel():
        add = None
    kernel = _KERNELS[-1] if _KERNELS else None
    if (kernel is not None and kernel_fits(dim, heads // kv_heads) and key.stride(-1) == value.stride(-1) == 1
            and key.dtype == value.dtype == torch.float32):
        return kernel(query, key, value, torch.empty(0) if add is None else add, scale)
    q = query.reshape(b, kv_heads, heads // kv_heads, dim)  # a key/value head's query group as rows
    scores = torch.matmul(q, key.transpose(-1, -2))  # [b, kv_heads, group, length]
    scores.mul_(scale)
    if add is not None:
        scores.add_(add[:, None, None, :])
    out = torch.matmul(torch.softmax(scores, dim=-1), value)  # [b, kv_heads, group, dim]
    return out.reshape(b, heads, 1, dim)


_KERNELS: list[Callable[..., torch.Tensor]] = []  # the compiled kernel, inside decode_attention_on (a stack)


def _additive_mask(attention_mask: torch.Tensor | None, batch: int, length: int) -> torch.Tensor | bool:
    """This step's row of a 4-D attention mask as the kernel's additive float32 [batch or 1, length]
    (an empty tensor for no mask; False where the mask has another shape)."""
    if attention_mask is None:
        return torch.empty(0)
    m = attention_mask[..., -1, :length]  # [b or 1, 1, length]
    if m.dim() != 3 or m.shape[1] != 1 or m.shape[0] not in (1, batch) or m.shape[-1] != length:
        return False
    m = m[:, 0]
    return additive_mask(m) if m.dtype == torch.bool else m.float()


@contextlib.contextmanager
def decode_attention_on(model: torch.nn.Module) -> Iterator[bool]:
    """Inside, a model that attends with ``sdpa`` attends with :func:`decode_attention` (registered
    with transformers' attention and mask interfaces as :data:`DECODE_ATTENTION`; the mask is sdpa's),
    on the compiled kernel where it serves a float32 CPU model's heads (built on first use:
    :func:`~difflens.models.cpu_kernels.decode_attention_kernel`). Yields whether it did; other
    models, and ``DIFFLENS_DECODE_ATTENTION=0``, are left as they are."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    cfg = getattr(unwrap(model), "config", None)
    text = cfg.get_text_config(decoder=True) if cfg is not None and hasattr(cfg, "get_text_config") else cfg
    if text is None or getattr(text, "_attn_implementation", None) != "sdpa" \
            or os.environ.get("DIFFLENS_DECODE_ATTENTION", "1") == "0":
        yield False
        return
    AttentionInterface.register(DECODE_ATTENTION, decode_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(DECODE_ATTENTION, sdpa_mask)
    text._attn_implementation = DECODE_ATTENTION
    heads, kv, head_dim = attention_heads(text)
    param = next(iter(model.parameters()), None)
    kernel = None
    if (heads and kv and heads % kv == 0 and kernel_fits(head_dim, heads // kv) and param is not None
            and param.device.type == "cpu" and param.dtype == torch.float32):
        kernel = decode_attention_kernel()
    if kernel is not None:
        _KERNELS.append(kernel)
    try:
        yield True
    finally:
        text._attn_implementation = "sdpa"
        if kernel is not None:
            _KERNELS.pop()


@torch.no_grad()
def sample_rows(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, *, tokenizer: Any,
                temperature: float | torch.Tensor, max_new_tokens: int, seed: int,
                on_select: Callable[[torch.Tensor], None] | None = None,
                prune_fraction: float | None = None, same_prefill: torch.Tensor | None = None,
                on_prefill: Callable[[torch.Tensor], None] | None = None,
                packed: bool | None = None) -> list[list[int]]:
    """One sample per row of the left-padded batch ``ids`` / ``mask`` ([B, T]): each row's new token
    ids, up to and including its end-of-sequence id.

    The positions are the ones ``generate`` gives a left-padded batch; the logits are the model's
    last-position logits (``logits_to_keep=1`` where the model takes it). ``on_select(idx)`` is
    called with the running rows' indices (into the current batch) whenever finished rows are
    dropped, so a per-row edit (a steering vector per row) can follow; ``prune_fraction`` (default
    :data:`PRUNE_FRACTION`) is the share of finished rows that triggers it.

    ``same_prefill`` ([B] ints): rows with equal values have the same prompt and the same edit (the
    samples of one prompt at one steering vector). Their prompt runs once: the prefill computes one
    row per value (``on_prefill(idx)`` is called first with those rows' indices, so a per-row edit
    can follow, then ``on_select(all rows)`` after), its KV cache and last logits are repeated to
    every row of the group, and the rows sample apart from the first new token on.

    ``temperature``: one for every row, or a [B] tensor of one per row (rows of two jobs in one
    batch, e.g. final generations at T=1.1 riding a search round at T=1.2).

    ``packed``: run the decode steps' linear layers from MKL-packed weights
    (:class:`~difflens.models.packed.PackedLinears`; None: where available, unless
    ``DIFFLENS_PACKED=0``). Products equal the unpacked ones or differ by float rounding.
    """
    prune_fraction = PRUNE_FRACTION if prune_fraction is None else prune_fraction
    B = ids.shape[0]
    if B == 0 or max_new_tokens <= 0:
        return [[] for _ in range(B)]
    if same_prefill is not None and len(same_prefill) != B:
        raise ValueError(f"same_prefill has {len(same_prefill)} entries for a batch of {B}")
    dev = ids.device
    inner = unwrap(model)
    key = cache_kwarg(model)
    kw: dict[str, Any] = {}
    cache = None
    if key is not None:
        cache = growing_cache(inner.config.get_text_config(decoder=True), ids.shape[1] + max_new_tokens)
        kw[key] = cache
    if "logits_to_keep" in inspect.signature(inner.forward).parameters:
        kw["logits_to_keep"] = 1
    eos = eos_ids(model, tokenizer)
    eos_t = torch.tensor(eos, dtype=torch.long, device=dev)
    gen: torch.Generator | None = None  # on the logits' device (the last one of a split model)
    pos = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    # each step's (running rows, their tokens), kept on the device: read back once at the end
    record: list[tuple[torch.Tensor, torch.Tensor]] = []
    alive = torch.arange(B, device=dev)  # original row of each running batch row
    temps: float | torch.Tensor = temperature  # per running row when a tensor
    if isinstance(temperature, torch.Tensor):
        if temperature.shape != (B,):
            raise ValueError(f"{tuple(temperature.shape)} temperatures for a batch of {B} rows")
        if not bool((temperature > 0).all()):
            raise ValueError("per-row temperatures must all be above 0 (0, greedy, is one temperature for all rows)")
        temps = temperature.to(device=dev, dtype=torch.float32)
    inp, att = ids, mask
    first_rows = inverse = None  # a shared prefill: the rows it runs, and each row's source among them
    if same_prefill is not None and key is not None:
        _, inverse = torch.unique(torch.as_tensor(same_prefill, device=dev), return_inverse=True)
        first_rows = torch.full((int(inverse.max()) + 1,), B, dtype=torch.long, device=dev).scatter_reduce_(
            0, inverse, torch.arange(B, device=dev), reduce="amin")  # each group's first row
        if len(first_rows) == B:
            first_rows = inverse = None
        elif on_select is not None and on_prefill is None:
            raise ValueError("a shared prefill with a per-row edit needs on_prefill to tell the edit its rows")
    finished = torch.zeros(B, dtype=torch.bool, device=dev)
    check_every = 1 if dev.type == "cpu" else 8  # on an accelerator a check syncs: every 8 steps
    # only decode steps on a cache use it; PackedLinears itself leaves a model off the CPU alone
    packer = PackedLinears(model, enabled=packed if key is not None else False)
    # the decode steps without transformers' forward, where the model is one it runs (decode_step.py)
    step = decode_step(model, cache) if cache is not None else None
    with packer, decode_attention_on(model), (step.packed(packed) if step is not None else contextlib.nullcontext()):
        for t in range(max_new_tokens):
            if key is None:  # no cache: the whole sequence every step
                out = model(input_ids=inp, attention_mask=att, position_ids=pos, **kw)
            elif t == 0 and first_rows is not None:  # one prefill per group, then every row from its cache
                if on_prefill is not None:
                    on_prefill(first_rows)
                out = model(input_ids=ids[first_rows], attention_mask=mask[first_rows], position_ids=pos[first_rows],
                            use_cache=True, **kw)
                cache.batch_select_indices(inverse)
                if on_select is not None:
                    on_select(torch.arange(B, device=dev))
                out.logits = out.logits[inverse.to(out.logits.device)]
            elif t and step is not None:  # a decode step: the weights packed for this many rows (repacked after a drop)
                packer.pack(inp.shape[0])
                step.pack(inp.shape[0])
                out = None
                logits = step(inp[:, -1:], additive_mask(att), pos[:, -1:], cache, attend=step_attention)
            else:
                if t:
                    packer.pack(inp.shape[0])
                out = model(input_ids=inp if t == 0 else inp[:, -1:], attention_mask=att,
                            position_ids=pos if t == 0 else pos[:, -1:], use_cache=True, **kw)
            if out is not None:
                logits = out.logits[:, -1]
            if gen is None:
                gen = torch.Generator(device=logits.device).manual_seed(int(seed))
            nxt = draw(logits, temps, gen, inplace=True).to(dev)  # draw moves temps to the logits' device
            record.append((alive, nxt))
            if eos:
                finished |= torch.isin(nxt, eos_t)
            if t + 1 == max_new_tokens:
                break
            if eos and (t + 1) % check_every == 0:
                n_done = int(finished.sum())
                if n_done == finished.numel():
                    break
                if n_done and n_done >= prune_fraction * finished.numel():
                    keep = (~finished).nonzero().squeeze(1)
                    if cache is not None:
                        cache.batch_select_indices(keep)
                    alive, nxt, att, pos, inp = alive[keep], nxt[keep], att[keep], pos[keep], inp[keep]
                    if isinstance(temps, torch.Tensor):
                        temps = temps[keep]
                    finished = finished[keep]
                    if on_select is not None:
                        on_select(keep)
            att = torch.cat([att, att.new_ones((att.shape[0], 1))], dim=-1)
            pos = torch.cat([pos, pos[:, -1:] + 1], dim=-1)
            inp = torch.cat([inp, nxt[:, None].to(inp.dtype)], dim=-1)
    rows: list[list[int]] = [[] for _ in range(B)]
    who = torch.cat([a for a, _ in record]).tolist()
    what = torch.cat([x for _, x in record]).tolist()
    for r, x in zip(who, what):
        rows[r].append(x)
    if eos:  # a finished row that kept running (not yet dropped) sampled past its end: cut there
        stop = set(eos)
        rows = [r[:next((i + 1 for i, x in enumerate(r) if x in stop), len(r))] for r in rows]
    return rows
