"""What each diffing method surfaces: one typed :class:`Evidence` per method, read from its artifacts.

A diffing method is a unit (see the package docstring): a compute stage that writes typed artifacts
where :class:`~difflens.rundir.layout.RunLayout` says, and this module's reader that turns those
artifacts into what the rest of difflens consumes — ranked token lists (the method's own, its
baseline from one model alone, its control on a pair without a narrow finetune), texts (samples,
contexts) and the cost of computing it. The evaluation (:mod:`difflens.eval.methods`), the agent's
per-method overview and the report's per-method sections all start from an :class:`Evidence`, so a
new method needs its compute stage, a reader here, and nothing else to be graded, compared,
reported and handed to the agent.

=========  =====================================  ==========================  ==========================
method     tokens (role ``method``)               baseline (one model alone)  control (no narrow finetune)
=========  =====================================  ==========================  ==========================
adl        δ̄'s Patchscope tokens per position     h̄_base, h̄_ft Patchscope    random vector of δ̄'s norm
mining     top-K occurrence of logits ft − base   ft's own top-K occurrence   noise pair's top-K occ.
kl         raised most where KL is high           ft's top predictions;       noise pair's raised tokens
                                                  where H(P_ft) peaks
amplify    — (texts: amplified samples)           ft samples (β = 0)          noise pair, amplified
=========  =====================================  ==========================  ==========================
"""
from __future__ import annotations

from typing import Any, Callable, Literal

from pydantic import BaseModel, Field

from ..errors import RunDirError
from ..files import jsonl_lines, read_json
from ..rundir import artifacts as A
from ..rundir.layout import RunLayout

__all__ = ["Evidence", "TokenList", "TextSet", "evidence", "available", "UNITS", "MethodUnit", "TOP"]

TOP = 20  # tokens per list: the paper grades the top 20
Role = Literal["method", "baseline", "control"]


class TokenList(BaseModel):
    """One ranked token list: the method's, a baseline's or a control's (``group``: e.g. a position)."""

    role: Role
    name: str  # e.g. "δ̄ Patchscope", "ft alone top-K"
    group: str = ""  # lists of one (role, name) differ by group (ADL: position j)
    tokens: list[str]


class TextSet(BaseModel):
    """Texts a method surfaces (samples, contexts), with the prompts they answer where there are any."""

    role: Role
    name: str
    texts: list[str]
    prompts: list[str] = []
    note: str = ""


class Evidence(BaseModel):
    method: str
    dataset: str
    title: str
    token_lists: list[TokenList] = []
    texts: list[TextSet] = []
    contexts: list[dict[str, Any]] = []  # top contexts: {"stat", "value", "marked", "sample"}
    cost: dict[str, float] = Field(default_factory=dict)  # seconds, forward_tokens
    facts: dict[str, Any] = Field(default_factory=dict)  # method-specific numbers for overviews
    missing: list[str] = []  # parts not computed (e.g. "control: run `difflens diff RUN --control noise`")

    def lists(self, role: Role) -> list[TokenList]:
        return [t for t in self.token_lists if t.role == role]

    def text_sets(self, role: Role) -> list[TextSet]:
        return [t for t in self.texts if t.role == role]

    def identification_texts(self) -> list[str]:
        """The evidence an identifier reads: each of the method's token lists joined into one text,
        and its own texts (never baselines or controls)."""
        out = [" ".join(t.tokens) for t in self.lists("method") if t.tokens]
        out += [x for ts in self.text_sets("method") for x in ts.texts if x.strip()]
        return out


def _dedup(tokens: list[str], n: int) -> list[str]:
    seen, out = set(), []
    for t in tokens:
        key = t.strip().lower()
        if key and key not in seen:
            seen.add(key)
            out.append(t)
        if len(out) >= n:
            break
    return out


# -- ADL ---------------------------------------------------------------------------------------
def _adl_layer(layout: RunLayout, dataset: str) -> int:
    done = [li for d, li in layout.targets([dataset]) if layout.patchscope(d, li).exists()]
    if not done:
        raise RunDirError(f"{layout.root} has no Patchscope result for '{dataset}': run `difflens lens {layout.root}`.")
    return done[0]


