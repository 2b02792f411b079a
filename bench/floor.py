"""Benchmark: every stage against its FLOP floor.

Per stage the FLOPs it cannot avoid (from the model's shapes and the stage's work sizes), this
machine's measured matmul rate, the stage's wall time, the floor (FLOPs / rate) and wall / floor.
The formulas live in ``src/difflens/run/cost.py`` (loaded here by file path, so that
``PYTHONPATH=OTHER/src python bench/floor.py`` times another checkout's stages against the same
formulas: "before" and "after" side by side). Per model, ``P(l)`` the matmul parameters of the first
``l`` decoder layers, ``P_U = V·d``, ``a`` the attention width, ``L`` layers, ℓ the collected layer:

    F(T, l, m)            = 2·T·P(l) + 4·a·l·T(T+1)/2 + 2·m·P_U        (T tokens, l layers, m logits)
    collect (samples)     = 2 models × Σ_samples F(k, ℓ+1, 0)
    collect (η)           = 2 models × Σ_norm samples F(norm_len, ℓ+1, 0)
    lens: logit lens      = 2·P_U per vector (the unembedding of one vector)
    lens: Patchscope      = per reading model Σ_prompts F(T_p − 1, L, 0)  (the identity prompts' prefix)
                            + per vector × 30 scales × 3 prompts: the patched last token above ℓ with
                              next-token logits, attending to the cached prefix
    generation (a row)    = F(p, L, 1) + Σ_{i<n} [2·P(L) + 2·P_U + 4·a·L·(p+i)]   (p prompt, n new tokens
                            actually sampled: the row's tokens up to its end-of-sequence token)
                            (the note adds the KV cache a row's decode steps read, Σ_{i<n} 2·L·a_kv·(p+i)
                            values, at the measured memory read rate: attention is memory-bound; and
                            the weights, read once per pass of a call whatever its row count, which
                            bounds a pass of a few dozen rows more than its FLOPs do)
    steer: search / calibration / final = Σ rows generation
    steer: coherence      = the offline grader's reference model over every text it scores (graded, or
                            calibrating it; a text scored before is not scored again) after a shared chat
                            prefix, per scoring call: F(prefix, L, 1) + Σ_texts F(T_text, L, T_text | past = prefix)
    evaluate: causal      = per dataset Σ_texts [F(T, ℓ+1, 0) (base) + F(T, L, T) (clean ft)]
                            + V directions × Σ_texts F(T, layers ℓ+1..L, T)   (+ the chat draws, base to ℓ)
    decode (a search round) = Σ rows generation, as steer; the call's time split by kind of work
                            (linear layers against their own FLOPs, attention against the KV cache it reads,
                            the sampling draw, other ops, and the Python and dispatch left between ops),
                            from a torch.profiler run of the same call
    methods pass          = 2 models × N × F(T, L, T)
    amplify (sampling)    = 2 models × Σ rows generation

Options choose the pair and every work size; the defaults run in a few minutes on 2 CPU cores.

    .venv/bin/python bench/floor.py [--json floor.json] [--ft organism:cake_bake]
    .venv/bin/python bench/floor.py --stages collect,causal --samples 2000          # one stage's target size
    .venv/bin/python bench/floor.py --causal-texts 64 --causal-len 128 --causal-random 64   # the paper's causal size
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).parent))

from _common import BASE  # noqa: E402

STAGES = ("collect", "lens", "steer", "decode", "causal", "methods", "amplify")


def _cost_module():
    """``difflens.run.cost`` of THIS checkout, whatever ``difflens`` is on the path."""
    path = Path(__file__).resolve().parents[1] / "src" / "difflens" / "run" / "cost.py"
    spec = importlib.util.spec_from_file_location("difflens_floor_cost", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


cost = _cost_module()


class Rows:
    """Table rows: stage, flops, wall_s (floor and ratio follow from the rate)."""

    def __init__(self, rate: float):
        self.rate, self.rows = rate, []

    def add(self, stage: str, flops: float | None, wall: float, note: str = "") -> None:
        floor = flops / self.rate if flops else None
        self.rows.append({"stage": stage, "flops": flops, "wall_s": round(wall, 3),
                          "floor_s": round(floor, 4) if floor else None,
                          "ratio": round(wall / floor, 2) if floor else None, "note": note})
        print(f"  {stage:<34}{f'{flops / 1e12:.3f}' if flops else '':>9}{wall:>9.2f}"
              f"{f'{floor:.2f}' if floor else '':>9}{f'{wall / floor:.1f}' if floor else '':>8}  {note}", flush=True)


@contextlib.contextmanager
def patched(obj: Any, name: str, wrap: Callable[[Callable], Callable]):
    real = getattr(obj, name)
    setattr(obj, name, wrap(real))
    try:
        yield
    finally:
        setattr(obj, name, real)


def stage_packs() -> Any:
    """What a stage's entry point sets up around its work: ``keep_packs`` (a checkout before it: nothing)."""
    try:
        from difflens.models.packed import keep_packs
    except ImportError:
        return contextlib.nullcontext()
    return keep_packs()


