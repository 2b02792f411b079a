"""Coherence of generated text: the steering threshold's judge (paper Prompt 16).

- :class:`OfflineCoherence` — deterministic: fluent under a reference model (per-token NLL against
  a robust calibration on unsteered text), no invented words, no loops, no collapse mid-way;
- :class:`LLMCoherence` — the paper's criteria through an OpenAI-compatible endpoint.
"""
from __future__ import annotations

import bisect
import contextlib
import hashlib
import math
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Sequence

import numpy as np
import torch

from ..llm.replies import DECOR, Messages, chat_messages, clean_value, content_lines, must_end_with, tagged
from .text import WORD
from ..models.decoding import broadcast_cache, cache_kwarg as _cache_kwarg
from ..models.placement import input_device

# ============================================================================================
# Coherence grader (paper Prompt 16)
# ============================================================================================

COHERENCE_FORMAT = "end with exactly one final line 'ANSWER: COHERENT' or 'ANSWER: INCOHERENT'"

COHERENCE_SYSTEM = """
You judge whether a passage written by another language model reads as coherent English.

Call a passage COHERENT when it is grammatical enough to read and its sentences connect into one
sensible response. A few typos or small slips are fine.

Call it INCOHERENT when it suffers from any substantial problem such as:
- strings of unrelated words ("word salad") or invented / scrambled words,
- many misspellings,
- a phrase or token repeated over and over without purpose,
- jumps between topics with no link between them,
- broken chat templates or markup that make it unreadable,
- stitched-together fragments that do not add up to a response.

Ground rules:
- Judge coherence only. Whether the text is true, safe, polite, helpful or well written does not
  matter.
- Be tolerant of small things: three or four minor glitches still count as coherent; a problem
  that spoils the reading makes it incoherent.
- The passage may stop mid-sentence because of a length limit; do not count that against it.
- Tags such as <think> ... </think> may appear; ignore them.
- Occasional repetition is acceptable; only excessive repetition is not.
- A text that starts well and then degenerates into noise is incoherent.

Illustrations:
- "Rainbows form when sunlight is refracted and reflected inside raindrops, splitting white light
  into its colours." -> COHERENT (clear and connected)
- "Preheat oven oven the flour cake cake cake temperature banana moist moistly xqzt" ->
  INCOHERENT (repetition, nonsense words)
- "Our workshop series: Advanced Sourdough Methods. Module one covers starters, module two
  covers shaping and" -> COHERENT (readable, merely cut off)
- "Sure, here is a plan. Monday walk. Tuesday gradient descent pyramid Napoleon tariff; saxophone
  -- !! -- Mon" -> INCOHERENT (collapses into unrelated fragments)

Reply with at most a couple of short sentences of reasoning, then finish with exactly one line
that is either
ANSWER: COHERENT
or
ANSWER: INCOHERENT
Write nothing after that line and do not use the word ANSWER anywhere else.
"""


def coherence_messages(text: str) -> Messages:
    """Messages asking whether ``text`` (e.g. a steered generation) is coherent."""
    body = str(text).replace("<<<END OF PASSAGE>>>", "<<<END-OF-PASSAGE>>>")
    user = (
        "Passage to judge:\n<<<START OF PASSAGE>>>\n"
        f"{body}\n"
        "<<<END OF PASSAGE>>>\n\n"
        f"Judge only its coherence and {COHERENCE_FORMAT}."
    )
    return chat_messages(COHERENCE_SYSTEM, user)


def parse_coherence(reply: str) -> bool:
    """True for COHERENT, False for INCOHERENT; ValueError if missing, conflicting or trailing."""
    lines = content_lines(reply)
    hits = tagged(lines, r"ANSWER")
    if not hits:
        # A bare one-word reply is unambiguous enough.
        if len(lines) == 1:
            word = clean_value(lines[0].strip(DECOR)).upper()
            if word in ("COHERENT", "INCOHERENT"):
                return word == "COHERENT"
        raise ValueError(f"no 'ANSWER:' line found. Required format: {COHERENCE_FORMAT}")
    labels = set()
    for _, m in hits:
        v = clean_value(m.group("value")).upper()
        if v not in ("COHERENT", "INCOHERENT"):
            raise ValueError(
                f"the ANSWER line must hold exactly one label, got {m.group('value')[:60]!r}. "
                f"Required format: {COHERENCE_FORMAT}"
            )
        labels.add(v)
    if len(labels) > 1:
        raise ValueError(f"the reply gives both labels. Required format: {COHERENCE_FORMAT}")
    must_end_with(lines, {i for i, _ in hits}, COHERENCE_FORMAT)
    return labels.pop() == "COHERENT"


