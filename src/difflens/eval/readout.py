"""Does the first readout show the organism? Patchscope scale choice and token selection measured
against hand-labelled domain words, per organism and position (issue: validation held out by organism).

Labels (``tests/data/labels/domain_words.json``): per organism, ``set`` (``design``: the organisms the
selection was designed on; ``held-out``: never looked at while designing) and ``domain``: the words of
its finetuning domain, judged by hand over every content word of δ̄'s Patchscope lists at every scale
and position (``other``: the words judged not to be domain words, kept so the judgement can be
reviewed). A token counts as a domain word when one of its inflection stems is a labelled word's.

Per organism × position, for the δ̄ sweep of a finished lens stage re-graded offline (no model):

- ``best``: the most domain words any scale's top-20 holds; ``chosen``: those in the chosen scale's;
- ``hit``: the chosen scale's top-20 holds a domain word although some scale does;
- ``tp``/``n_selected``: domain words among the selected tokens, and how many were selected;
- recall = tp / best (how much of the best available list the selection shows),
  precision = tp / n_selected.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from ..errors import ConfigError
from ..graders.scale import ScaleContext, ScaleGrader, tournament
from ..graders.text import clean_token, word_stems
from ..rundir.artifacts import PatchscopeResult, load

__all__ = ["DomainLabels", "load_domain_labels", "ReadoutRow", "readout_rows", "summarize", "find_patchscope"]


@dataclass(frozen=True)
class DomainLabels:
    organism: str
    set: str
    domain: frozenset[str]
    other: frozenset[str] = frozenset()

    def is_domain(self, token: str) -> bool:
        w = clean_token(token).lower()
        return bool(w) and any(s in self._stems for s in word_stems(w))

    def domain_words(self, tokens: Iterable[str]) -> set[str]:
        """The distinct domain words among ``tokens`` (cleaned, lower case)."""
        return {clean_token(t).lower() for t in tokens if self.is_domain(t)}

    @cached_property
    def _stems(self) -> frozenset[str]:
        return frozenset(s for w in self.domain for s in word_stems(w))


def load_domain_labels(path: str | Path) -> dict[str, DomainLabels]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"domain-word labels not found: {p}")
    try:
        raw = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}: not valid JSON ({e.msg}, line {e.lineno})") from None
    out = {}
    for org, d in raw.items():
        if not isinstance(d, dict) or d.get("set") not in ("design", "held-out") or not isinstance(d.get("domain"), list):
            raise ConfigError(f"{p}: organism {org!r} needs 'set' (design or held-out) and a 'domain' word list")
        out[org] = DomainLabels(org, d["set"], frozenset(w.lower() for w in d["domain"]),
                                frozenset(w.lower() for w in d.get("other", [])))
    return out


def find_patchscope(run: str | Path) -> Path:
    """The (first) Patchscope result of a run directory."""
    hits = sorted(Path(run).glob("lens/*/layer_*/patchscope.json"))
    if not hits:
        raise ConfigError(f"{run}: no Patchscope result (run `difflens lens {run}` first)")
    return hits[0]


@dataclass
class ReadoutRow:
    organism: str
    set: str
    grader: str
    position: int
    best: int
    chosen_scale: float
    chosen: int
    hit: bool | None  # None when no scale holds a domain word
    tp: int
    n_selected: int
    selected: list[str]
    domain_at_best: list[str]


def _sweeps(res: PatchscopeResult, source: str = "delta") -> dict[int, dict[float, list[str]]]:
    return {e.position: {s.scale: [t.token for t in s.tokens[:20]] for s in e.scales}
            for e in res.entries if e.source == source}


def _labelled_positions(labels: DomainLabels, res: PatchscopeResult) -> Iterator[tuple[int, dict[float, list[str]], ScaleContext,
                                                                                      dict[float, set[str]], float]]:
    """Per δ̄ position: its sweep (top-20 per scale), its grading context (as in the lens stage), the
    domain words of each scale's list, and the scale with the most of them (the lowest on ties)."""
    from ..adl.patchscope import scale_context

    stored = {(e.source, e.position): e.scales for e in res.entries}
    for j, sweep in sorted(_sweeps(res).items()):
        domain = {s: labels.domain_words(toks) for s, toks in sweep.items()}
        best_scale = max(sweep, key=lambda s: (len(domain[s]), -s))
        yield j, sweep, scale_context(stored, "delta", j, res.unpatched), domain, best_scale