def adl_evidence(layout: RunLayout, dataset: str, *, k: int = TOP) -> Evidence:
    """δ̄'s Patchscope tokens per position (the grader's selection first, then the rest of the chosen
    scale's list), h̄_base / h̄_ft as baselines, the random vector as control; steered samples."""
    layer = _adl_layer(layout, dataset)
    ps = A.load(A.PatchscopeResult, layout.patchscope(dataset, layer))
    roles: dict[str, tuple[Role, str]] = {"delta": ("method", "δ̄ Patchscope"), "base": ("baseline", "h̄_base Patchscope"),
                                          "ft": ("baseline", "h̄_ft Patchscope"),
                                          "random": ("control", "random vector Patchscope")}
    lists = []
    for e in ps.entries:
        if e.source in roles:
            role, name = roles[e.source]
            lists.append(TokenList(role=role, name=name, group=f"position {e.position}", tokens=e.top_tokens(k)))
    ev = Evidence(method="adl", dataset=dataset, title=f"Activation Difference Lens (layer {layer})",
                  token_lists=lists, facts={"layer": layer})
    gens_path = layout.steering_generations(dataset, layer)
    if gens_path.exists():
        gens = A.load_jsonl(A.Generation, gens_path)
        steered = [g for g in gens if g.position is not None and g.control is None]
        ev.texts = [TextSet(role="method", name="δ̄-steered", texts=[g.text for g in steered],
                            prompts=[g.prompt for g in steered]),
                    TextSet(role="baseline", name="unsteered finetuned",
                            texts=[g.text for g in gens if g.position is None],
                            prompts=[g.prompt for g in gens if g.position is None]),
                    TextSet(role="control", name="random-direction steered",
                            texts=[g.text for g in gens if g.control == "random"],
                            prompts=[g.prompt for g in gens if g.control == "random"])]
    else:
        ev.missing.append(f"steered samples: run `difflens steer {layout.root}`")
    seconds = 0.0
    stats = layout.collect_stats(dataset)
    if stats.exists():
        st = read_json(stats)
        seconds += float(st.get("seconds", 0.0))
        n, k_pos = int(st.get("n_used", 0)), None
        try:
            k_pos = int(read_json(layout.manifest).get("positions", 0)) or None
        except (RunDirError, AttributeError, ValueError):
            k_pos = None
        ev.facts["samples"] = n
        if k_pos:
            ev.cost["forward_tokens"] = float(2 * n * k_pos)
    for stage in (layout.stage_key("lens", dataset, layer), layout.stage_key("steer", dataset, layer)):
        rec = layout.stage_record(stage)
        if rec.exists():
            seconds += float(read_json(rec).get("seconds", 0.0) or 0.0)
    ev.cost["seconds"] = round(seconds, 2)
    return ev


# -- diff mining -------------------------------------------------------------------------------
def _result(layout: RunLayout, dataset: str, method: str, control: str | None = None) -> dict[str, Any] | None:
    path = layout.method_result(dataset, method, control)
    return read_json(path) if path.exists() else None


def mining_evidence(layout: RunLayout, dataset: str, *, k: int = TOP) -> Evidence:
    res = _result(layout, dataset, "mining")
    if res is None:
        raise RunDirError(f"no diff-mining result for '{dataset}': run `difflens diff {layout.root} --methods mining`.")
    r = res["rankings"]
    where = "final logits" if res.get("layer") is None else f"logit lens at layer {res['layer']}"
    ev = Evidence(method="mining", dataset=dataset, title=f"Diff mining ({where}, K={res['top_k']})",
                  token_lists=[TokenList(role="method", name="top-K occurrence of ft − base",
                                         tokens=[e["token"] for e in r["top_k"][:k]]),
                               TokenList(role="baseline", name="ft alone: top-K occurrence",
                                         tokens=[e["token"] for e in r["ft_top_k"][:k]])],
                  facts={"n_samples": res["n_samples"], "tokens": res["tokens"], "top_k": res["top_k"],
                         "top": [{"token": e["token"], "top_k_fraction": e["top_k_fraction"],
                                  "positive_fraction": e["positive_fraction"], "mean_diff": e["mean_diff"]}
                                 for e in r["top_k"][:k]]})
    ctl = _result(layout, dataset, "mining", "noise")
    if ctl is not None:
        ev.token_lists.append(TokenList(role="control", name="noise pair: top-K occurrence of ft − base",
                                        tokens=[e["token"] for e in ctl["rankings"]["top_k"][:k]]))
    else:
        ev.missing.append(f"control: run `difflens diff {layout.root} --methods mining --control noise`")
    ev.cost = {"seconds": float(res.get("seconds", 0.0)), "forward_tokens": float(2 * res["n_samples"] * res["tokens"])}
    return ev


