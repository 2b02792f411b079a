"""Patchscope on δ̄_j and the baselines h̄_base_j, h̄_ft_j (paper §3, App. C.1).

The finetuned model reads the identity prompts ``a -> a\nb -> b\nc -> c\n?``; the layer-ℓ output
at the last token is replaced by ``λ · η_ft · v/‖v‖``. Tokens in the top-16384 of all three
prompts are kept and ranked by mean probability. Each reading model runs each prompt's prefix
once; every vector × scale then runs only the patched last token, above ℓ, on the prefix's KV cache
(:func:`patched_probs_many`; the lists equal those of a whole patched forward per row). A grader picks the scale (batches of 10, then a final) and the coherent
subset of its top-20 tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from rich.progress import Progress

from ..graders.scale import ScaleContext, ScaleGrader, SpecificScaleGrader, tournament
from ..models.pair import ModelPair
from ..models.tokens import encode, pad_id, pad_right
from ..rundir.artifacts import CONTROLS, SOURCES, PatchscopeEntry, PatchscopeResult, PatchscopeScale, Source, TokenProb
from ..models.decoding import broadcast_cache, cache_kwarg as _cache_kwarg
from .collect import Collected
from .interventions import replace_rows
from .logit_lens import decode_tokens

IDENTITY_TRIPLES: tuple[tuple[str, str, str], ...] = (("man", "1135", "hello"), ("bear", "42", "blue"),
                                                     ("921", "target", "anna"))
SCALES: tuple[float, ...] = tuple([round(0.5 + 0.1 * i, 1) for i in range(16)] + [3.0, 4.0, 5.0, 10.0, 20.0]
                                  + [float(x) for x in range(40, 201, 20)])
INTERSECT_TOP = 16384
KEEP_TOP = 50
GRADED_TOP = 20  # the grader sees each scale's top-20 (paper App. C.1)
# the controls a sweep is graded against (h̄_base through the finetuned model is shown, not graded against)
GRADING_CONTROLS: tuple[Source, ...] = ("delta_via_base", "random")
# which model reads each source, and whose norm scales it (the authors' auto_patch_scope: δ̄ and h̄_ft
# into the finetuned model, h̄_base into the BASE model, all at the finetuned model's norm η_ft)
READERS: dict[str, tuple[str, str]] = {"delta": ("ft", "eta_ft"), "ft": ("ft", "eta_ft"), "base": ("base", "eta_ft"),
                                       "random": ("ft", "eta_ft"), "base_via_ft": ("ft", "eta_ft"),
                                       "delta_via_base": ("base", "eta_base")}
_PROFILER = SpecificScaleGrader()  # every entry's per-scale specificity, whichever grader chose


def identity_prompt(triple: Sequence[str]) -> str:
    return "".join(f"{t} -> {t}\n" for t in triple) + "?"


IDENTITY_PROMPTS: tuple[str, ...] = tuple(identity_prompt(t) for t in IDENTITY_TRIPLES)


def _encode_prompts(pair: ModelPair, prompts: Sequence[str]) -> list[list[int]]:
    return [encode(pair.tokenizer, pair.ft_arch, p) for p in prompts]


@dataclass
class Prefixes:
    """Each identity prompt's prefix (every token but the last) run once through one reading model:
    its KV cache, and the dtype and device of the layer outputs (what a patched value must be)."""

    side: str
    layer: int
    enc: list[list[int]]
    caches: list[Any]  # per prompt: the prefix's cache (None for a one-token prompt)
    cache_key: str | None  # the forward argument that takes a cache (None: the model takes none)
    dtype: torch.dtype
    device: torch.device


@torch.no_grad()
def prompt_prefixes(pair: ModelPair, layer: int, prompts: Sequence[str] = IDENTITY_PROMPTS, *,
                    side: str = "ft") -> Prefixes:
    """The prompts' prefixes through ``side``'s model once (:class:`Prefixes`)."""
    enc = _encode_prompts(pair, prompts)
    arch = pair.arch_of(side)
    seen: dict[str, torch.Tensor] = {}

    def read(h: torch.Tensor) -> None:  # also tells restart_after how the layer shapes its output
        seen["h"] = h

    caches: list[Any] = []
    with pair.side(side) as model, arch.edit_layer(layer, read):
        key = _cache_kwarg(model)
        for ids in enc:
            x = torch.tensor([ids[:-1] if len(ids) > 1 and key else ids], device=pair.input_device(side))
            out = model(input_ids=x, use_cache=key is not None)
            cache = (getattr(out, key, None) or getattr(out, "past_key_values", None)) if key else None
            caches.append(cache if len(ids) > 1 else None)
    h = seen["h"]
    return Prefixes(side, layer, enc, caches, key, h.dtype, h.device)


@torch.no_grad()
def _patched_last(pair: ModelPair, pre: Prefixes, p: int, values: torch.Tensor,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token probabilities [B, V] of prompt ``p`` with its last token's layer output set to
    each row of ``values`` [B, d]: only that token runs, above the layer, on the prefix's cache.
    ``out`` (a CPU float32 [B, V] tensor) receives them instead of a new tensor."""
    B = values.shape[0]
    ids = pre.enc[p]
    arch = pair.arch_of(pre.side)
    dev = pair.input_device(pre.side)
    if pre.caches[p] is None and len(ids) > 1:  # a model without a KV cache: the whole prompt per row
        x = torch.tensor([ids] * B, dtype=torch.long, device=dev)
        last = torch.full((B,), len(ids) - 1, dtype=torch.long)
        with pair.side(pre.side) as model, arch.edit_layer(pre.layer, replace_rows(last, values)):
            logits = model(input_ids=x, use_cache=False).logits
        return _softmax_into(pair.logits_vocab(logits[:, -1]), out)
    x = torch.full((B, 1), ids[-1], dtype=torch.long, device=dev)
    mask = torch.ones(B, len(ids), dtype=torch.long, device=dev)
    cache = {}
    if pre.caches[p] is not None:
        # every row continues the one shared prefix: views of it, copied once by the first update
        cache = {pre.cache_key: broadcast_cache(pre.caches[p], B)}
    hidden = values.to(device=pre.device, dtype=pre.dtype)[:, None, :]
    with pair.side(pre.side) as model, arch.restart_after(pre.layer, hidden):
        logits = model(input_ids=x, attention_mask=mask, use_cache=bool(cache), **cache).logits
    return _softmax_into(pair.logits_vocab(logits[:, -1]), out)


