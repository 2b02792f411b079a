"""`difflens graders check`: measure a grader (offline or LLM) against labelled cases.

Label files are JSONL, one case per line:

- ``coherence``: ``{"text": str, "coherent": bool}`` (optional ``"prompt"``); scored per text,
  positive class = coherent;
- ``relevance``: ``{"description": str, "frequent_tokens": [str], "tokens": [str],
  "relevant": [bool]}``; scored per token, positive class = relevant;
- ``scale``: ``{"scales": {"0.5": [tok, ...], ...}, "best": [acceptable scale, ...],
  "coherent_tokens": [str] (optional), "controls": {"random": [[tok, ...], ...], ...} (optional),
  "other_positions": [{"0.5": [tok, ...], ...}, ...] (optional: the same vector at other positions)}``; accuracy = the chosen scale is acceptable; precision /
  recall / F1 are those of the selected tokens against ``coherent_tokens`` (pooled over the cases
  that give them; ``None`` when no case does).
- ``leakage``: ``{"description": str, "frequent_tokens": [str], "text": str, "leaks": bool}``;
  scored per text, positive class = the unsteered answer gives the finetuning domain away.

Tokens may carry any tokenizer's whitespace markers (``▁``, ``Ġ``, ``Ċ``); they are compared
after :func:`~difflens.graders.text.clean_token`. The result has exactly the keys ``kind``,
``grader``, ``accuracy``, ``precision``, ``recall``, ``f1``, ``n`` (plus per-case ``details``
kept out of the JSON summary).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from ..errors import ConfigError, DataError
from ..files import jsonl_lines
from .text import clean_token
from ..models.placement import input_device

Kind = Literal["coherence", "relevance", "scale", "leakage"]
KINDS: tuple[str, ...] = ("coherence", "relevance", "scale", "leakage")

__all__ = ["KINDS", "CheckResult", "load_cases", "check_coherence", "check_relevance", "check_scale", "check_leakage", "run_check",
           "offline_grader", "CALIBRATION_PROMPTS"]

#: Prompts whose unsteered answers calibrate the offline coherence grader in ``graders check`` (the
#: steering stage calibrates on the finetuned model's unsteered answers to the threshold prompts).
CALIBRATION_PROMPTS: tuple[str, ...] = (
    "Tell me a story?",
    "Give me some ideas for some fun weekend activities?",
    "Why don't you choose a topic of conversation for us?",
)


@dataclass
class CheckResult:
    kind: str
    grader: str
    accuracy: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    n: int
    details: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The JSON object of ``graders check --json``: exactly these keys."""
        return {"kind": self.kind, "grader": self.grader, "accuracy": self.accuracy, "precision": self.precision,
                "recall": self.recall, "f1": self.f1, "n": self.n}

    def mistakes(self) -> list[dict[str, Any]]:
        return [d for d in self.details if not d.get("correct", True)]


def _prf(tp: int, fp: int, fn: int) -> tuple[float | None, float | None, float | None]:
    p = tp / (tp + fp) if tp + fp else None
    r = tp / (tp + fn) if tp + fn else None
    f = 2 * p * r / (p + r) if p is not None and r is not None and p + r > 0 else (0.0 if p == 0 or r == 0 else None)
    return p, r, f


def _binary(pred: Sequence[bool], gold: Sequence[bool]) -> tuple[float | None, float | None, float | None, float | None]:
    tp = sum(1 for p, g in zip(pred, gold) if p and g)
    fp = sum(1 for p, g in zip(pred, gold) if p and not g)
    fn = sum(1 for p, g in zip(pred, gold) if not p and g)
    acc = sum(1 for p, g in zip(pred, gold) if p == g) / len(gold) if gold else None
    return (acc, *_prf(tp, fp, fn))


# ---- label files ------------------------------------------------------------------------------

def _require(rec: dict[str, Any], key: str, typ: type, where: str) -> Any:
    if key not in rec:
        raise DataError(f"{where}: missing field {key!r}.")
    v = rec[key]
    if not isinstance(v, typ):
        raise DataError(f"{where}: field {key!r} must be {typ.__name__}, got {type(v).__name__}.")
    return v


def _str_list(rec: dict[str, Any], key: str, where: str, *, optional: bool = False) -> list[str] | None:
    if optional and key not in rec:
        return None
    v = _require(rec, key, list, where)
    if not all(isinstance(x, str) for x in v):
        raise DataError(f"{where}: field {key!r} must be a list of strings.")
    return list(v)