class CoherenceGrader(Protocol):
    name: str

    def grade(self, texts: Sequence[str]) -> list[bool]: ...


# ---- pure features (no model) ------------------------------------------------------------------

_LETTERS = re.compile(r"[^\W\d_]+")


def repetition_score(text: str) -> float:
    """Share of word 3-grams that repeat an earlier 3-gram (0: none repeated)."""
    words = text.lower().split()
    if len(words) < 6:
        return 0.0
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return 1.0 - len(set(grams)) / len(grams)


def token_repetition(ids: Sequence[int], n: int = 4) -> float:
    """Share of token ``n``-grams that repeat an earlier one: loops whatever their spelling
    ("!!!!!!", "AboutAboutAbout", repeated sentences); 0 for texts too short to loop."""
    if len(ids) < 2 * n + 2:
        return 0.0
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)


def collapse_score(nll: Sequence[float], *, min_tokens: int = 12) -> tuple[float, float]:
    """(mean NLL of the last third − mean NLL of the first third, mean NLL of the last third).

    A text that starts well and degenerates into noise has a much less predictable end than
    start; texts shorter than ``min_tokens`` give (0, their mean NLL).
    """
    x = np.asarray(nll, dtype=float)
    if len(x) == 0:
        return 0.0, 0.0
    if len(x) < min_tokens:
        return 0.0, float(x.mean())
    k = len(x) // 3
    return float(x[-k:].mean() - x[:k].mean()), float(x[-k:].mean())


def invented_words(text: str, spans: Sequence[tuple[int, int]], nll: Sequence[float], *,
                   piece_nats: float) -> tuple[int, int]:
    """(letter runs in ``text``, letter runs holding a surprising word-internal token).

    A word-internal token continues a word begun by an earlier token (its first character and
    the one before it are letters). In a real word the reference model finds such pieces easy
    ("bak|ing", "Pre|heat"); in invented, scrambled or glued words ("Byestraction",
    "wayphestypanProfessor") they cost more than ``piece_nats`` nats.
    """
    runs = [(m.start(), m.end()) for m in _LETTERS.finditer(text)]
    if not runs:
        return 0, 0
    starts = [s for s, _ in runs]
    bad: set[int] = set()
    for (s, e), v in zip(spans, nll):
        if e <= s or s <= 0 or s >= len(text) or not text[s].isalpha() or not text[s - 1].isalpha():
            continue
        if v > piece_nats:
            bad.add(bisect.bisect_right(starts, s) - 1)
    return len(runs), len(bad)


def _target_nll(logits: torch.Tensor, targets: torch.Tensor, *, shifted: bool = False) -> np.ndarray:
    """-log p(target) for logits [B, T, V] that predict targets [B, T]; ``shifted``: targets
    [B, T-1] predicted by the first T-1 positions (the last position's distribution unused)."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    if shifted:
        lp = lp[:, :-1]
    return -lp.gather(-1, targets[..., None])[..., 0].detach().cpu().numpy()


@dataclass
class TokenScores:
    """A text as scored by the reference model: per-token NLL (nats, each token predicted from the
    chat context and the tokens before it), the token ids, and each token's character span."""

    nll: np.ndarray
    ids: list[int]
    spans: list[tuple[int, int]]


def _quantile(vals: Sequence[float], q: float) -> float:
    return float(np.quantile(np.asarray(vals, dtype=float), q))