# -- per-token KL ------------------------------------------------------------------------------
def _peak_tokens(layout: RunLayout, dataset: str, stat: str, control: str | None, k: int,
                 pages: int = 10) -> tuple[list[str], list[Any]]:
    """The tokens marked in the top contexts by ``stat`` (distinct, up to ``k``), and those contexts."""
    from .store import ExamplesStore

    res = _result(layout, dataset, "kl", control)
    if res is None:
        return [], []
    with ExamplesStore.open(layout.method_store(dataset, "kl", control), fingerprint=res["fingerprint"]) as store:
        if stat not in store.ranked_stats():
            return [], []
        tokens: list[str] = []
        contexts: list[Any] = []
        for page in range(pages):
            rows = store.top(stat, page * k, k)
            if not rows:
                break
            contexts += rows
            tokens = _dedup([e.tokens[e.index] for e in contexts], k)
            if len(tokens) >= k:
                break
    return tokens, contexts


def kl_evidence(layout: RunLayout, dataset: str, *, k: int = TOP) -> Evidence:
    """The tokens KL points at — the mean KL over the positions where the finetune raised each token's
    probability most (ids raised most at ≥ 5 positions) — beside the finetuned model's own top predictions and the tokens where its
    entropy peaks (baselines) and the noise pair's raised tokens (control); the top contexts."""
    res = _result(layout, dataset, "kl")
    if res is None:
        raise RunDirError(f"no KL result for '{dataset}': run `difflens diff {layout.root} --methods kl`.")
    _, ctx = _peak_tokens(layout, dataset, "kl_max", None, k)
    rankings = res.get("rankings") or {}
    ev = Evidence(method="kl", dataset=dataset, title=f"Per-token KL and activation differences (layer {res['layer']})",
                  contexts=[{"stat": e.stat, "value": e.value, "sample": e.sample, "marked": e.marked("[[", "]]", 80)}
                            for e in ctx[:k]],
                  facts={s: {"mean": v["mean"], "max": v["max"]} for s, v in res["stats"].items()})
    if rankings.get("raised"):
        ev.token_lists.append(TokenList(role="method", name="tokens the finetune raised most where KL is high",
                                        tokens=[e["token"] for e in rankings["raised"][:k]]))
        ev.token_lists.append(TokenList(role="baseline", name="ft alone: its top predictions",
                                        tokens=[e["token"] for e in rankings["ft_top"][:k]]))
    else:  # a result of an earlier version: the tokens marked in the top contexts
        toks, _ = _peak_tokens(layout, dataset, "kl_max", None, k)
        ev.token_lists.append(TokenList(role="method", name="tokens where KL(P_ft‖P_base) peaks", tokens=toks))
    ev.texts = [TextSet(role="method", name="top KL contexts", texts=[e.marked("", "", 80) for e in ctx[:10]])]
    btoks, _ = _peak_tokens(layout, dataset, "ent_max", None, k)
    if btoks:
        ev.token_lists.append(TokenList(role="baseline", name="ft alone: tokens where H(P_ft) peaks", tokens=btoks))
    ctl = _result(layout, dataset, "kl", "noise")
    if ctl is not None:
        if (ctl.get("rankings") or {}).get("raised"):
            ev.token_lists.append(TokenList(role="control", name="noise pair: tokens raised most where KL is high",
                                            tokens=[e["token"] for e in ctl["rankings"]["raised"][:k]]))
        else:
            ctoks, _ = _peak_tokens(layout, dataset, "kl_max", "noise", k)
            ev.token_lists.append(TokenList(role="control", name="noise pair: tokens where KL peaks", tokens=ctoks))
        ev.facts["control"] = {s: {"mean": v["mean"], "max": v["max"]} for s, v in ctl["stats"].items()}
    else:
        ev.missing.append(f"control: run `difflens diff {layout.root} --methods kl --control noise`")
    ev.cost = {"seconds": float(res.get("seconds", 0.0)), "forward_tokens": float(2 * res["n_samples"] * res["tokens"])}
    return ev


# -- logit-difference amplification ------------------------------------------------------------
def _samples(layout: RunLayout, dataset: str, control: str | None) -> list[dict[str, Any]]:
    import json

    path = layout.method_samples(dataset, "amplify", control)
    if not path.exists():
        return []
    return [json.loads(line) for line in jsonl_lines(path.read_text(encoding="utf-8")) if line.strip()]