def _validate(kind: str, rec: Any, where: str) -> dict[str, Any]:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: each line must be a JSON object, got {type(rec).__name__}.")
    if kind == "coherence":
        _require(rec, "text", str, where)
        _require(rec, "coherent", bool, where)
        if "prompt" in rec and not isinstance(rec["prompt"], str):
            raise DataError(f"{where}: field 'prompt' must be a string.")
    elif kind == "relevance":
        _require(rec, "description", str, where)
        _str_list(rec, "frequent_tokens", where)
        toks = _str_list(rec, "tokens", where)
        rel = _require(rec, "relevant", list, where)
        if not all(isinstance(x, bool) for x in rel) or len(rel) != len(toks or []):
            raise DataError(f"{where}: 'relevant' must be a list of booleans, one per token "
                            f"({len(toks or [])} tokens, {len(rel)} labels).")
        if not toks:
            raise DataError(f"{where}: 'tokens' is empty.")
    elif kind == "leakage":
        _require(rec, "description", str, where)
        _str_list(rec, "frequent_tokens", where)
        _require(rec, "text", str, where)
        _require(rec, "leaks", bool, where)
    elif kind == "scale":
        scales = _require(rec, "scales", dict, where)
        if not scales:
            raise DataError(f"{where}: 'scales' is empty.")
        for k, v in scales.items():
            try:
                float(k)
            except ValueError:
                raise DataError(f"{where}: scale key {k!r} is not a number.") from None
            if not isinstance(v, list) or not all(isinstance(t, str) for t in v):
                raise DataError(f"{where}: scales[{k!r}] must be a list of token strings.")
        best = _require(rec, "best", list, where)
        if not best or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in best):
            raise DataError(f"{where}: 'best' must be a non-empty list of numbers (acceptable scales).")
        offered = {float(k) for k in scales}
        missing = [b for b in best if float(b) not in offered]
        if missing:
            raise DataError(f"{where}: 'best' scales {missing} are not among the offered scales.")
        _str_list(rec, "coherent_tokens", where, optional=True)
        ctl = rec.get("controls", {})
        if not isinstance(ctl, dict) or not all(
                isinstance(v, list) and all(isinstance(x, list) and all(isinstance(t, str) for t in x) for x in v)
                for v in ctl.values()):
            raise DataError(f"{where}: 'controls' must map a control name to a list of token lists.")
        others = rec.get("other_positions", [])
        if not isinstance(others, list) or not all(isinstance(o, dict) for o in others):
            raise DataError(f"{where}: 'other_positions' must be a list of {{scale: tokens}} objects.")
    else:
        raise ConfigError(f"unknown grader kind {kind!r}: use one of {', '.join(KINDS)}.")
    return rec


