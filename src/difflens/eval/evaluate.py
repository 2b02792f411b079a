"""``difflens evaluate``: the paper's quantitative evaluations over a run directory.

Per collected dataset × layer, four parts, each resumable on its own (``RUN/eval/parts/``, keyed
by a fingerprint of its inputs — artifacts, D_ft, grader identity, settings):

- ``relevance``      token relevance of Patchscope / logit-lens tokens (:mod:`.relevance`);
- ``similarity``     steering similarity of steered / unsteered / random-direction texts (:mod:`.similarity`);
- ``causal``         ΔCE of replacing δ̄_j's component by the base model's (:mod:`.causal`);
- ``identification`` rank of the true objective among candidates by embedding (:mod:`.identify`);
- ``leakage``        share of unsteered answers that give the domain away, finetuned vs base model
                     (:class:`~difflens.graders.leakage.LeakageGrader`).

A part whose inputs are missing (no D_ft, no lens or steering results) is skipped with the reason
recorded in the summary — never filled with a made-up number. Results go to ``RUN/eval/summary.json``
(:mod:`.summary`).
"""
from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
from pydantic import BaseModel, Field

from ..errors import DifflensError, RunDirError
from ..files import read_json, write_json
from ..models.embedder import DEFAULT_EMBEDDER
from ..models.precision import fingerprint_part
from ..rundir import artifacts as A
from ..rundir.layout import RunLayout, fingerprint
from .causal import CausalConfig, CausalResult
from .ftdata import FtData, chat_assistant_texts, frequent_ft_tokens
from .relevance import MethodRelevance, token_relevance
from .similarity import Stat
from .summary import EvalSummary, IdentificationResult, LayerEval, LeakageResult, LeakageSide
from ..models.packed import with_kept_packs

__all__ = ["EvalConfig", "PARTS", "evaluate"]

Part = Literal["relevance", "similarity", "causal", "identification", "leakage", "methods"]
PARTS: tuple[Part, ...] = ("relevance", "similarity", "causal", "identification", "leakage", "methods")


class EvalConfig(BaseModel):
    parts: list[Part] = Field(default_factory=lambda: list(PARTS))
    top_k: int = Field(20, ge=1)
    frequent_k: int = Field(100, ge=1)
    frequent_min_count: int = Field(10, ge=1)
    similarity_samples: int = Field(500, ge=2)
    embedder: str = DEFAULT_EMBEDDER
    causal: CausalConfig = Field(default_factory=CausalConfig)
    candidates: list[str] = Field(default_factory=list)  # extra organism YAMLs / directories
    leakage_min_words: int = Field(2, ge=1)
    leakage_base: bool = True  # also generate the base model's answers (the control)
    seed: int = 0

    @classmethod
    def quick(cls, **kw: Any) -> "EvalConfig":
        """A laptop-sized evaluation: 16 texts of ≤ 48 tokens and 8 random directions for the causal
        effect (the paper: 64 random directions; the baseline's spread is correspondingly rougher),
        200 similarity samples. About 3 minutes instead of 40 on 2 CPU cores for a 135M pair."""
        return cls(**{"similarity_samples": 200, "causal": CausalConfig(n_texts=16, max_len=48, n_random=8), **kw})


def _file_hash(path: Path) -> str | None:
    if not path.exists():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


class _Log:
    """``[difflens] evaluate …`` lines on stderr (also into a log file)."""

    def __init__(self, on: bool):
        self.on, self.t0 = on, time.perf_counter()

    def __call__(self, msg: str) -> None:
        if self.on:
            print(f"[difflens] evaluate: {msg} ({time.perf_counter() - self.t0:.0f} s)", file=sys.stderr, flush=True)


def _cached(layout: RunLayout, dataset: str, layer: int, part: str, fp: str) -> Any | None:
    path = layout.eval_part(dataset, layer, part)
    if not path.exists():
        return None
    try:
        rec = read_json(path)
    except (ValueError, OSError):
        return None
    return rec.get("value") if rec.get("fingerprint") == fp else None


def _store(layout: RunLayout, dataset: str, layer: int, part: str, fp: str, value: Any) -> None:
    write_json(layout.eval_part(dataset, layer, part), {"fingerprint": fp, "value": value})


def _generations(layout: RunLayout, dataset: str, layer: int) -> list[A.Generation] | None:
    path = layout.steering_generations(dataset, layer)
    return A.load_jsonl(A.Generation, path) if path.exists() else None


def _load(model: type[A.M], path: Path) -> A.M | None:
    return A.load(model, path) if path.exists() else None


