"""Patchscope on δ̄_j and the baselines h̄_base_j, h̄_ft_j (paper §3, App. C.1).

The finetuned model reads the identity prompts ``a -> a\nb -> b\nc -> c\n?``; the layer-ℓ output
at the last token is replaced by ``λ · η_ft · v/‖v‖``. Tokens in the top-16384 of all three
prompts are kept and ranked by mean probability. All 30 scales × 3 prompts of one vector run as
one batched forward. A grader picks the scale (batches of 10, then a final) and the coherent
subset of its top-20 tokens.
"""
from __future__ import annotations

from typing import Sequence

import torch
from rich.progress import Progress

from ..graders.scale import ScaleContext, ScaleGrader, SpecificScaleGrader, tournament
from ..models.pair import ModelPair
from ..models.tokens import encode, pad_id, pad_right
from ..rundir.artifacts import CONTROLS, SOURCES, PatchscopeEntry, PatchscopeResult, PatchscopeScale, Source, TokenProb
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


@torch.no_grad()
def patched_next_token_probs(pair: ModelPair, layer: int, vector: torch.Tensor, scales: Sequence[float],
                             eta: float, prompts: Sequence[str] = IDENTITY_PROMPTS, *, side: str = "ft") -> torch.Tensor:
    """Next-token distributions [S, P, V] of the finetuned (``side="ft"``) or base model with the last
    token's layer output replaced by ``scale · eta · v̂`` (one batched forward over all scales ×
    prompts, right padding). V is the pair's shared vocabulary (:attr:`ModelPair.vocab_size`)."""
    enc = _encode_prompts(pair, prompts)
    S, P = len(scales), len(prompts)
    rows = [(s, p) for s in range(S) for p in range(P)]
    dev = pair.input_device(side)  # the layer may live elsewhere: replace_rows moves what it writes
    ids, mask = pad_right([enc[p] for _, p in rows], pad_id(pair.tokenizer), dev)
    last = torch.tensor([len(enc[p]) - 1 for _, p in rows], dtype=torch.long, device=dev)
    unit = vector.float() / (vector.float().norm() + 1e-12)
    lam = torch.tensor([scales[s] for s, _ in rows], dtype=torch.float32)
    values = lam[:, None] * eta * unit.cpu()[None, :]
    with pair.side(side) as model, pair.arch_of(side).edit_layer(layer, replace_rows(last, values)):
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    final = pair.logits_vocab(logits[torch.arange(len(rows), device=logits.device), last.to(logits.device)]).float()
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


def sweep_lists(pair: ModelPair, layer: int, vector: torch.Tensor, eta: float, *, scales: Sequence[float] = SCALES,
                side: str = "ft") -> list[PatchscopeScale]:
    """The intersection-ranked tokens of one vector at every scale (one batched forward)."""
    probs = patched_next_token_probs(pair, layer, vector, scales, eta, side=side)
    out = []
    for si, s in enumerate(scales):
        idx, vals = intersect_rank(probs[si])
        toks = decode_tokens(pair.tokenizer, idx)
        out.append(PatchscopeScale(scale=s, tokens=[TokenProb(token=t, token_id=i, prob=v)
                                                    for t, i, v in zip(toks, idx, vals)]))
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
        for source, j in jobs:
            side, eta = READERS[source]
            sweeps[(source, j)] = sweep_lists(pair, c.layer, c.vectors(source)[j], getattr(c, eta), side=side)
            bar.advance(task)
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
                            eta_base=c.eta_base, entries=entries, unpatched=unpatched)