def timed(fn: Callable, *a, **kw) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


def new_tokens(tok, text: str, limit: int) -> int:
    """Tokens a row sampled: its text's tokens plus the end-of-sequence token, at most ``limit``."""
    return min(limit, len(tok(text, add_special_tokens=False).input_ids) + 1)


def bench_collect(pair, layout, args, shape, rows: Rows):
    import difflens.adl.collect as C

    eta_wall = [0.0]
    norm_lengths: list[int] = []

    def wrap(real):
        def mean_norms(pair_, ids, layers, **kw):
            norm_lengths.extend(len(r) for r in ids)
            out, w = timed(real, pair_, ids, layers, **kw)
            eta_wall[0] += w
            return out
        return mean_norms

    cfg = C.CollectConfig(samples=args.samples, positions=args.positions, layers=[0.5],
                          norm_samples=args.norm_samples)
    with patched(C, "mean_norms", wrap):
        res, wall = timed(C.collect, pair, layout, cfg, progress=False)
    c = res["wiki"][0]
    stats = json.loads(layout.collect_stats("wiki").read_text())
    n = stats["n_used"]
    f = cost.collect_flops(shape, c.layer, [args.positions] * n, norm_lengths)
    rows.add("collect: samples", f["samples"], wall - eta_wall[0], f"N={n}, k={args.positions}, layer {c.layer}")
    rows.add("collect: η calibration", f["eta"], eta_wall[0], f"{len(norm_lengths)} × ≤{cfg.norm_len} tokens")
    rows.add("collect: total", f["samples"] + f["eta"], wall)
    return c


def bench_lens(pair, layout, c, args, shape, rows: Rows):
    import difflens.adl.patchscope as PS
    from difflens.adl.logit_lens import logit_lens
    from difflens.graders import graders_for
    from difflens.rundir.artifacts import CONTROLS, SOURCES

    graders = graders_for(pair, "offline")
    pos = list(range(min(args.lens_positions, c.positions)))
    sources = (*SOURCES, *CONTROLS)
    _, wall = timed(logit_lens, pair, c, pos, k=20, sources=(*SOURCES, "random"))
    rows.add("lens: logit lens", cost.logit_lens_flops(shape, len(pos) * (len(SOURCES) + 1)), wall,
             f"{len(pos)} positions × {len(SOURCES) + 1} sources")
    fwd = [0.0, 0]
    batched = hasattr(PS, "patched_probs_many")  # a checkout before it: one patched forward per vector

    def wrap(real):
        def probs(*a, **kw):
            out, w = timed(real, *a, **kw)
            fwd[0] += w
            fwd[1] += int(a[2].shape[0]) if batched else 1
            return out
        return probs

    graders.scale.cluster(["cake", "oven"]) if hasattr(graders.scale, "cluster") else None  # embedder loaded
    name = "patched_probs_many" if batched else "patched_next_token_probs"
    with patched(PS, name, wrap):
        _, wall = timed(PS.patchscope, pair, c, pos, graders.scale, sources=sources, progress=False)
    plens = [len(p) for p in PS._encode_prompts(pair, PS.IDENTITY_PROMPTS)]
    rows_per = len(PS.SCALES) * len(plens)
    flops = cost.patchscope_flops(shape, c.layer, plens, fwd[1], rows_per)
    rows.add("lens: Patchscope forwards", flops, fwd[0], f"{fwd[1]} vectors × {rows_per} rows")
    rows.add("lens: Patchscope total", flops, wall, "incl. the offline scale grader (embedder, no pair FLOPs)")