@with_kept_packs
def evaluate(layout: RunLayout, ft: FtData | None, *, relevance_grader: Any = None, cfg: EvalConfig | None = None,
             pair_loader: Callable[[], Any] | None = None, datasets: Sequence[str] | None = None,
             layers: Sequence[int] | None = None, progress: bool = True,
             precision: str | None = None) -> EvalSummary:
    """Evaluate a run; write and return ``RUN/eval/summary.json``.

    ``ft``: D_ft and the true description (None: the parts that need them are skipped).
    ``relevance_grader``: the token-relevance grader (None: relevance skipped). ``pair_loader``:
    returns the model pair, called only if the causal effect (or the base model's answers for the
    leakage part) must be computed. ``precision``: the precision that pair computes in (None:
    float32; :func:`difflens.models.pair.pair_precision` gives it without loading the pair): part of
    the fingerprints of the parts that run it, so a result another precision computed is not reused.
    """
    from ..methods.evidence import available

    cfg = cfg or EvalConfig()
    log = _Log(progress)
    have_methods = available(layout)
    if not layout.manifest.exists() and not have_methods:
        raise RunDirError(f"{layout.root} is not a run directory (no manifest.json, no methods/): run `difflens "
                          "collect` or `difflens diff` first.")
    targets = layout.targets(datasets, layers) if layout.manifest.exists() else []
    summary = EvalSummary(ft_data=ft.describe() if ft else None, organism=ft.organism if ft else None,
                          description=ft.description if ft else None, embedder=cfg.embedder)
    description = ft.description if ft else None
    if ft is None:
        for p in PARTS:
            summary.skipped[p] = ("no finetuning data: pass --organism NAME, or --ft-data FILE with --description, "
                                  "or evaluate a run of an organism:NAME model")
    elif not description:
        summary.skipped["relevance"] = "no true description: pass --description TEXT"
        summary.skipped["identification"] = "no true description: pass --description TEXT"
        summary.skipped["leakage"] = "no true description: pass --description TEXT"
    if relevance_grader is None:
        for p in ("relevance", "leakage"):
            summary.skipped.setdefault(p, "no relevance grader configured")
    frequent: list[str] = []
    pair: list[Any] = []  # loaded on first use
    models = fingerprint_part(precision)  # what the parts that run the pair add to their fingerprints

    def get_pair() -> Any:
        if not pair:
            if pair_loader is None:
                raise DifflensError("the causal effect needs the model pair, but no loader was given")
            log("loading the model pair")
            loaded = pair_loader()
            got = getattr(loaded, "precision", None)
            if fingerprint_part(got) != fingerprint_part(precision):
                raise DifflensError(f"the model pair was loaded in {got or 'float32'}, but evaluate keys its cached "
                                    f"parts to {precision or 'float32'}: pass evaluate(precision=...) the precision "
                                    "pair_loader loads (difflens.models.pair.pair_precision)")
            pair.append(loaded)
        return pair[0]

    if ft is not None and not {"relevance", "leakage"} <= set(summary.skipped):
        from ..graders import grader_identity

        tok = _tokenizer(layout)
        frequent = frequent_ft_tokens(ft, tok, k=cfg.frequent_k, min_count=cfg.frequent_min_count,
                                      cache_dir=layout.eval_cache())
        summary.frequent_tokens = frequent
        summary.graders["relevance"] = grader_identity(relevance_grader)

    for dataset, layer in targets:
        le = LayerEval(dataset=dataset, layer=layer)

        def part(name: str, fp: str, compute: Callable[[], Any]) -> Any:
            """A part's value: finished (same fingerprint) or computed now if requested, else None."""
            val = _cached(layout, dataset, layer, name, fp)
            if val is None:
                if name not in cfg.parts:
                    le.skipped[name] = "not requested (--part) and no finished result with these inputs"
                    return None
                val = compute()
                _store(layout, dataset, layer, name, fp, val)
            return val

        ps = _load(A.PatchscopeResult, layout.patchscope(dataset, layer))
        ll = _load(A.LogitLensResult, layout.logit_lens(dataset, layer))
        gens = _generations(layout, dataset, layer)
        lens_fp = [_file_hash(layout.patchscope(dataset, layer)), _file_hash(layout.logit_lens(dataset, layer))]
        gens_fp = _file_hash(layout.steering_generations(dataset, layer))

        # ---- relevance -------------------------------------------------------------------
        if "relevance" not in summary.skipped:
            if ps is None and ll is None:
                le.skipped["relevance"] = "no lens results: run `difflens lens RUN` first"
            else:
                fp = fingerprint({"lens": lens_fp, "grader": summary.graders["relevance"], "desc": description,
                                  "frequent": frequent, "k": cfg.top_k})
                def relevance() -> Any:
                    log(f"token relevance, {dataset} layer {layer}")
                    rel = token_relevance(ps, ll, relevance_grader, description or "", frequent, k=cfg.top_k)
                    return {s: {m: r.model_dump() for m, r in per.items()} for s, per in rel.items()}

                val = part("relevance", fp, relevance)
                if val is not None:
                    le.relevance = {s: {m: MethodRelevance(**r) for m, r in per.items()} for s, per in val.items()}

        # ---- steering similarity -----------------------------------------------------------
        if "similarity" not in summary.skipped:
            if not gens:
                le.skipped["similarity"] = "no steering generations: run `difflens steer RUN` first"
            else:
                fp = fingerprint({"gens": gens_fp, "ft": ft.content_hash, "embedder": cfg.embedder,
                                  "n": cfg.similarity_samples, "seed": cfg.seed})
                def similarity() -> Any:
                    log(f"steering similarity, {dataset} layer {layer}")
                    return _similarity(gens, ft, chat_assistant_texts(cfg.similarity_samples, seed=cfg.seed), cfg)

                val = part("similarity", fp, similarity)
                if val is not None:
                    le.steering_similarity = {k: Stat(**v) for k, v in val["pooled"].items()}
                    le.steering_similarity_per_position = {j: {k: Stat(**v) for k, v in per.items()}
                                                           for j, per in val["per_position"].items()}

        # ---- causal effect -----------------------------------------------------------------
        if "causal" not in summary.skipped:
            fp = fingerprint({"collect": read_json(layout.collect_stats(dataset))["fingerprint"], "layer": layer,
                              "ft": ft.content_hash, "cfg": cfg.causal.semantic(), **models})
            def causal() -> Any:
                log(f"causal effect, {dataset} layer {layer} ({cfg.causal.n_random} random directions)")
                ck = layout.eval_part_partial(dataset, layer, "causal")
                res = _causal(get_pair(), layout, dataset, layer, ft, cfg, progress, checkpoint=ck, key=fp)
                ck.unlink(missing_ok=True)
                return res.model_dump()

            val = part("causal", fp, causal)
            if val is not None:
                le.causal = CausalResult(**val)

        # ---- identification ----------------------------------------------------------------
        if "identification" not in summary.skipped:
            if ps is None or not gens:
                le.skipped["identification"] = "needs both lens results and steering generations"
            else:
                from .identify import candidate_descriptions

                cands = candidate_descriptions(cfg.candidates)
                true = ft.organism if ft.organism in cands else "(true description)"
                if true not in cands:
                    cands[true] = description or ""
                fp = fingerprint({"lens": lens_fp, "gens": gens_fp, "cands": sorted(cands.items()), "true": true,
                                  "embedder": cfg.embedder})
                def identification() -> Any:
                    log(f"objective identification, {dataset} layer {layer} ({len(cands)} candidates)")
                    return _identification(ps, gens, cands, true, cfg).model_dump()

                val = part("identification", fp, identification)
                if val is not None:
                    le.identification = IdentificationResult(**val)
        # ---- leakage -----------------------------------------------------------------------
        if "leakage" not in summary.skipped:
            steer = _load(A.SteeringResult, layout.steering(dataset, layer))
            if not gens or steer is None or not any(g.position is None for g in gens):
                le.skipped["leakage"] = "no unsteered generations: run `difflens steer RUN` first"
            else:
                from ..graders.leakage import LeakageGrader

                grader = LeakageGrader(relevance_grader, min_words=cfg.leakage_min_words)
                fp = fingerprint({"gens": gens_fp, "grader": grader.identity(), "desc": description,
                                  "frequent": frequent, "base": cfg.leakage_base, "seed": cfg.seed,
                                  **(models if cfg.leakage_base else {})})
                def leakage() -> Any:
                    log(f"leakage, {dataset} layer {layer}")
                    base_texts = None
                    if cfg.leakage_base:  # generated once, re-graded when the grader changes
                        bfp = fingerprint({"gens": gens_fp, "seed": cfg.seed, **models})
                        base_texts = _cached(layout, dataset, layer, "leakage-base-answers", bfp)
                        if base_texts is None:
                            base_texts = _base_answers(get_pair(), gens, steer, cfg)
                            _store(layout, dataset, layer, "leakage-base-answers", bfp, base_texts)
                    return _leakage(gens, base_texts, grader, description or "", frequent).model_dump()

                val = part("leakage", fp, leakage)
                if val is not None:
                    le.leakage = LeakageResult(**val)
        summary.results.setdefault(dataset, {})[str(layer)] = le
    if "methods" in summary.skipped:
        pass
    elif "methods" not in cfg.parts:
        summary.skipped["methods"] = "not requested (--part)"
    elif not have_methods:
        summary.skipped["methods"] = "no diffing method has results: run `difflens diff RUN`"
    else:
        summary.methods = _methods(layout, have_methods, ft, relevance_grader if "relevance" not in summary.skipped
                                   else None, description, frequent, cfg, log)
    write_json(layout.evaluation(), summary.model_dump(mode="json"))
    log(f"wrote {layout.evaluation()}")
    return summary