def readout_rows(organism: str, labels: DomainLabels, res: PatchscopeResult,
                 graders: Mapping[str, ScaleGrader]) -> list[ReadoutRow]:
    """Re-grade δ̄'s stored sweeps with each grader (controls as in the lens stage) and score them."""
    rows = []
    for j, sweep, ctx, domain, best_scale in _labelled_positions(labels, res):
        best = len(domain[best_scale])
        for name, g in graders.items():
            scale, selected, _note = tournament(g, dict(sweep), context=ctx)
            chosen = len(domain[scale])
            sel_words = {clean_token(t).lower() for t in selected}
            tp = len(labels.domain_words(sel_words))
            rows.append(ReadoutRow(organism, labels.set, name, j, best, scale, chosen,
                                   (chosen > 0) if best else None, tp, len(sel_words), list(selected),
                                   sorted(domain[best_scale])))
    return rows


def summarize(rows: Iterable[ReadoutRow]) -> dict[str, dict[str, Any]]:
    """Pooled numbers per (set, grader): hit rate, recall, precision over positions."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        d = out.setdefault(f"{r.set}|{r.grader}", {"set": r.set, "grader": r.grader, "positions": 0,
                                                  "with_domain": 0, "hits": 0, "tp": 0, "best": 0, "selected": 0})
        d["positions"] += 1
        d["selected"] += r.n_selected
        d["tp"] += r.tp
        if r.best:
            d["with_domain"] += 1
            d["hits"] += bool(r.hit)
            d["best"] += r.best
    for d in out.values():
        d["hit_rate"] = d["hits"] / d["with_domain"] if d["with_domain"] else None
        d["recall"] = d["tp"] / d["best"] if d["best"] else None
        d["precision"] = d["tp"] / d["selected"] if d["selected"] else None
    return out


def rows_json(rows: Sequence[ReadoutRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


def scale_cases(organism: str, labels: DomainLabels, res: PatchscopeResult, *, layer_note: str = "") -> list[dict[str, Any]]:
    """Labelled scale-grader cases (``tests/data/labels/scale.jsonl`` format, with controls and the
    other positions) for every δ̄ position where some scale's top-20 holds a domain word.

    Acceptable (``best``) scales hold at least half as many domain words as the best scale (and one);
    ``coherent_tokens`` are the domain words at the best scale. ``source`` names the set
    (``[design]`` / ``[held-out]``), the organism and the position.
    """
    out = []
    for j, sweep, ctx, domain, best_scale in _labelled_positions(labels, res):
        counts = {s: len(words) for s, words in domain.items()}
        top = counts[best_scale]
        if not top:
            continue
        tag, kind = ("held-out", "held-out organism") if labels.set == "held-out" else ("dev", "design organism")
        out.append({
            "scales": {f"{s:g}": toks for s, toks in sweep.items()},
            "best": [s for s, n in counts.items() if n >= max(1, (top + 1) // 2)],
            "coherent_tokens": [t for t in sweep[best_scale] if labels.is_domain(t)],
            "controls": {k: [list(x) for x in v] for k, v in ctx.controls.items()},
            "other_positions": [{f"{s:g}": list(t) for s, t in o.items()} for o in ctx.other_positions],
            "source": f"[{tag}] {organism} ({kind}, real): Patchscope delta pos{j}, {res.dataset}, layer {res.layer}"
                      + (f" ({layer_note})" if layer_note else ""),
        })
    return out