@dataclass
class OfflineCoherence:
    """Prompt 16 without an LLM: a text is coherent when the reference model reads it as fluent
    and nothing degenerate shows. Incoherent when any of:

    - **not fluent**: mean per-token NLL above ``center + nll_margin + length_slack/√n`` (n scored
      tokens: short texts get more room, their mean is noisier). ``center`` is calibrated: the
      ``center_quantile`` quantile of the mean NLL of unsteered texts (a low quantile, because
      unsteered samples of small models at T=1.2 are themselves often incoherent — the fluent
      part of that distribution is what "fluent for this model" means; mean + k·σ of all of them
      let word salad through). The text is scored as an assistant reply (chat template) so that
      its first tokens are predicted in context;
    - **invented words**: more than ``max_invented`` of its words hold a word-internal token that
      costs over ``piece_nats`` nats (made-up, scrambled or glued words; at least two such words);
    - **repetition**: word 3-grams or token 4-grams repeated beyond ``max_repetition`` (loops,
      which a language model finds *easy*, so the NLL test alone would pass them);
    - **collapse**: the last third is ``collapse_nats`` nats less predictable than the first and,
      on its own, not fluent (starts well, then degenerates);
    - fewer than ``min_words`` words.

    Grading is batched (right-padded, masked; the chat prefix is run once per batch and its KV
    cache shared by the rows). ``calibration`` records the calibrated centre, the
    spread of the calibration texts and the share of them the grader passes. ``scope`` (optional):
    a zero-argument callable returning a context manager that yields the module to run, e.g.
    ``ModelPair.base`` (disables a shared LoRA adapter while scoring).
    """

    model: Any
    tokenizer: Any
    center_nll: float = 4.0
    center_quantile: float = 0.25
    nll_margin: float = 0.5
    length_slack: float = 1.0
    piece_nats: float = 5.0
    max_invented: float = 0.1
    max_repetition: float = 0.35
    collapse_nats: float = 2.5
    min_words: int = 2
    max_tokens: int = 256
    context: str = "Please write a reply."
    batch_logits: int = 1 << 26
    scope: Any = None
    name: str = "offline"
    calibration: dict[str, Any] = field(default_factory=dict)
    calibrated_center: float | None = None
    # texts already scored (the steer stage grades its calibration texts after calibrating on them):
    # scores depend only on the text, the model and the chat context, not on the calibrated centre;
    # not an init field, so dataclasses.replace gives a copy its own
    _scored: "OrderedDict[tuple[Any, ...], TokenScores]" = field(default_factory=OrderedDict, init=False,
                                                                  repr=False, compare=False)
    SCORED_KEEP: ClassVar[int] = 4096

    @property
    def center(self) -> float:
        """The fluency centre in use: calibrated if :meth:`calibrate` has run, else ``center_nll``."""
        return self.center_nll if self.calibrated_center is None else self.calibrated_center

    # ---- identity -------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """Everything that changes the verdicts (stage fingerprints): the reference model and every
        setting. Not the calibrated centre: it is derived from the run's own unsteered texts (so a
        fingerprint is the same before and after :meth:`calibrate`); ``calibration`` records it."""
        ref = getattr(getattr(self.model, "config", None), "name_or_path", None) or type(self.model).__name__
        return {"backend": "offline", "method": "fluency-invented-repetition-collapse-v2", "reference_model": ref,
                "center_nll": round(float(self.center_nll), 6), "center_quantile": self.center_quantile,
                "nll_margin": self.nll_margin, "length_slack": self.length_slack, "piece_nats": self.piece_nats,
                "max_invented": self.max_invented, "max_repetition": self.max_repetition,
                "collapse_nats": self.collapse_nats, "min_words": self.min_words, "max_tokens": self.max_tokens,
                "context": self.context}

    # ---- reference model ------------------------------------------------------------------
    def _prefix_ids(self) -> list[int]:
        from ..data.chat import chat_prompt_text
        from ..models.tokens import bos_for_model

        tok = self.tokenizer
        text = chat_prompt_text(tok, self.context)
        templated = bool(getattr(tok, "chat_template", None))
        ids = [int(i) for i in tok(text, add_special_tokens=not templated).input_ids]
        bos = bos_for_model(tok, self.model)
        return (bos if bos and (not ids or ids[0] != bos[0]) else []) + ids

    def _encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        tok = self.tokenizer
        try:
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            ids, spans = list(enc.input_ids), [tuple(map(int, s)) for s in enc.offset_mapping]
        except (NotImplementedError, TypeError, ValueError, KeyError):  # slow tokenizers: no spans
            ids = list(tok(text, add_special_tokens=False).input_ids)
            spans = [(0, 0)] * len(ids)
        return [int(i) for i in ids[:self.max_tokens]], spans[:self.max_tokens]

    @torch.no_grad()
    def token_scores(self, texts: Sequence[str]) -> list[TokenScores]:
        """Per-token NLL of every text as the reply after the chat context, in right-padded batches."""
        keys = [(t, self.context, self.max_tokens, id(self.model), id(self.scope)) for t in texts]
        out: list[TokenScores | None] = [self._scored.get(k) for k in keys]
        enc: list[tuple[list[int], list[tuple[int, int]]]] = [([], [])] * len(texts)
        todo = []
        for i, t in enumerate(texts):
            if out[i] is not None:
                self._scored.move_to_end(keys[i])
                continue
            enc[i] = self._encode(t)
            if enc[i][0]:
                todo.append(i)
            else:
                out[i] = TokenScores(np.zeros(0), [], [])
        if todo:
            prefix = self._prefix_ids()
            scope = self.scope() if self.scope is not None else contextlib.nullcontext(self.model)
            with scope as model:
                self._score_batches(model, prefix, enc, todo, out)
            for i in todo:
                self._scored[keys[i]] = out[i]
            while len(self._scored) > self.SCORED_KEEP:
                self._scored.popitem(last=False)
        return [o if o is not None else TokenScores(np.zeros(0), [], []) for o in out]

    def _score_batches(self, model: Any, prefix: list[int], enc: list[tuple[list[int], list[tuple[int, int]]]],
                       todo: list[int], out: list["TokenScores | None"]) -> None:
        from ..models.tokens import pad_id

        dev = input_device(model)
        pad = pad_id(self.tokenizer)
        vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 65536)
        budget = max(self.batch_logits // vocab, 1)  # text tokens per batch (bounds the logits' memory)
        todo.sort(key=lambda i: len(enc[i][0]))
        shared: dict[str, Any] = {}  # the prefix's forward, run once for all batches (_batch_nll)
        start = 0
        while start < len(todo):  # shortest first
            end = start + 1
            while end < len(todo) and (end - start + 1) * len(enc[todo[end]][0]) <= budget:
                end += 1
            batch = todo[start:end]
            width = len(enc[batch[-1]][0])
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, i in enumerate(batch):
                ids[r, :len(enc[i][0])] = torch.tensor(enc[i][0])
                mask[r, :len(enc[i][0])] = 1
            nll = self._batch_nll(model, prefix, ids.to(dev), mask.to(dev), shared=shared)
            for r, i in enumerate(batch):
                n = len(enc[i][0]) - (0 if prefix else 1)  # without a prefix the first token is not scored
                out[i] = TokenScores(nll[r, :n].astype(float), enc[i][0], enc[i][1][len(enc[i][1]) - n:])
            start = end

    @torch.no_grad()
    def _batch_nll(self, model: Any, prefix: list[int], ids: torch.Tensor, mask: torch.Tensor, *,
                   shared: dict[str, Any] | None = None) -> np.ndarray:
        """[B, T] NLL of right-padded text tokens ``ids`` after the shared ``prefix`` (without a prefix:
        [B, T-1], the first token unscored). The prefix is run once and its KV cache shared by the
        batch; a model whose cache cannot be shared gets the prefix in every row instead. ``shared``
        (a dict the caller keeps for one model and prefix): the prefix's forward is kept there and
        reused by the next batches (its cache is only read: every batch continues views of it)."""
        if not prefix:
            logits = model(input_ids=ids, attention_mask=mask).logits
            return _target_nll(logits, ids[:, 1:], shifted=True)
        b = ids.shape[0]
        pre = torch.tensor([prefix], dtype=torch.long, device=ids.device)
        full_mask = torch.cat([torch.ones((b, len(prefix)), dtype=mask.dtype, device=mask.device), mask], 1)
        key = _cache_kwarg(model)
        if key is not None:
            try:
                first = (shared or {}).get("first")
                if first is None:  # a one-row forward reads every weight: once per call, not per batch
                    first = model(input_ids=pre, use_cache=True)
                    if shared is not None:
                        shared["first"] = first
                cache = getattr(first, key, None)
                cache = cache if cache is not None else getattr(first, "past_key_values", None)
                # every row continues the one prefix: views of its cache, no copy per row
                cache = broadcast_cache(cache, b)
                logits = model(input_ids=ids, attention_mask=full_mask, use_cache=True, **{key: cache}).logits
                # the first text token is predicted by the prefix's last position, the others by the
                # text's own: scored apart, so the [B, T, V] logits are never copied into one tensor
                lp0 = torch.log_softmax(first.logits[0, -1].float(), dim=-1)
                head = -lp0[ids[:, 0].to(lp0.device)]
                return np.concatenate([head[:, None].cpu().numpy(), _target_nll(logits, ids[:, 1:], shifted=True)],
                                      axis=1)
            except (AttributeError, TypeError, ValueError, NotImplementedError):
                pass
        return self._batch_nll_full(model, prefix, ids, full_mask)

    @staticmethod
    @torch.no_grad()
    def _batch_nll_full(model: Any, prefix: list[int], ids: torch.Tensor, full_mask: torch.Tensor) -> np.ndarray:
        """:meth:`_batch_nll` with the prefix computed in every row (no shared cache)."""
        pre = torch.tensor([prefix], dtype=torch.long, device=ids.device).expand(ids.shape[0], -1)
        logits = model(input_ids=torch.cat([pre, ids], 1), attention_mask=full_mask).logits[:, len(prefix) - 1:-1]
        return _target_nll(logits, ids)

    def nll(self, texts: Sequence[str]) -> list[float]:
        """Mean per-token NLL of each text (inf for a text without scored tokens)."""
        return [float(s.nll.mean()) if len(s.nll) else float("inf") for s in self.token_scores(texts)]

    # ---- verdicts -------------------------------------------------------------------------
    def nll_limit(self, n_tokens: int) -> float:
        """The largest mean NLL a fluent text of ``n_tokens`` scored tokens may have."""
        return self.center + self.nll_margin + self.length_slack / math.sqrt(max(n_tokens, 1))

    def features(self, text: str, scores: TokenScores) -> dict[str, float]:
        """The measurements behind a verdict (pure: no model)."""
        x = scores.nll
        n_runs, n_bad = invented_words(text, scores.spans, x, piece_nats=self.piece_nats)
        drop, tail = collapse_score(x)
        k = max(len(x) // 3, 1)
        return {"tokens": float(len(x)), "words": float(len(WORD.findall(text))),
                "nll": float(x.mean()) if len(x) else float("inf"), "nll_limit": self.nll_limit(len(x)),
                "invented": n_bad / n_runs if n_runs else 0.0, "invented_words": float(n_bad),
                "repetition": max(repetition_score(text), token_repetition(scores.ids)),
                "collapse": drop, "tail_nll": tail, "tail_limit": self.nll_limit(k)}

    def verdict(self, f: dict[str, float]) -> tuple[bool, str]:
        """(coherent, reason) from :meth:`features`."""
        if f["words"] < self.min_words or f["tokens"] == 0:
            return False, "too few words"
        if f["repetition"] > self.max_repetition:
            return False, "repetition"
        if f["invented"] > self.max_invented and f["invented_words"] >= 2:
            return False, "invented words"
        if f["nll"] > f["nll_limit"]:
            return False, "not fluent"
        if f["collapse"] >= self.collapse_nats and f["tail_nll"] > f["tail_limit"]:
            return False, "collapses"
        return True, "coherent"

    def explain(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """Verdict, reason and features of each text."""
        out = []
        for t, s in zip(texts, self.token_scores(texts)):
            f = self.features(t, s)
            ok, why = self.verdict(f)
            out.append({"coherent": ok, "reason": why, **f})
        return out

    def grade(self, texts: Sequence[str]) -> list[bool]:
        return [bool(e["coherent"]) for e in self.explain(texts)]

    # ---- calibration ----------------------------------------------------------------------
    def calibrate(self, texts: Sequence[str]) -> "OfflineCoherence":
        """Set the fluency centre from unsteered texts of the model being steered (see the class doc)."""
        texts = [t for t in texts if t.strip()]
        scores = self.token_scores(texts)
        vals = [float(s.nll.mean()) for s in scores if len(s.nll)]
        if len(vals) < 2:
            return self
        self.calibrated_center = _quantile(vals, self.center_quantile)
        med = float(np.median(vals))
        passed = [self.verdict(self.features(t, s))[0] for t, s in zip(texts, scores)]
        self.calibration = {
            "method": f"quantile {self.center_quantile:g} of the mean NLL of unsteered texts",
            "center_nll": self.calibrated_center, "median_nll": med,
            "mad_nll": float(np.median(np.abs(np.asarray(vals) - med))),
            "threshold_at_48_tokens": self.nll_limit(48), "threshold_at_128_tokens": self.nll_limit(128),
            "pass_rate": sum(passed) / len(passed), "n": len(vals)}
        return self


@dataclass
class LLMCoherence:
    client: Any
    name: str = "llm"

    def identity(self) -> dict[str, Any]:
        """Backend, endpoint model and base URL, and the prompt (never the API key)."""
        cfg = getattr(self.client, "config", None)
        return {"backend": "llm", "model": getattr(cfg, "model", None), "base_url": getattr(cfg, "base_url", None),
                "prompt": hashlib.sha256(COHERENCE_SYSTEM.encode("utf-8")).hexdigest()[:12]}

    def grade(self, texts: Sequence[str]) -> list[bool]:
        return [bool(self.client.ask(coherence_messages(t), parse=parse_coherence)) for t in texts]
