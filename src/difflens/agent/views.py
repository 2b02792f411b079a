"""What the agent is shown of the diffing methods beside ADL, and the free tools that page it.

Each method's part of the OVERVIEW is built from its :class:`~difflens.methods.evidence.Evidence`
(the same reader the evaluation and the report use), in the spirit of ADL's: the method's ranked
tokens with its baseline's (one model alone) and its control's (a pair without a narrow finetune)
beside them and the method's tokens found in neither ("specific"), so the agent can tell what is
specific to the finetune:

- ``mining``: the top ``k`` tokens of the top-K occurrence of ft − base with their shares and mean
  difference; the finetuned model's own top-K occurrence (baseline) and the noise pair's ranking
  (control); the names of every ranking ``more_tokens`` pages.
- ``kl``: the top contexts by the sample's largest KL(P_ft‖P_base) with the token marked
  ``[[like this]]``; the distinct marked tokens, beside the tokens where the finetuned model alone is
  most uncertain (entropy: baseline) and the noise pair's KL peaks (control); the statistics' means
  and maxima beside the control pair's.
- ``amplify``: per prompt the first amplified sample beside the finetuned model's (β = 0), the base
  model's and the noise pair's amplified one, cut to ``cut`` characters; the chosen β.

Free tools (cost 0, never counted in the model-interaction budget):

- ``more_tokens(method, ranking, offset, n)``: a token ranking from rank ``offset`` on. Diff
  mining: every stored ranking (``top_k``, ``positive``, ``mean_diff``, ``bottom_k``, ``ft_top_k``,
  ``base_top_k``; the control pair's prefixed ``control_``). KL: every statistic the examples store
  ranks samples by (``kl_max``, ``ent_max``, …; ``control_…``), as the distinct marked tokens of the
  ranked contexts in order.
- ``top_contexts(stat, offset, n, control)``: the KL store's contexts ranked by ``stat``, the token
  marked, with every statistic's value at the mark.
- ``amplified_samples(offset, n)``: the amplified samples in order, each beside the finetuned, base
  and control sample of the same prompt and sample index, uncut.

A method the run has no results of is refused when the views are built, with the command that
computes it (:func:`resolve_methods`): the agent never starts on missing evidence.
"""
from __future__ import annotations

from typing import Any

from ..errors import RunDirError
from ..files import read_json
from ..rundir.layout import RunLayout
from .args import Args, ToolError, cut, fmt_list, prob
from .prompts import AGENT_METHOD_CHOICES, AGENT_METHODS, EVIDENCE_TOOLS

__all__ = ["MethodViews", "resolve_methods", "OVERVIEW_CONTEXTS", "MAX_PAGE", "MAX_TOKENS", "ALLOWED"]

OVERVIEW_CONTEXTS = 8
"""Top contexts the KL overview shows."""
OVERVIEW_PROMPTS = 20
"""Most prompts the amplification overview shows (one sample per role each)."""
MAX_PAGE = 20
"""Most contexts or samples per top_contexts / amplified_samples call."""
MAX_TOKENS = 100
"""Most tokens per more_tokens call."""
_SCAN = 200  # contexts read per store page while collecting distinct tokens
_SCAN_LIMIT = 5000  # most contexts read for one more_tokens call on the KL store

ALLOWED: dict[str, tuple[str, ...]] = {
    "more_tokens": ("method", "ranking", "offset", "n"),
    "top_contexts": ("stat", "offset", "n", "control"),
    "amplified_samples": ("offset", "n"),
}
"""The arguments each of the views' free tools accepts."""


def _command(method: str, root: Any) -> str:
    from ..methods.evidence import UNITS

    if method == "adl":
        return f"difflens lens {root} and difflens steer {root}"
    return UNITS[method].command.replace("RUN", str(root))