def amplify_evidence(layout: RunLayout, dataset: str, *, k: int = TOP) -> Evidence:
    res = _result(layout, dataset, "amplify")
    if res is None:
        raise RunDirError(f"no amplification result for '{dataset}': run `difflens diff {layout.root} --methods amplify`.")
    rows = _samples(layout, dataset, None)

    def texts(role: str, rs: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
        sel = [r for r in rs if r.get("role") == role]
        return [r["text"] for r in sel], [r.get("prompt", "") for r in sel]

    beta = res.get("chosen_beta", res.get("beta"))
    ev = Evidence(method="amplify", dataset=dataset, title=f"Logit-difference amplification (β = {beta})",
                  facts={"beta": beta, "grid": res.get("grid", [])})
    amp, p = texts("amplified", rows)
    ev.texts.append(TextSet(role="method", name=f"amplified, β = {beta}", texts=amp, prompts=p))
    ft, p = texts("ft", rows)
    ev.texts.append(TextSet(role="baseline", name="finetuned (β = 0)", texts=ft, prompts=p))
    base, p = texts("base", rows)
    if base:
        ev.texts.append(TextSet(role="baseline", name="base", texts=base, prompts=p))
    ctl = _samples(layout, dataset, "noise")
    if ctl:
        amp, p = texts("amplified", ctl)
        ev.texts.append(TextSet(role="control", name="noise pair, amplified", texts=amp, prompts=p))
    else:
        ev.missing.append(f"control: run `difflens diff {layout.root} --methods amplify --control noise`")
    ev.cost = {"seconds": float(res.get("seconds", 0.0)), "forward_tokens": float(res.get("forward_tokens", 0.0))}
    return ev


# -- the units ---------------------------------------------------------------------------------
class MethodUnit(BaseModel):
    """A diffing method as difflens knows it: its name, the command that computes it, whether a run
    has it, and the reader of its evidence."""

    name: str
    title: str
    command: str  # how to compute it on a run
    reader: Callable[..., Evidence]
    has: Callable[[RunLayout, str], bool]

    model_config = {"arbitrary_types_allowed": True}


def _has_adl(layout: RunLayout, dataset: str) -> bool:
    try:
        return any(layout.patchscope(d, li).exists() for d, li in layout.targets([dataset]))
    except Exception:  # noqa: BLE001 - no manifest, or another dataset: not there
        return False


UNITS: dict[str, MethodUnit] = {
    "adl": MethodUnit(name="adl", title="Activation Difference Lens", command="difflens collect/lens/steer",
                      reader=adl_evidence, has=_has_adl),
    "mining": MethodUnit(name="mining", title="Diff mining", command="difflens diff RUN --methods mining",
                         reader=mining_evidence, has=lambda L, d: L.method_result(d, "mining").exists()),
    "kl": MethodUnit(name="kl", title="Per-token KL and activation differences", command="difflens diff RUN --methods kl",
                     reader=kl_evidence, has=lambda L, d: L.method_result(d, "kl").exists()),
    "amplify": MethodUnit(name="amplify", title="Logit-difference amplification",
                          command="difflens diff RUN --methods amplify",
                          reader=amplify_evidence, has=lambda L, d: L.method_result(d, "amplify").exists()),
}


def available(layout: RunLayout, dataset: str | None = None) -> dict[str, str]:
    """``{method: dataset}`` for every method this run has results of (ADL on its first collected
    dataset; the others on ``dataset`` or any dataset under ``methods/``)."""
    out: dict[str, str] = {}
    datasets = [dataset] if dataset else []
    if not datasets:
        datasets = layout.collected_datasets()
        mdir = layout.root / "methods"
        if mdir.is_dir():
            datasets += [p.name for p in sorted(mdir.iterdir()) if p.is_dir() and p.name not in datasets]
    for name, unit in UNITS.items():
        for d in datasets:
            if unit.has(layout, d):
                out[name] = d
                break
    return out


def evidence(layout: RunLayout, method: str, dataset: str, *, k: int = TOP) -> Evidence:
    """The evidence ``method`` surfaces on ``dataset`` (a RunDirError naming the command when absent)."""
    if method not in UNITS:
        from ..errors import ConfigError

        raise ConfigError(f"unknown method '{method}'; choose from {', '.join(UNITS)}.")
    return UNITS[method].reader(layout, dataset, k=k)