def _softmax_into(logits: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """softmax(logits) in float32 on the CPU, written into ``out`` when given (no concatenation of
    the row chunks afterwards: each holds rows × vocabulary floats)."""
    logits = logits.float()
    if out is None:
        return logits.softmax(-1).cpu()
    if logits.device == out.device:
        return torch.softmax(logits, -1, out=out)
    out.copy_(logits.softmax(-1))
    return out


def _units(vectors: torch.Tensor) -> torch.Tensor:
    return torch.stack([v.float() / (v.float().norm() + 1e-12) for v in vectors]).cpu()


# rows (vector × scale) of one prompt per forward: one token each, so the logits [rows, V] and the
# repeated prefix cache are what a call holds
ROWS_PER_CALL = 256


@torch.no_grad()
def patched_probs_many(pair: ModelPair, layer: int, vectors: torch.Tensor, scales: Sequence[float],
                       etas: Sequence[float], prompts: Sequence[str] = IDENTITY_PROMPTS, *, side: str = "ft",
                       prefixes: Prefixes | None = None, rows_per_call: int = ROWS_PER_CALL) -> torch.Tensor:
    """Next-token distributions [n, S, P, V] of ``side``'s model with the last token's layer output
    replaced by ``scale · eta_i · v̂_i`` for every vector ``i`` of ``vectors`` [n, d] and scale.

    Each prompt's prefix runs once (``prefixes``, from :func:`prompt_prefixes`, or computed here);
    every (vector, scale) row then runs only the patched last token, from the layer above ``layer``
    (:meth:`~difflens.models.arch.ArchAdapter.restart_after`: the layers up to it are overwritten
    at that token anyway) on the prefix's KV cache, with logits at that one position. The same
    distributions as a whole patched forward per row, up to float rounding."""
    n, S = vectors.shape[0], len(scales)
    if len(etas) != n:
        raise ValueError(f"{len(etas)} norms for {n} vectors")
    pre = prefixes if prefixes is not None else prompt_prefixes(pair, layer, prompts, side=side)
    if (pre.side, pre.layer) != (side, layer) or len(pre.enc) != len(prompts):
        raise ValueError("the prefixes were computed for another side, layer or prompt set")
    lam = torch.tensor([float(s) for s in scales], dtype=torch.float32)
    eta = torch.tensor([float(e) for e in etas], dtype=torch.float32)
    values = ((lam[None, :] * eta[:, None])[:, :, None] * _units(vectors)[:, None, :]).reshape(n * S, -1)
    P = len(pre.enc)
    # [P, n·S, V] (V: the shared vocabulary, what logits_vocab keeps), each chunk's rows one contiguous block
    probs = torch.empty((P, n * S, int(pair.vocab_size)), dtype=torch.float32)
    for p in range(P):
        for r in range(0, n * S, rows_per_call):
            _patched_last(pair, pre, p, values[r:r + rows_per_call], out=probs[p, r:r + rows_per_call])
    return probs.view(P, n, S, -1).permute(1, 2, 0, 3)  # [n, S, P, V], a view


def patched_next_token_probs(pair: ModelPair, layer: int, vector: torch.Tensor, scales: Sequence[float],
                             eta: float, prompts: Sequence[str] = IDENTITY_PROMPTS, *, side: str = "ft") -> torch.Tensor:
    """Next-token distributions [S, P, V] of the finetuned (``side="ft"``) or base model with the last
    token's layer output replaced by ``scale · eta · v̂`` (:func:`patched_probs_many` of one vector).
    V is the pair's shared vocabulary (:attr:`ModelPair.vocab_size`)."""
    return patched_probs_many(pair, layer, vector[None], scales, [eta], prompts, side=side)[0]


def intersect_rank(probs: torch.Tensor, top: int = INTERSECT_TOP, keep: int = KEEP_TOP) -> tuple[list[int], list[float]]:
    """Tokens in the top-``top`` of every prompt ([P, V] probs), ranked by mean probability."""
    P, V = probs.shape
    t = min(top, V)
    # membership only: the unsorted top-t is the same set (one selection; sorting it is 2/3 of the cost)
    in_top = torch.zeros(P, V, dtype=torch.bool)
    in_top.scatter_(1, probs.topk(t, dim=-1, sorted=False).indices, True)
    member = in_top.all(0)
    mean = probs.mean(0)
    mean = torch.where(member, mean, torch.full_like(mean, -1.0))
    k = min(keep, int(member.sum()))
    vals, idx = mean.topk(k)
    return idx.tolist(), vals.tolist()


@torch.no_grad()
def unpatched_tokens(pair: ModelPair, prompts: Sequence[str] = IDENTITY_PROMPTS, *, keep: int = KEEP_TOP
                     ) -> list[TokenProb]:
    """The control with nothing patched: the finetuned model's own next tokens on the identity
    prompts, intersected and ranked like Patchscope's."""
    enc = _encode_prompts(pair, prompts)
    ids, mask = pad_right(enc, pad_id(pair.tokenizer), pair.input_device("ft"))
    last = torch.tensor([len(e) - 1 for e in enc], dtype=torch.long)
    with pair.ft() as model:
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    rows = torch.arange(len(enc), device=logits.device)
    probs = pair.logits_vocab(logits[rows, last.to(logits.device)]).float().softmax(-1).cpu()
    idx, vals = intersect_rank(probs, keep=keep)
    return [TokenProb(token=t, token_id=i, prob=v) for t, i, v in zip(decode_tokens(pair.tokenizer, idx), idx, vals)]


def scale_lists(pair: ModelPair, probs: torch.Tensor, scales: Sequence[float]) -> list[PatchscopeScale]:
    """The intersection-ranked tokens at every scale of one vector's distributions [S, P, V]."""
    out = []
    for si, s in enumerate(scales):
        idx, vals = intersect_rank(probs[si])
        toks = decode_tokens(pair.tokenizer, idx)
        out.append(PatchscopeScale(scale=s, tokens=[TokenProb(token=t, token_id=i, prob=v)
                                                    for t, i, v in zip(toks, idx, vals)]))
    return out


def sweep_lists(pair: ModelPair, layer: int, vector: torch.Tensor, eta: float, *, scales: Sequence[float] = SCALES,
                side: str = "ft") -> list[PatchscopeScale]:
    """The intersection-ranked tokens of one vector at every scale."""
    return scale_lists(pair, patched_next_token_probs(pair, layer, vector, scales, eta, side=side), scales)


def sweeps_many(pair: ModelPair, layer: int, vectors: torch.Tensor, etas: Sequence[float], *,
                scales: Sequence[float] = SCALES, side: str = "ft", prefixes: Prefixes | None = None,
                on_vector: Any = None) -> list[list[PatchscopeScale]]:
    """:func:`sweep_lists` of every vector of ``vectors`` [n, d] read by one model: the prompts'
    prefixes once, the vectors' rows in calls of :data:`ROWS_PER_CALL` (distributions of a few
    vectors at a time are kept, then ranked). ``on_vector()`` after each vector."""
    pre = prefixes if prefixes is not None else prompt_prefixes(pair, layer, side=side)
    per = max(1, ROWS_PER_CALL // max(1, len(scales)))
    out: list[list[PatchscopeScale]] = []
    for v0 in range(0, vectors.shape[0], per):
        probs = patched_probs_many(pair, layer, vectors[v0:v0 + per], scales, list(etas[v0:v0 + per]), side=side,
                                   prefixes=pre)
        for pv in probs:
            out.append(scale_lists(pair, pv, scales))
            if on_vector is not None:
                on_vector()
    return out


def _top(scales: Sequence[PatchscopeScale], k: int = GRADED_TOP) -> dict[float, list[str]]:
    return {s.scale: [t.token for t in s.tokens[:k]] for s in scales}


def scale_context(sweeps: dict[tuple[Source, int], Sequence[PatchscopeScale]], source: Source, position: int,
                  unpatched: Sequence[TokenProb] = ()) -> ScaleContext:
    """What the grader may compare ``source`` at ``position`` with: its own whole sweep, the controls
    (the random vector and δ̄ through the base model at every scale, the unpatched
    prompt; a control is not its own control) and the same source's sweeps at the other positions.
    The random vector's lists count at every position (more draws of what any vector gives)."""
    controls: dict[str, list[list[str]]] = {}
    for ctl in GRADING_CONTROLS:
        if ctl == source:
            continue
        # a random vector's tokens at any position show what the model says anyway; δ̄ through the
        # base model only at this position (elsewhere it carries δ̄'s information too)
        keys = [k for k in sorted(sweeps) if k[0] == ctl and (ctl == "random" or k[1] == position)]
        if keys:
            controls[ctl] = [toks for k in keys for toks in _top(sweeps[k]).values()]
    if unpatched:
        controls["unpatched"] = [[t.token for t in unpatched[:GRADED_TOP]]]
    others = [_top(v) for (src, j), v in sorted(sweeps.items()) if src == source and j != position]
    return ScaleContext(sweep=_top(sweeps[(source, position)]), controls=controls, other_positions=others)


def _profiler_for(grader: ScaleGrader) -> SpecificScaleGrader:
    """The grader that scores every scale's specificity: the specificity grader itself when it chose."""
    return grader if isinstance(grader, SpecificScaleGrader) else _PROFILER


def grade_sweep(grader: ScaleGrader, scales: Sequence[PatchscopeScale], *, source: Source, position: int,
                context: ScaleContext | None = None) -> PatchscopeEntry:
    """The grader's scale and tokens for one sweep (the paper's tournament over the top-20 lists),
    with every scale's specificity (:class:`SpecificScaleGrader`, whatever grader chose) so the
    report can flag a chosen scale that is far less specific than another."""
    candidates = _top(scales)
    chosen, selected, note = tournament(grader, candidates, context=context)
    prof = _profiler_for(grader).profile(candidates, context)
    return PatchscopeEntry(source=source, position=position, scales=list(scales), chosen_scale=chosen,
                           selected_tokens=list(selected), grader=grader.name, rationale=note,
                           specificity=[round(prof[s.scale].score, 4) for s in scales])


def patchscope_vector(pair: ModelPair, layer: int, vector: torch.Tensor, eta: float, grader: ScaleGrader, *,
                      source: Source, position: int, scales: Sequence[float] = SCALES,
                      side: str = "ft", context: ScaleContext | None = None) -> PatchscopeEntry:
    """Patchscope of one vector, graded on its own (no controls unless ``context`` gives them)."""
    return grade_sweep(grader, sweep_lists(pair, layer, vector, eta, scales=scales, side=side),
                       source=source, position=position, context=context)


def patchscope(pair: ModelPair, c: Collected, positions: Sequence[int], grader: ScaleGrader, *,
               sources: Sequence[Source] = (*SOURCES, *CONTROLS), progress: bool = True) -> PatchscopeResult:
    """Patchscope for every source × position, each at the grader's chosen scale.

    δ̄ and h̄_ft are read by the finetuned model, the baseline h̄_base by the *base* model, all at the
    finetuned model's norm (the authors' convention, :data:`READERS`). Besides them the default
    ``sources`` include the controls a reader needs to tell what is specific to the difference:
    ``delta_via_base`` (δ̄ patched into the base model, scaled by η_base), ``random`` (a random vector
    of δ̄'s norm) and ``base_via_ft`` (h̄_base through the finetuned model: an overfit finetune answers
    it in its own domain); the unpatched identity prompt's own tokens are stored as ``unpatched``.
    Every sweep runs first; then each is graded with the controls of its position as context
    (:func:`scale_context`).
    """
    sweeps: dict[tuple[Source, int], list[PatchscopeScale]] = {}
    jobs = [(s, j) for s in sources for j in positions]
    unpatched = unpatched_tokens(pair)
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"patchscope layer {c.layer}", total=2 * len(jobs))
        for side in sorted({READERS[s][0] for s, _ in jobs}):  # each reading model: its prefixes once
            mine = [(s, j) for s, j in jobs if READERS[s][0] == side]
            vectors = torch.stack([c.vectors(s)[j].float() for s, j in mine])
            etas = [float(getattr(c, READERS[s][1])) for s, _ in mine]
            lists = sweeps_many(pair, c.layer, vectors, etas, side=side, on_vector=lambda: bar.advance(task))
            sweeps.update(zip(mine, lists))
        sweeps = {k: sweeps[k] for k in jobs}  # in the jobs' order, as before
        entries = []
        lists = [[t.token for t in sc.tokens[:GRADED_TOP]] for v in sweeps.values() for sc in v]
        profiler = _profiler_for(grader)
        for g in (grader,) if profiler is grader else (grader, profiler):  # embed every word once, in one batch
            warm = getattr(g, "warm", None)
            if callable(warm):
                warm(lists)
        for source, j in jobs:
            entries.append(grade_sweep(grader, sweeps[(source, j)], source=source, position=j,
                                       context=scale_context(sweeps, source, j, unpatched)))
            bar.advance(task)
    return PatchscopeResult(dataset=c.dataset, layer=c.layer, prompts=list(IDENTITY_PROMPTS), eta_ft=c.eta_ft,
                            eta_base=c.eta_base, entries=entries, unpatched=unpatched,
                            precision=str(getattr(pair, "precision", "float32")))