def resolve_methods(layout: RunLayout, method: str) -> dict[str, str]:
    """``{method: dataset}`` of the evidence an agent given ``method`` starts from (``all``: every
    method the run has, ADL first). A RunDirError naming the command that computes it when the run
    lacks it (``all``: lacks every method)."""
    from ..methods.evidence import UNITS, available

    if method not in AGENT_METHOD_CHOICES:
        from ..errors import ConfigError

        raise ConfigError(f"unknown method '{method}'; choose from {', '.join(AGENT_METHOD_CHOICES)}.")
    have = available(layout)
    if method == "all":
        out = {m: have[m] for m in AGENT_METHODS if m in have}
        if not out:
            raise RunDirError(f"{layout.root} has results of no diffing method: run "
                              f"`{_command('adl', layout.root)}`, or `difflens diff {layout.root} --methods "
                              f"mining,kl,amplify` first.")
        return out
    if method not in have:
        raise RunDirError(f"{layout.root} has no {UNITS[method].title} results for the agent: run "
                          f"`{_command(method, layout.root)}` first.")
    return {method: have[method]}


def _fold(token: str) -> str:
    return token.strip().casefold()


def _stats(d: dict[str, Any]) -> dict[str, Any]:
    """Numbers rounded to 4 significant digits, nested dicts kept."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out[k] = _stats(v)
        elif isinstance(v, float):
            out[k] = prob(v)
        else:
            out[k] = v
    return out


class _View:
    """One method's evidence on one dataset, its overview section and its pages."""

    def __init__(self, layout: RunLayout, method: str, dataset: str, *, k: int, cut_chars: int):
        from ..methods.evidence import evidence

        self.layout, self.method, self.dataset, self.k, self.cut = layout, method, dataset, k, cut_chars
        self.ev = evidence(layout, method, dataset, k=k)  # RunDirError naming the command when absent

    # -- token lists ------------------------------------------------------------------------------
    def _lists(self, role: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for t in self.ev.lists(role):  # type: ignore[arg-type]
            out[t.name + (f" ({t.group})" if t.group else "")] = list(t.tokens)
        return out

    def _token_part(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        own = self._lists("method")
        if not own:
            return out
        out["tokens"] = next(iter(own.values())) if len(own) == 1 else own
        for role in ("baseline", "control"):
            lists = self._lists(role)
            if lists:
                out[role] = lists
        others = {_fold(t) for role in ("baseline", "control") for ts in self._lists(role).values() for t in ts}
        mine = [t for ts in own.values() for t in ts]
        out["specific"] = list(dict.fromkeys(t for t in mine if _fold(t) and _fold(t) not in others))
        return out

    def overview(self) -> dict[str, Any]:
        ev = self.ev
        out: dict[str, Any] = {"method": ev.method, "title": ev.title, "dataset": ev.dataset}
        out.update(self._token_part())
        if ev.contexts:
            out["top_contexts"] = [{"value": prob(c["value"]), "text": c["marked"]}
                                   for c in ev.contexts[:OVERVIEW_CONTEXTS]]
        rows = self._sample_rows(first_only=True)
        if rows:
            out["samples"] = [{k: (cut(v, self.cut) if k != "prompt" else v) for k, v in r.items()
                               if k not in ("index", "sample")} for r in rows[:OVERVIEW_PROMPTS]]
        facts = {k: v for k, v in ev.facts.items() if k != "top"}
        if facts:
            out["facts"] = _stats(facts)
        if ev.missing:
            out["missing"] = list(ev.missing)
        return out

    # -- texts (generating methods) ---------------------------------------------------------------
    def _columns(self) -> list[tuple[str, Any]]:
        """(key, TextSet) of the text sets that answer prompts (samples, not contexts), the method's first."""
        out: list[tuple[str, Any]] = []
        used: set[str] = set()
        for role in ("method", "baseline", "control"):
            for ts in self.ev.text_sets(role):  # type: ignore[arg-type]
                if not ts.texts or len(ts.prompts) != len(ts.texts) or not any(p.strip() for p in ts.prompts):
                    continue
                if role == "method":
                    key = "amplified" if self.method == "amplify" else "method"
                elif role == "control":
                    key = "control"
                else:
                    key = (ts.name.split()[0].strip("(),").casefold() or "baseline")
                base, i = key, 2
                while key in used:
                    key, i = f"{base}_{i}", i + 1
                used.add(key)
                out.append((key, ts))
        return out

    def _sample_rows(self, *, first_only: bool = False) -> list[dict[str, Any]]:
        """The method's texts in order, each beside the other roles' text of the same prompt and
        occurrence (sample index within the prompt)."""
        cols = self._columns()
        if not cols or cols[0][0] not in ("amplified", "method"):
            return []
        per: list[tuple[str, dict[tuple[str, int], str]]] = []
        for key, ts in cols:
            seen: dict[str, int] = {}
            table: dict[tuple[str, int], str] = {}
            for p, t in zip(ts.prompts, ts.texts):
                i = seen.get(p, 0)
                seen[p] = i + 1
                table[(p, i)] = t
            per.append((key, table))
        rows = []
        for p, i in per[0][1]:
            if first_only and i > 0:
                continue
            row: dict[str, Any] = {"index": len(rows), "prompt": p, "sample": i}
            for key, table in per:
                if (p, i) in table:
                    row[key] = table[(p, i)]
            rows.append(row)
        return rows

    def amplified_samples(self, offset: int, n: int) -> dict[str, Any]:
        rows = self._sample_rows()
        page = rows[offset:offset + n]
        nxt = offset + n if offset + n < len(rows) else None
        return {"method": self.method, "dataset": self.dataset, "offset": offset, "total": len(rows),
                "next_offset": nxt, "samples": page}


class _MiningView(_View):
    def __init__(self, *a: Any, **kw: Any):
        super().__init__(*a, **kw)
        self.result = read_json(self.layout.method_result(self.dataset, "mining"))
        path = self.layout.method_result(self.dataset, "mining", "noise")
        self.control = read_json(path) if path.exists() else None

    def rankings(self) -> list[str]:
        names = list(self.result.get("rankings", {}))
        if self.control is not None:
            names += [f"control_{r}" for r in self.control.get("rankings", {})]
        return names

    def overview(self) -> dict[str, Any]:
        out = super().overview()
        top = self.ev.facts.get("top") or []
        if top:
            out["tokens"] = [{"token": e["token"], "top_k_share": prob(e["top_k_fraction"]),
                              "positive_share": prob(e["positive_fraction"]), "mean_diff": prob(e["mean_diff"])}
                             for e in top]
        facts = out.pop("facts", {})
        out["setup"] = {"samples": facts.get("n_samples"), "tokens_per_sample": facts.get("tokens"),
                        "top_k": facts.get("top_k")}
        out["rankings"] = self.rankings()
        return out

    def more_tokens(self, ranking: str, offset: int, n: int) -> dict[str, Any]:
        src = self.result
        name = ranking
        if ranking.startswith("control_"):
            src, name = self.control or {}, ranking[len("control_"):]
        entries = (src.get("rankings") or {})[name]
        page = entries[offset:offset + n]
        rows = [{"rank": offset + i, "token": e["token"], "top_k_share": prob(e["top_k_fraction"]),
                 "positive_share": prob(e["positive_fraction"]), "mean_diff": prob(e["mean_diff"]),
                 "ft_top_k_count": e.get("ft_top_k_count")} for i, e in enumerate(page)]
        nxt = offset + n if offset + n < len(entries) else None
        return {"method": "mining", "ranking": ranking, "offset": offset, "total": len(entries), "next_offset": nxt,
                "tokens": rows}


class _KLView(_View):
    def __init__(self, *a: Any, **kw: Any):
        super().__init__(*a, **kw)
        self.result = read_json(self.layout.method_result(self.dataset, "kl"))
        path = self.layout.method_result(self.dataset, "kl", "noise")
        self.control = read_json(path) if path.exists() else None
        self._ranked: dict[bool, list[str]] = {}

    def _store(self, control: bool) -> Any:
        from ..methods.store import ExamplesStore

        res = self.control if control else self.result
        if res is None:
            raise ToolError("this run has no KL results for the control pair (control: false reads the run's own)")
        return ExamplesStore.open(self.layout.method_store(self.dataset, "kl", "noise" if control else None),
                                  fingerprint=res["fingerprint"])

    def stats(self, control: bool = False) -> list[str]:
        if control not in self._ranked:
            if control and self.control is None:
                self._ranked[control] = []
            else:
                with self._store(control) as st:
                    self._ranked[control] = st.ranked_stats()
        return self._ranked[control]

    def rankings(self) -> list[str]:
        return self.stats(False) + [f"control_{s}" for s in self.stats(True)]

    def overview(self) -> dict[str, Any]:
        out = super().overview()
        facts = out.pop("facts", {})
        ctl = facts.pop("control", None)
        out["stats"] = facts
        if ctl:
            out["control_stats"] = ctl
        out["layer"] = self.result.get("layer")
        out["context_stats"] = self.stats(False)
        if self.control is not None:
            out["context_stats_control"] = self.stats(True)
        return out

    def top_contexts(self, stat: str, offset: int, n: int, control: bool) -> dict[str, Any]:
        with self._store(control) as st:
            rows = st.top(stat, offset, n)
            total = st.count()
        out = []
        for e in rows:
            at = {}
            for s, vals in e.values.items():
                if 0 <= e.position < len(vals):
                    at[s] = prob(vals[e.position])
            out.append({"rank": e.rank, "sample": e.sample, "value": prob(e.value), "token": e.tokens[e.index],
                        "text": e.marked("[[", "]]", max(self.cut, 80)), "at_mark": at})
        nxt = offset + n if offset + n < total else None
        return {"method": "kl", "stat": stat, "pair": "control" if control else "run", "offset": offset,
                "total": total, "next_offset": nxt, "contexts": out}

    def more_tokens(self, ranking: str, offset: int, n: int) -> dict[str, Any]:
        control = ranking.startswith("control_")
        stat = ranking[len("control_"):] if control else ranking
        seen: dict[str, dict[str, Any]] = {}
        read, exhausted = 0, False
        with self._store(control) as st:
            while len(seen) < offset + n and read < _SCAN_LIMIT:
                rows = st.top(stat, read, _SCAN)
                if not rows:
                    exhausted = True
                    break
                read += len(rows)
                for e in rows:
                    tok = e.tokens[e.index]
                    key = _fold(tok)
                    if not key:
                        continue
                    if key not in seen:
                        seen[key] = {"token": tok, "first_rank": e.rank, "value": prob(e.value), "contexts": 0}
                    seen[key]["contexts"] += 1
            total = st.count()
            exhausted = exhausted or read >= total
        ordered = list(seen.values())
        page = [{"rank": offset + i, **r} for i, r in enumerate(ordered[offset:offset + n])]
        more = len(ordered) > offset + n or not exhausted
        return {"method": "kl", "ranking": ranking, "offset": offset, "next_offset": offset + n if more else None,
                "contexts_read": read, "total_contexts": total,
                "note": "distinct marked tokens of the contexts ranked by the statistic, in order; 'contexts' "
                        "counts the contexts read so far that mark the token", "tokens": page}


class _AmplifyView(_View):
    def __init__(self, *a: Any, **kw: Any):
        super().__init__(*a, **kw)
        self.result = read_json(self.layout.method_result(self.dataset, "amplify"))

    def overview(self) -> dict[str, Any]:
        out = super().overview()
        facts = out.pop("facts", {})
        beta = facts.get("beta")
        if beta is None:  # the result names it chosen_beta
            beta = self.result.get("chosen_beta")
            if beta is not None:
                out["title"] = f"Logit-difference amplification (β = {beta:g})"
        out["beta"] = beta
        if "any_coherent" in self.result:
            out["any_coherent"] = bool(self.result["any_coherent"])
        out["samples_total"] = len(self._sample_rows())
        return out


_VIEWS = {"mining": _MiningView, "kl": _KLView, "amplify": _AmplifyView}


class MethodViews:
    """The overview and free tools of an agent given ``method``'s evidence (``all``: every method the
    run has; ADL's own part stays with :class:`~.tools.Toolbox`). Built eagerly: missing evidence
    raises RunDirError here, before any episode starts."""

    def __init__(self, layout: RunLayout, method: str, *, overview_k: int = 20, cut_chars: int = 200):
        self.layout, self.method = layout, method
        self.datasets = resolve_methods(layout, method)  # {method: dataset}
        self.views: dict[str, _View] = {m: _VIEWS[m](layout, m, d, k=overview_k, cut_chars=cut_chars)
                                        for m, d in self.datasets.items() if m in _VIEWS}

    @property
    def methods(self) -> list[str]:
        return list(self.datasets)

    def tool_names(self) -> list[str]:
        return [t for m in self.views for t in EVIDENCE_TOOLS[m]]

    def overview(self, method: str) -> dict[str, Any]:
        return self.views[method].overview()

    def not_computed(self) -> dict[str, str]:
        """Methods the run lacks, with the command that computes each."""
        return {m: f"run `{_command(m, self.layout.root)}`" for m in AGENT_METHODS if m not in self.datasets}

    # -- tools ------------------------------------------------------------------------------------
    def _token_methods(self) -> list[str]:
        return [m for m in ("mining", "kl") if m in self.views]

    def parse(self, tool: str, a: Args) -> dict[str, Any]:
        if tool == "more_tokens":
            ms = self._token_methods()
            if a.get("method") is None and len(ms) > 1:
                raise ToolError(f"more_tokens needs 'method': one of {fmt_list(ms)}")
            m = a.choice("method", ms, default=ms[0])
            view = self.views[m]
            names = view.rankings()  # type: ignore[attr-defined]
            ranking = a.choice("ranking", names, default=names[0] if m == "mining" else "kl_max")
            return {"method": m, "ranking": ranking, "offset": a.integer("offset", lo=0, hi=1_000_000, default=0),
                    "n": a.integer("n", lo=1, hi=MAX_TOKENS, default=view.k)}
        if tool == "top_contexts":
            view = self.views["kl"]
            control = a.boolean("control")
            stats = view.stats(control)  # type: ignore[attr-defined]
            if control and not stats:
                raise ToolError("this run has no KL results for the control pair; use control: false")
            return {"stat": a.choice("stat", stats, default="kl_max" if "kl_max" in stats else stats[0]),
                    "offset": a.integer("offset", lo=0, hi=1_000_000, default=0),
                    "n": a.integer("n", lo=1, hi=MAX_PAGE, default=10), "control": control}
        # amplified_samples
        return {"offset": a.integer("offset", lo=0, hi=1_000_000, default=0),
                "n": a.integer("n", lo=1, hi=MAX_PAGE, default=10)}

    def call(self, tool: str, p: dict[str, Any]) -> dict[str, Any]:
        if tool == "more_tokens":
            return self.views[p["method"]].more_tokens(p["ranking"], p["offset"], p["n"])  # type: ignore[attr-defined]
        if tool == "top_contexts":
            return self.views["kl"].top_contexts(p["stat"], p["offset"], p["n"], p["control"])  # type: ignore
        return self.views["amplify"].amplified_samples(p["offset"], p["n"])

    def specs(self, tool: str) -> tuple[dict[str, Any], list[str]]:
        """(JSON-schema properties, required) of one of the views' tools."""
        offset = {"type": "integer", "minimum": 0, "description": "0-based rank or index to start from (default 0)"}
        if tool == "more_tokens":
            ms = self._token_methods()
            names = [r for m in ms for r in self.views[m].rankings()]  # type: ignore[attr-defined]
            return ({"method": {"type": "string", "enum": ms, "description": "the method whose ranking to page"},
                     "ranking": {"type": "string", "enum": list(dict.fromkeys(names)),
                                 "description": "ranking name (default: the method's own)"},
                     "offset": offset,
                     "n": {"type": "integer", "minimum": 1, "maximum": MAX_TOKENS, "description": "tokens to return"}},
                    ["method"] if len(ms) > 1 else [])
        if tool == "top_contexts":
            stats = list(dict.fromkeys(self.views["kl"].stats(False) + self.views["kl"].stats(True)))  # type: ignore
            return ({"stat": {"type": "string", "enum": stats, "description": "per-sample statistic (default kl_max)"},
                     "offset": offset,
                     "n": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "description": "contexts to return"},
                     "control": {"type": "boolean", "description": "read the control pair's contexts"}}, [])
        return ({"offset": offset,
                 "n": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "description": "samples to return"}}, [])