def _tokenizer(layout: RunLayout) -> Any:
    """The pair's tokenizer (the base model's), loaded without the weights: from the manifest, or from
    a diffing method's result in a run that was never collected."""
    from ..models.sources import load_tokenizer

    if layout.manifest.exists():
        return load_tokenizer(read_json(layout.manifest)["models"]["base"]["spec"])
    for path in sorted((layout.root / "methods").glob("*/*.json")):
        try:
            return load_tokenizer(read_json(path)["models"]["base"]["spec"])
        except (KeyError, TypeError, RunDirError):
            continue
    raise RunDirError(f"{layout.root}: no manifest and no method result names the model pair.")


def _methods(layout: RunLayout, have: dict[str, str], ft: FtData | None, grader: Any, description: str | None,
             frequent: Sequence[str], cfg: EvalConfig, log: Any) -> dict[str, Any]:
    """The per-method block (:mod:`difflens.eval.methods`): cached per method by its evidence."""
    import hashlib

    from ..graders import grader_identity
    from ..methods.evidence import evidence
    from ..models.embedder import embed
    from .identify import candidate_descriptions
    from .methods import MethodEval, evaluate_method

    cands, true = None, None
    if ft is not None and description:
        cands = candidate_descriptions(cfg.candidates)
        true = ft.organism if ft.organism in cands else "(true description)"
        if true not in cands:
            cands[true] = description
    cache: dict[str, np.ndarray] = {}

    def embed_fn(texts: Sequence[str]) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if t not in cache]
        if todo:
            for t, v in zip(todo, embed(todo, cfg.embedder)):
                cache[t] = np.asarray(v)
        return np.stack([cache[t] for t in texts])

    memo: dict[tuple[str, ...], list[bool]] = {}
    out: dict[str, Any] = {}
    for name, dataset in have.items():
        ev = evidence(layout, name, dataset, k=cfg.top_k)
        fp = fingerprint({"version": 2, "evidence": hashlib.sha256(ev.model_dump_json().encode()).hexdigest(),
                          "grader": grader_identity(grader) if grader is not None else None, "desc": description,
                          "frequent": list(frequent), "ft": ft.content_hash if ft else None,
                          "cands": sorted(cands.items()) if cands else None, "embedder": cfg.embedder,
                          "n": cfg.similarity_samples, "seed": cfg.seed})
        val = _cached(layout, dataset, 0, f"method-{name}", fp)
        if val is None:
            log(f"method {name}: relevance, similarity to D_ft, identification")
            val = evaluate_method(ev, grader=grader, description=description, frequent=frequent,
                                  ft_texts=ft.texts if ft else None, embed_fn=embed_fn, candidates=cands, true=true,
                                  embedder=cfg.embedder, max_texts=cfg.similarity_samples, seed=cfg.seed,
                                  memo=memo).model_dump(mode="json")
            _store(layout, dataset, 0, f"method-{name}", fp, val)
        out[name] = MethodEval(**val)
    return out