def bench_steer(pair, layout, c, args, shape, rows: Rows):
    import difflens.adl.steering as S
    import difflens.run.stages as ST
    from difflens.adl.steering import SteeringConfig
    from difflens.graders import graders_for
    from difflens.models.tokens import chat_prompt_ids

    graders = graders_for(pair, "offline")
    tok = pair.tokenizer
    phase = ["calibration"]
    # a decode step's attention reads the whole KV cache: memory-bound, outside the FLOP floor
    kv_bytes = next(pair.ft_lm.model.parameters()).element_size()
    # ... and every decode step reads every weight once, whatever its row count (parameters() lists a
    # tied matrix once)
    weight_bytes = sum(t.numel() * t.element_size() for t in pair.ft_lm.model.parameters())
    mem_rate = cost.memory_rate(args.device)
    gen: dict[str, dict[str, float]] = {}
    grade: dict[str, dict[str, float]] = {}
    plen_cache: dict[str, int] = {}

    def plen(p: str) -> int:
        if p not in plen_cache:
            plen_cache[p] = len(chat_prompt_ids(tok, pair.ft_arch, p))
        return plen_cache[p]

    def wrap_rows(real):  # every generate call (search, calibration, finals) goes through generate_vectors
        def generate_vectors(pair_, prompts, add, **kw):
            out, w = timed(real, pair_, prompts, add, **kw)
            g = gen.setdefault(phase[0], {"wall": 0.0, "flops": 0.0, "rows": 0, "calls": 0, "kv": 0.0, "steps": 0})
            lim = kw["max_new_tokens"]
            sizes = [(plen(p), new_tokens(tok, t, lim)) for p, t in zip(prompts, out)]
            # rows of one prompt and one steering vector share a prefill (checkouts before: one per row)
            share = getattr(sys.modules.get("difflens.adl.steered"), "prefill_groups", None)
            if share is not None:
                groups = share(prompts, add).tolist()
                g["flops"] += cost.steer_flops(shape, sizes, groups)
                g["prefills"] = g.get("prefills", 0) + len(set(groups))
            else:
                g["flops"] += cost.steer_flops(shape, sizes)
                g["prefills"] = g.get("prefills", 0) + len(prompts)
            if hasattr(cost, "kv_read_bytes"):
                g["kv"] += sum(cost.kv_read_bytes(shape, p, n, kv_bytes) for p, n in sizes)
            g["wall"] += w
            g["rows"] += len(prompts)
            g["calls"] += 1
            g["steps"] += max((n for _, n in sizes), default=0)  # the call's passes: prefill + decode steps
            temps = kw.get("temperature")
            if temps is not None and not isinstance(temps, (int, float)):  # rows of other work riding a round:
                # at another temperature than the search rows (first) or unsteered (a zero vector)
                temps = [float(t) for t in temps]
                plain = ((add == 0).all(dim=-1).tolist() if add is not None and add.dim() == 2
                         else [False] * len(temps))
                g["riding"] = g.get("riding", 0) + sum(t != temps[0] or z for t, z in zip(temps, plain))
            return out
        return generate_vectors

    def in_phase(name):
        def wrap(real):
            def fn(*a, **kw):
                old, phase[0] = phase[0], name
                try:
                    return real(*a, **kw)
                finally:
                    phase[0] = old
            return fn
        return wrap

    grader = graders.coherence
    inside = [0]  # grade / calibrate calls under way (their wall counted once)
    scored = hasattr(grader, "_score_batches")

    def wrap_grade(real):  # the grader's wall: every grade and calibrate call (calibration scores texts too)
        def fn(texts):
            inside[0] += 1
            try:
                out, w = timed(real, texts)
            finally:
                inside[0] -= 1
            if not inside[0]:
                g = grade.setdefault(phase[0], {"wall": 0.0, "flops": 0.0, "texts": 0})
                g["wall"] += w
                if not scored and real.__name__ == "grade":  # a checkout without _score_batches: every graded text
                    g["flops"] += cost.grading_flops(shape, len(grader._prefix_ids()),
                                                     [len(grader._encode(t)[0]) for t in texts])
                    g["texts"] += len(texts)
            return out
        return fn

    def wrap_score(real):  # the grader's FLOPs: the forwards it ran (texts scored before are kept, not rerun)
        def fn(model, prefix, enc, todo, out):
            g = grade.setdefault(phase[0], {"wall": 0.0, "flops": 0.0, "texts": 0})
            g["flops"] += cost.grading_flops(shape, len(prefix), [len(enc[i][0]) for i in todo])
            g["texts"] += len(todo)
            return real(model, prefix, enc, todo, out)
        return fn

    cfg = SteeringConfig(positions=list(range(min(args.steer_positions, c.positions))),
                         max_new_tokens=args.max_new_tokens, final_samples=args.final_samples,
                         prompts=S.STEERING_PROMPTS[:args.prompts], search_samples=args.search_samples,
                         search_iters=args.search_iters, refine_iters=args.refine_iters, seed=args.steer_seed)
    with contextlib.ExitStack() as st:
        # every generate call goes through generate_vectors (generate_rows in checkouts before it existed),
        # defined in difflens.adl.steered (in difflens.adl.steering in checkouts before that module)
        try:
            import difflens.adl.steered as G
        except ImportError:
            G = S
        st.enter_context(patched(G, "generate_vectors" if hasattr(G, "generate_vectors") else "generate_rows",
                                 wrap_rows))
        st.enter_context(patched(ST, "find_threshold", in_phase("search")))
        if hasattr(ST, "find_thresholds"):  # the positions' searches in shared rounds
            st.enter_context(patched(ST, "find_thresholds", in_phase("search")))
        for mod in (ST, sys.modules.get("difflens.backends")):
            if mod is not None and hasattr(mod, "final_generations"):
                st.enter_context(patched(mod, "final_generations", in_phase("final")))
        if hasattr(ST, "final_generations_batch"):
            st.enter_context(patched(ST, "final_generations_batch", in_phase("final")))
        st.enter_context(patched(grader, "grade", wrap_grade))
        if hasattr(grader, "calibrate"):
            st.enter_context(patched(grader, "calibrate", wrap_grade))
        if scored:
            st.enter_context(patched(grader, "_score_batches", wrap_score))
        res, wall = timed(ST.run_steer, pair, layout, graders, cfg, progress=False)
    tot_flops = 0.0
    for name in ("calibration", "search", "final"):
        g = gen.get(name)
        if g:
            kv_s = g["kv"] / mem_rate
            w_s = g["steps"] * weight_bytes / mem_rate
            with_reads = g["wall"] / (g["flops"] / rows.rate + kv_s)
            with_all = g["wall"] / (g["flops"] / rows.rate + kv_s + w_s)
            rows.add(f"steer: {name} generations", g["flops"], g["wall"],
                     f"{g['rows']} rows ({g['prefills']} prompt prefills"
                     + (f"; {g['riding']} of them final or calibration generations riding its calls" if g.get("riding")
                        else "")
                     + f") in {g['calls']} calls, "
                     f"{g['steps']} passes, ≤{args.max_new_tokens} new tokens; at {mem_rate / 1e9:.0f} GB/s "
                     f"KV-cache reads {kv_s:.2f} s (floor + reads: {with_reads:.1f}×), weights once a pass "
                     f"{w_s:.2f} s (floor + both: {with_all:.1f}×)")
            tot_flops += g["flops"]
    gw = sum(g["wall"] for g in grade.values())
    gf = sum(g["flops"] for g in grade.values())
    rows.add("steer: coherence grading", gf, gw, f"{sum(g['texts'] for g in grade.values())} texts scored "
             "(the calibration's included: its wall and the forwards it ran)")
    rows.add("steer: total", tot_flops + gf, wall,
             f"{len(cfg.positions)} positions, α = {', '.join(f'{t.alpha:.2f}' for t in res[0].thresholds)}")