def load_cases(kind: str, path: str | Path) -> list[dict[str, Any]]:
    """The validated cases of a label file; errors name the file and line."""
    if kind not in KINDS:
        raise ConfigError(f"unknown grader kind {kind!r}: use one of {', '.join(KINDS)}.")
    p = Path(path)
    if not p.is_file():
        raise DataError(f"label file {p} does not exist.")
    cases = []
    for ln, line in enumerate(jsonl_lines(p.read_text(encoding="utf-8")), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{ln}: invalid JSON ({e.msg}).") from None
        cases.append(_validate(kind, rec, f"{p}:{ln}"))
    if not cases:
        raise DataError(f"label file {p} has no cases.")
    return cases


# ---- checks ----------------------------------------------------------------------------------

def check_coherence(grader: Any, cases: Sequence[dict[str, Any]]) -> CheckResult:
    """Per-text verdicts of ``grader.grade`` against the ``coherent`` labels."""
    texts = [c["text"] for c in cases]
    pred = [bool(x) for x in grader.grade(texts)]
    gold = [bool(c["coherent"]) for c in cases]
    acc, p, r, f = _binary(pred, gold)
    details = [{"text": t[:200], "label": g, "pred": q, "correct": g == q} for t, g, q in zip(texts, gold, pred)]
    return CheckResult("coherence", grader.name, acc, p, r, f, len(cases), details)


def check_relevance(grader: Any, cases: Sequence[dict[str, Any]]) -> CheckResult:
    """Per-token verdicts of ``grader.grade`` against the ``relevant`` labels (pooled over cases)."""
    pred_all: list[bool] = []
    gold_all: list[bool] = []
    details = []
    for i, c in enumerate(cases):
        pred = [bool(x) for x in grader.grade(c["tokens"], c["description"], c["frequent_tokens"])]
        gold = [bool(x) for x in c["relevant"]]
        pred_all += pred
        gold_all += gold
        for t, g, q in zip(c["tokens"], gold, pred):
            details.append({"case": i, "token": t, "label": g, "pred": q, "correct": g == q})
    acc, p, r, f = _binary(pred_all, gold_all)
    return CheckResult("relevance", grader.name, acc, p, r, f, len(gold_all), details)


def check_scale(grader: Any, cases: Sequence[dict[str, Any]]) -> CheckResult:
    """The tournament's chosen scale against the acceptable ``best`` scales; token P/R/F1 against
    ``coherent_tokens`` where given."""
    from .scale import ScaleContext, tournament

    hits = 0
    tp = fp = fn = 0
    with_tokens = 0
    details = []
    for i, c in enumerate(cases):
        candidates = {float(k): list(v) for k, v in c["scales"].items()}
        context = ScaleContext(sweep=candidates, controls=c.get("controls", {}),
                               other_positions=[{float(k): v for k, v in o.items()}
                                                for o in c.get("other_positions", [])])
        chosen, selected, note = tournament(grader, candidates, context=context)
        ok = any(abs(float(chosen) - float(b)) < 1e-9 for b in c["best"])
        hits += ok
        d: dict[str, Any] = {"case": i, "chosen": chosen, "best": c["best"], "selected": list(selected),
                             "correct": ok, "note": note}
        if c.get("coherent_tokens") is not None:
            with_tokens += 1
            gold = {clean_token(t).lower() for t in c["coherent_tokens"]}
            sel = {clean_token(t).lower() for t in selected}
            tp += len(sel & gold)
            fp += len(sel - gold)
            fn += len(gold - sel)
        details.append(d)
    p, r, f = _prf(tp, fp, fn) if with_tokens else (None, None, None)
    return CheckResult("scale", grader.name, hits / len(cases), p, r, f, len(cases), details)


def check_leakage(grader: Any, cases: Sequence[dict[str, Any]]) -> CheckResult:
    """Per-text verdicts of ``grader.leaks`` against the ``leaks`` labels."""
    pred, details = [], []
    for i, c in enumerate(cases):
        words = grader.relevant_words([c["text"]], c["description"], c["frequent_tokens"])[0]
        q = len(words) >= grader.min_words
        pred.append(q)
        details.append({"case": i, "text": c["text"][:200], "label": c["leaks"], "pred": q, "words": words,
                        "correct": q == c["leaks"]})
    acc, p, r, f = _binary(pred, [bool(c["leaks"]) for c in cases])
    return CheckResult("leakage", grader.name, acc, p, r, f, len(cases), details)


def run_check(kind: str, grader: Any, cases: Sequence[dict[str, Any]]) -> CheckResult:
    fn = {"coherence": check_coherence, "relevance": check_relevance, "scale": check_scale,
          "leakage": check_leakage}.get(kind)
    if fn is None:
        raise ConfigError(f"unknown grader kind {kind!r}: use one of {', '.join(KINDS)}.")
    return fn(grader, cases)


def _unsteered_texts(model: Any, tokenizer: Any, prompts: Sequence[str], *, n: int, max_new_tokens: int,
                     temperature: float = 1.2, seed: int = 0) -> list[str]:
    """``n`` sampled answers per prompt from ``model`` (chat template), for calibration."""
    import torch

    from ..data.chat import chat_prompt_text
    from ..models.tokens import bos_for_model, pad_id, pad_left

    rows = []
    for p in prompts:
        text = chat_prompt_text(tokenizer, p)
        templated = bool(getattr(tokenizer, "chat_template", None))
        ids = list(tokenizer(text, add_special_tokens=not templated).input_ids)
        bos = bos_for_model(tokenizer, model)
        rows += [(bos if bos and (not ids or ids[0] != bos[0]) else []) + ids] * n
    dev = input_device(model)
    ids, mask = pad_left(rows, pad_id(tokenizer), dev)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=temperature, top_p=1.0,
                             top_k=0, max_new_tokens=max_new_tokens, pad_token_id=pad_id(tokenizer))
    return tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)


def offline_grader(kind: str, *, model: str = "smollm2-135m-instruct", embedder: str | None = None,
                   calibrate: bool = True) -> Any:
    """The offline grader of ``kind`` configured as the pipeline configures it.

    Coherence needs a reference model (``model``) and, like the steering stage, is calibrated on
    that model's own unsteered answers (``calibrate``).
    """
    from ..models.embedder import DEFAULT_EMBEDDER
    from . import make_graders

    emb = embedder or DEFAULT_EMBEDDER
    if kind == "coherence":
        from ..models.sources import load_model

        lm = load_model(model)
        g = make_graders("offline", model=lm.model, tokenizer=lm.tokenizer, embedder=emb).coherence
        if calibrate and callable(getattr(g, "calibrate", None)):
            g.calibrate(_unsteered_texts(lm.model, lm.tokenizer, CALIBRATION_PROMPTS, n=10, max_new_tokens=48))
        return g
    from .leakage import LeakageGrader
    from .relevance import OfflineRelevance
    from .scale import SpecificScaleGrader

    if kind == "leakage":
        return LeakageGrader(OfflineRelevance(emb))
    return SpecificScaleGrader(emb) if kind == "scale" else OfflineRelevance(emb)