def _similarity(gens: Sequence[A.Generation], ft: FtData, chat: Sequence[str], cfg: EvalConfig) -> dict[str, Any]:
    from .similarity import per_position, steering_similarity

    unsteered = [g.text for g in gens if g.position is None]
    steered = [g.text for g in gens if g.position is not None and g.control is None]
    random = [g.text for g in gens if g.position is not None and g.control == "random"]
    by_pos: dict[int, list[str]] = {}
    for g in gens:
        if g.position is not None and g.control is None:
            by_pos.setdefault(g.position, []).append(g.text)
    kw = dict(embedder=cfg.embedder, max_samples=cfg.similarity_samples, seed=cfg.seed)
    pooled = steering_similarity(steered, unsteered, ft.texts, chat, random=random, **kw)
    per = per_position(by_pos, unsteered, ft.texts, chat, **kw)
    return {"pooled": {k: v.model_dump() for k, v in pooled.items()},
            "per_position": {str(j): {k: v.model_dump() for k, v in d.items()} for j, d in per.items()}}


def _causal(pair: Any, layout: RunLayout, dataset: str, layer: int, ft: FtData, cfg: EvalConfig,
            progress: bool, checkpoint: Path | None = None, key: str = "") -> CausalResult:
    import random

    from ..adl.collect import load_collected
    from ..data.chat import chat_conversations, render_chat
    from ..data.corpora import load_corpus
    from ..models.tokens import encode, rendered_chat_ids
    from .causal import causal_effect

    c = load_collected(layout, dataset, layer)
    n, L = cfg.causal.n_texts, cfg.causal.max_len
    rng = random.Random(f"causal:{cfg.seed}")
    ft_texts = rng.sample(ft.texts, min(len(ft.texts), n))
    pt_pool = [t for t in load_corpus("wiki").texts if isinstance(t, str)]
    pt_texts = rng.sample(pt_pool, min(len(pt_pool), n))
    convs = chat_conversations()
    chats = [render_chat(pair.tokenizer, conv) for conv in rng.sample(convs, min(len(convs), n))]

    def ids(texts: Sequence[str]) -> list[list[int]]:
        return [encode(pair.tokenizer, pair.arch, t, max_tokens=L) for t in texts]

    chat_ids = [rendered_chat_ids(pair.tokenizer, pair.arch, t, max_tokens=L) for t in chats]  # no second BOS
    return causal_effect(pair, layer, c.delta, ids(ft_texts), ids(pt_texts), chat_ids, cfg.causal,
                         progress=progress, checkpoint=checkpoint, key=key)