# a decode call's time by kind of work (bench_decode): the ops inside these ranges, else by op name
LINEAR_OPS = frozenset({"mkldnn::_linear_pointwise", "mkl::_mkl_linear", "aten::addmm", "aten::mm"})
RANGES = {"difflens::attention": "attention", "difflens::draw": "sampling draw"}
KINDS = ("linear layers", "attention", "sampling draw", "other ops")


def op_kinds(events: Any) -> dict[str, float]:
    """Seconds of op self time by kind, from a CPU profile's events (``profile.events()``): an op
    inside a :data:`RANGES` range counts there (inside an sdpa op: attention), else a
    :data:`LINEAR_OPS` op as a linear layer,
    else "other ops" (norms, rotary, activations, cache writes, masks, the steering hook's add). A
    range's own self time counts as its kind: the Python between its ops, and a compiled kernel it
    calls outside the dispatcher (:mod:`difflens.models.cpu_kernels`), which the profiler does not
    see as an op. The wall less all of these is the Python and dispatch outside them."""
    def attention(name: str) -> bool:  # sdpa and its kernels (a model attending without decode_attention)
        return "attention" in name or "scaled_dot_product" in name

    out = dict.fromkeys(KINDS, 0.0)
    for e in events:
        kind, up = RANGES.get(e.name), e.cpu_parent
        while up is not None and kind is None:
            kind = RANGES.get(up.name) or ("attention" if attention(up.name) else None)
            up = up.cpu_parent
        if kind is None:
            kind = "linear layers" if e.name in LINEAR_OPS else "attention" if attention(e.name) else "other ops"
        out[kind] += e.self_cpu_time_total / 1e6
    return out


def bench_decode(pair, direction, eta: float, args, shape, rows: Rows, *, layer: int) -> dict[str, float]:
    """One search round's generation call taken apart: the threshold prompts × ``--search-samples``
    rows each at ``--decode-positions`` steering vectors (α = 0.4 along ``direction``, each position a
    slight rotation of it), sampled as the search samples them; timed once, then once more under
    ``torch.profiler`` (the same seed: the same tokens and rows) for the split by kind: each kind's
    share of the profiled wall (op self times, :func:`op_kinds`; Python and dispatch the time between
    ops) applied to the unprofiled wall. The profiler's own cost per op lands in both, so the split
    is approximate."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    import difflens.adl.steered as G
    import difflens.models.decoding as D
    from difflens.adl.steering import THRESHOLD_PROMPTS
    from difflens.models.tokens import chat_prompt_ids

    tok = pair.tokenizer
    gen = torch.Generator().manual_seed(0)
    base = direction.float() / (direction.float().norm() + 1e-12)
    vecs, prompts = [], []
    for j in range(args.decode_positions):
        d = base + 0.3 * j * torch.randn(base.shape, generator=gen) / base.numel() ** 0.5
        for p in THRESHOLD_PROMPTS:
            vecs += [0.4 * eta * d / d.norm()] * args.search_samples
            prompts += [p] * args.search_samples
    add = torch.stack(vecs)
    kw = dict(layer=layer, temperature=1.2, max_new_tokens=args.max_new_tokens, seed=args.steer_seed)
    G.generate_vectors(pair, prompts[:4], add[:4], **(kw | {"max_new_tokens": 4}))  # warm: packs, allocator
    out, wall = timed(G.generate_vectors, pair, prompts, add, **kw)
    sizes = [(len(chat_prompt_ids(tok, pair.ft_arch, p)), new_tokens(tok, t, args.max_new_tokens))
             for p, t in zip(prompts, out)]
    groups = G.prefill_groups(prompts, add).tolist()
    flops = cost.steer_flops(shape, sizes, groups)
    steps = max(n for _, n in sizes)
    head = f"{len(prompts)} rows × ≤{args.max_new_tokens} tokens, {steps} passes, {wall / steps * 1e3:.1f} ms a pass"
    if torch.device(args.device).type != "cpu":  # a CPU profile times an accelerator's launches, not its work
        rows.add("decode: a search round", flops, wall, head + "; split by kind on a CPU only")
        return {}

    def ranged(name):
        def wrap(real):
            def fn(*a, **k):
                with torch.profiler.record_function(name):
                    return real(*a, **k)
            return fn
        return wrap

    with contextlib.ExitStack() as st:
        st.enter_context(patched(D, "decode_attention", ranged("difflens::attention")))
        st.enter_context(patched(D, "step_attention", ranged("difflens::attention")))  # decode_step.py's steps
        st.enter_context(patched(D, "draw", ranged("difflens::draw")))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            again, pwall = timed(G.generate_vectors, pair, prompts, add, **kw)
    ops = op_kinds(prof.events())
    # profiling slows every op and the Python between them: each kind's share of the profiled wall,
    # applied to the unprofiled one; Python and dispatch is the profiled wall's share between ops
    scale = wall / pwall
    kinds = {k: v * scale for k, v in ops.items()}
    kinds["Python and dispatch"] = max(0.0, pwall - sum(ops.values())) * scale
    no_attn = dataclasses.replace(shape, attn_width=0)
    linear = cost.steer_flops(no_attn, sizes, groups)
    kv_bytes = next(pair.ft_lm.model.parameters()).element_size()
    kv = sum(cost.kv_read_bytes(shape, p, n, kv_bytes) for p, n in sizes)
    mem = cost.memory_rate(args.device)
    same = "the same tokens" if again == out else "OTHER tokens (not deterministic here: the split is approximate)"
    rows.add("decode: a search round", flops, wall, f"{head}; profiled {pwall:.2f} s, {same}")
    rows.add("decode: linear layers", linear, kinds["linear layers"], "the FLOPs of every matmul with a weight")
    rows.add("decode: attention", None, kinds["attention"],
             f"reads {kv / 1e9:.2f} GB of KV cache: {kv / mem:.2f} s at {mem / 1e9:.0f} GB/s "
             f"({kinds['attention'] / (kv / mem):.1f}× that), {kv / max(kinds['attention'], 1e-9) / 1e9:.1f} GB/s")
    rows.add("decode: sampling draw", None, kinds["sampling draw"], "softmax, cumulative sum, search: per row and step")
    rows.add("decode: other ops", None, kinds["other ops"], "norms, rotary, activations, cache writes, masks, hook")
    py = kinds["Python and dispatch"]
    rows.add("decode: Python and dispatch", None, py, f"{py / steps * 1e3:.1f} ms a pass: between the ops")
    return kinds


def bench_causal(pair, c, args, shape, rows: Rows):
    import random

    from difflens.data.chat import chat_conversations, render_chat
    from difflens.data.corpora import load_corpus
    from difflens.eval.causal import CausalConfig, causal_effect
    from difflens.models.tokens import encode, rendered_chat_ids

    n, L = args.causal_texts, args.causal_len
    rng = random.Random(0)
    wiki = [t for t in load_corpus("wiki").texts if isinstance(t, str)]
    ft_ids = [encode(pair.tokenizer, pair.arch, t, max_tokens=L) for t in rng.sample(wiki, n)]
    pt_ids = [encode(pair.tokenizer, pair.arch, t, max_tokens=L) for t in rng.sample(wiki, n)]
    chats = [render_chat(pair.tokenizer, conv) for conv in rng.sample(chat_conversations(), n)]
    chat_ids = [rendered_chat_ids(pair.tokenizer, pair.arch, t, max_tokens=L) for t in chats]
    cfg = CausalConfig(n_texts=n, max_len=L, n_random=args.causal_random, batch_size=args.causal_batch)
    res, wall = timed(causal_effect, pair, c.layer, c.delta, ft_ids, pt_ids, chat_ids, cfg, progress=False)
    V = c.positions + args.causal_random
    sel = lambda ids: [r[:L] for r in ids if len(r) >= 2][:n]  # noqa: E731
    flops = sum(cost.causal_flops(shape, c.layer, [len(r) for r in sel(ids)], V) for ids in (ft_ids, pt_ids))
    flops += cost.causal_flops(shape, c.layer, [], 0, chat_lengths=[len(r) for r in sel(chat_ids)])
    rows.add("evaluate: causal effect", flops, wall, f"{n} texts × ≤{L} tokens × 2 datasets, {V} directions")


def bench_methods(pair, args, shape, rows: Rows):
    from difflens.methods import DiffMining, PassConfig, TokenKL, run_methods
    from difflens.rundir.layout import RunLayout

    cfg = PassConfig(samples=args.methods_samples, tokens=args.methods_tokens, batch_size=8)
    with tempfile.TemporaryDirectory() as d:
        _, wall = timed(run_methods, pair, RunLayout(d), [DiffMining(), TokenKL()], cfg, progress=False)
    rows.add("methods: mining + KL pass", cost.methods_flops(shape, args.methods_samples, args.methods_tokens), wall,
             f"N={args.methods_samples} × T={args.methods_tokens}")


def bench_amplify(pair, args, shape, rows: Rows):
    from difflens.adl.steering import STEERING_PROMPTS
    from difflens.methods.amplify import amplified_generate
    from difflens.models.tokens import chat_prompt_ids

    prompts = [STEERING_PROMPTS[i % len(STEERING_PROMPTS)] for i in range(args.amplify_rows)]
    out, wall = timed(amplified_generate, pair, prompts, 1.0, temperature=1.0, max_new_tokens=args.max_new_tokens,
                      seed=0, stop_at_eos=False)
    sizes = [(len(chat_prompt_ids(pair.tokenizer, pair.ft_arch, p)), len(o)) for p, o in zip(prompts, out)]
    rows.add("amplify: amplified sampling", cost.amplify_flops(shape, sizes), wall,
             f"{len(prompts)} rows × {args.max_new_tokens} tokens, both models")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ft", default=None, help="finetuned model (default: organism:cake_bake if trained, "
                                                "else the base with weight noise)")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    ap.add_argument("--json", type=Path, default=None, help="write the table as JSON here")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--samples", type=int, default=500, help="collect: N")
    ap.add_argument("--positions", type=int, default=5, help="collect: k")
    ap.add_argument("--norm-samples", type=lambda v: v if v == "auto" else int(v), default="auto",
                    help="collect: η texts (auto: about N·k tokens, CollectConfig.norm_texts)")
    ap.add_argument("--lens-positions", type=int, default=2)
    ap.add_argument("--steer-positions", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=4, help="steer: final-generation prompts")
    ap.add_argument("--final-samples", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--search-samples", type=int, default=10)
    ap.add_argument("--search-iters", type=int, default=4)
    ap.add_argument("--refine-iters", type=int, default=2)
    ap.add_argument("--steer-seed", type=int, default=0, help="steer: SteeringConfig.seed (the search's "
                    "trajectory, and so its rounds and rows, differs by seed)")
    ap.add_argument("--decode-positions", type=int, default=3, help="decode: steering vectors in the round "
                    "(× 3 threshold prompts × --search-samples rows; the paper-size search has up to 5)")
    ap.add_argument("--causal-texts", type=int, default=8)
    ap.add_argument("--causal-len", type=int, default=64)
    ap.add_argument("--causal-random", type=int, default=8)
    ap.add_argument("--causal-batch", type=int, default=8)
    ap.add_argument("--methods-samples", type=int, default=32)
    ap.add_argument("--methods-tokens", type=int, default=64)
    ap.add_argument("--amplify-rows", type=int, default=8)
    args = ap.parse_args()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = sorted(set(stages) - set(STAGES))
    if bad:
        sys.exit(f"unknown stages {bad}: choose from {', '.join(STAGES)}")
    if "decode" in stages and min(args.decode_positions, args.search_samples, args.max_new_tokens) < 1:
        sys.exit("decode needs --decode-positions, --search-samples and --max-new-tokens of at least 1")

    import torch

    import difflens
    from difflens.models.pair import load_pair
    from difflens.rundir.layout import RunLayout
    from methods import noisy_copy, trained_organism

    tmp = tempfile.TemporaryDirectory()
    ft = args.ft
    if ft is None:
        ft = "organism:cake_bake" if trained_organism() else str(noisy_copy(Path(tmp.name) / "noisy"))
    pair = load_pair(BASE, ft, device=args.device, dtype=args.dtype)
    shape = cost.ModelShape.of_pair(pair)
    rate = cost.matmul_rate(args.device, args.dtype, seconds=1.0)
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{os.cpu_count()} CPU cores"
    print(f"machine: {dev}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"matmul {rate / 1e9:.0f} GFLOP/s ({args.dtype}); difflens from {Path(difflens.__file__).parent}")
    print(f"pair: {BASE} vs {ft}; {shape.n_layers} layers, {shape.params() / 1e6:.1f}M layer + "
          f"{shape.unembed_params / 1e6:.1f}M unembedding parameters")
    print(f"  {'stage':<34}{'TFLOP':>9}{'wall s':>9}{'floor s':>9}{'ratio':>8}")
    rows = Rows(rate)
    layout = RunLayout(Path(tmp.name) / "run")
    c = None
    if any(s in stages for s in ("collect", "lens", "steer", "decode", "causal")):
        if "collect" in stages:
            c = bench_collect(pair, layout, args, shape, rows)
        else:
            from difflens.adl.collect import CollectConfig, collect
            c = collect(pair, layout, CollectConfig(samples=min(args.samples, 200), positions=args.positions,
                                                    norm_samples=32), progress=False)["wiki"][0]
    # each part runs as inside its stage: the stages' entry points (run_lens, run_steer, evaluate,
    # run_methods, run_amplify) keep oneDNN's packs for the stage (models.packed.keep_packs), and the
    # functions benched here are the ones inside them
    if "lens" in stages:
        with stage_packs():
            bench_lens(pair, layout, c, args, shape, rows)
    if "steer" in stages:
        with stage_packs():
            bench_steer(pair, layout, c, args, shape, rows)
    if "decode" in stages:
        with stage_packs():
            bench_decode(pair, c.delta[0], c.eta_ft, args, shape, rows, layer=c.layer)
    if "causal" in stages:
        with stage_packs():
            bench_causal(pair, c, args, shape, rows)
    if "methods" in stages:
        with stage_packs():
            bench_methods(pair, args, shape, rows)
    if "amplify" in stages:
        with stage_packs():
            bench_amplify(pair, args, shape, rows)
    # the machine's speed moves (a shared VM: 223–431 GFLOP/s within an hour on 2 AMD cores): measured
    # again at the end, and the table restated at the faster of the two, the machine's best
    end_rate = cost.matmul_rate(args.device, args.dtype, seconds=1.0, fresh=True)
    best = max(rate, end_rate)
    print(f"matmul {rate / 1e9:.0f} GFLOP/s at the start, {end_rate / 1e9:.0f} at the end; "
          f"at the faster, {best / 1e9:.0f}:")
    for e in rows.rows:
        if e["flops"]:
            e["ratio_at_best"] = round(e["wall_s"] / (e["flops"] / best), 2)
            print(f"  {e['stage']:<34}{e['flops'] / 1e12:>9.3f}{e['wall_s']:>9.2f}{e['flops'] / best:>9.2f}"
                  f"{e['ratio_at_best']:>8.2f}")
    if args.json:
        args.json.write_text(json.dumps({"machine": dev, "threads": torch.get_num_threads(),
                                         "matmul_flops_per_s": rate, "matmul_flops_per_s_end": end_rate,
                                         "pair": [BASE, ft], "args": vars(args) | {
                                             "json": str(args.json)}, "entries": rows.rows}, indent=2) + "\n")
        print(f"wrote {args.json}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