def _identification(ps: A.PatchscopeResult, gens: Sequence[A.Generation], cands: dict[str, str], true: str,
                    cfg: EvalConfig) -> IdentificationResult:
    from .identify import identification

    positions = sorted({e.position for e in ps.entries if e.source == "delta"})
    tokens = [" ".join(ps.get("delta", j).selected_tokens or ps.get("delta", j).top_tokens(cfg.top_k))
              for j in positions]
    steered = [g.text for g in gens if g.position is not None and g.control is None]
    unsteered = [g.text for g in gens if g.position is None]
    adl = identification([t for t in tokens if t.strip()] + steered, cands, true, embedder=cfg.embedder)
    bb = identification(unsteered, cands, true, embedder=cfg.embedder)
    return IdentificationResult(adl_rank=adl.rank, blackbox_rank=bb.rank, n_candidates=adl.n_candidates, true=true,
                                adl_scores=adl.scores, blackbox_scores=bb.scores)


def _base_answers(pair: Any, gens: Sequence[A.Generation], steer: A.SteeringResult, cfg: EvalConfig) -> list[list[str]]:
    """The base model's answers to the steering prompts, as many per prompt as the finetuned model's
    unsteered ones, at the same temperature and length: ``[[prompt, text], ...]``."""
    from ..adl.steering import generate

    un = [g for g in gens if g.position is None]
    prompts = list(dict.fromkeys(g.prompt for g in un))
    n = max(1, len(un) // max(len(prompts), 1))
    outs = generate(pair, prompts, layer=steer.layer, direction=None, alpha=0.0, eta=steer.eta_ft, n=n,
                    temperature=steer.temperature, max_new_tokens=steer.max_new_tokens or 128, seed=cfg.seed + 17,
                    side="base")
    return [[p, t] for p, ts in zip(prompts, outs) for t in ts]


def _leakage(gens: Sequence[A.Generation], base: Sequence[Sequence[str]] | None, grader: Any, description: str,
             frequent: Sequence[str]) -> LeakageResult:
    """Leakage of the finetuned model's unsteered answers and, as the control, of the base model's."""

    def side(prompts: Sequence[str], texts: Sequence[str]) -> LeakageSide:
        words = grader.relevant_words(texts, description, frequent)
        hits = [i for i, w in enumerate(words) if len(w) >= grader.min_words]
        return LeakageSide(share=len(hits) / max(len(texts), 1), n=len(texts),
                           examples=[{"prompt": prompts[i], "text": texts[i][:300], "words": words[i]} for i in hits[:8]])

    un = [g for g in gens if g.position is None]
    base_side = side([p for p, _ in base], [t for _, t in base]) if base is not None else None
    return LeakageResult(ft=side([g.prompt for g in un], [g.text for g in un]), base=base_side,
                         min_words=grader.min_words, grader=grader.identity())
