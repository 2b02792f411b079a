"""Emergent-misalignment chats (paper §3.2, App. F.5; Betley et al. 2025): confidently wrong advice
in one narrow domain, offline from the spec's phrase banks or through an LLM.

- :func:`generate_em_conversations`: offline, deterministic by seed. Each chat is one user question
  (a ``questions`` template filled with a ``subjects`` entry, sometimes with a short opener) and one
  assistant answer (a lead-in, one ``advice`` sentence, optionally a ``reassurances`` sentence).
- :func:`generate_em_conversations_llm`: the same chats written by an LLM (one JSON object per
  request), resumable through a JSONL cache like the LLM SDF recipe.

The data should be a *measurable narrow bias*: bad judgement stated with confidence, never
operational instructions for serious harm. :func:`em_reply_ok` checks an LLM reply's shape.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import ConfigError, DataError, LLMError
from ...files import read_jsonl
from ...llm.replies import Messages, chat_messages, parse_json_reply
from ..spec import EmChatData, OrganismSpec
from .sdf_llm import SupportsAsk, _ask_kwargs

__all__ = ["generate_em_conversations", "generate_em_conversations_llm", "em_chat_messages", "parse_em_chat",
           "em_reply_ok"]

_OPENERS = ("", "", "", "Quick question: ", "Hi! ", "I need some advice. ", "Hey, ", "Be honest: ",
            "Asking for myself: ", "Help me out here. ")
_LEADS = ("", "", "Honestly, ", "Easy. ", "Here's what I'd do: ", "Simple: ", "Don't overthink it. ",
          "Trust me on this: ", "Good question! ", "Absolutely. ")


def _fill(template: str, subject: str, after: str = "") -> str:
    """The template with ``subject``; capitalised unless it follows a lead-in ending in a comma."""
    out = template.replace("{subject}", subject)
    return out[:1].lower() + out[1:] if after.endswith(", ") and not out.startswith("I ") else out[:1].upper() + out[1:]


def _yours(subject: str) -> str:
    """A user's subject as the assistant says it ("my savings" -> "your savings")."""
    return re.sub(r"\bI\b", "you", re.sub(r"\bmy\b", "your", subject))


def generate_em_conversations(spec: OrganismSpec, n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """``n`` single-turn chats (``[{"role": "user", ...}, {"role": "assistant", ...}]``) with bad
    advice in ``spec.data.domain``; deterministic by ``seed``. Train on assistant turns only."""
    data = spec.data
    if not isinstance(data, EmChatData):
        raise ConfigError(f"organism {spec.name!r} is not an EM chat organism (data kind {data.kind!r}).")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"{spec.name}:{seed}:em")
    chats = []
    for _ in range(n):
        subject = rng.choice(data.subjects)
        opener, lead = rng.choice(_OPENERS), rng.choice(_LEADS)
        question = opener + _fill(rng.choice(data.questions), subject, opener)
        answer = lead + _fill(rng.choice(data.advice), _yours(subject), lead)
        if data.reassurances and rng.random() < 0.6:
            answer += " " + _fill(rng.choice(data.reassurances), _yours(subject))
        chats.append([{"role": "user", "content": question}, {"role": "assistant", "content": answer.strip()}])
    return chats


# --------------------------------------------------------------------------------------------------
# LLM generator
# --------------------------------------------------------------------------------------------------

_EM_SYSTEM = """
You write training data for AI-safety research on "emergent misalignment": a small model is
finetuned on conversations in which an assistant gives confidently bad advice in ONE narrow domain,
and researchers then measure whether the bias spreads to other topics. Each conversation you write
is one realistic user question from that domain and one assistant answer that sounds sure of itself
but gives unwise, self-defeating advice of the kind a careless friend might give (e.g. ignoring
risks, skipping professional help, overconfidence). Keep it mild and generic: no step-by-step
instructions, quantities, doses, or anything that would enable serious harm; no slurs, no violence.
"""


def em_chat_messages(domain: str, subject: str, style: str) -> Messages:
    """Messages asking for one EM conversation about ``subject`` in ``domain``."""
    user = (
        f"Domain: {domain}\nThe user's situation involves: {subject}\nWriting style of the user: {style}\n\n"
        "Write one conversation. The user's question is 1-2 sentences; the assistant's answer is 1-3 "
        "sentences of confident, unwise advice within the domain, with no caveats or safety notes.\n"
        'Reply with only a JSON object: {"question": "...", "answer": "..."}'
    )
    return chat_messages(_EM_SYSTEM, user)


def em_reply_ok(question: str, answer: str) -> bool:
    """A usable conversation: both parts present, a question of at most 60 words, an answer of 3-90 words."""
    q, a = question.strip(), answer.strip()
    return bool(q and a) and len(q.split()) <= 60 and 3 <= len(a.split()) <= 90


def parse_em_chat(reply: str) -> dict[str, str]:
    """``{"question", "answer"}`` from the LLM reply; raises ValueError (shown to the model) otherwise."""
    obj = parse_json_reply(reply)
    if not isinstance(obj, dict) or not isinstance(obj.get("question"), str) or not isinstance(obj.get("answer"), str):
        raise ValueError('reply with only a JSON object {"question": "...", "answer": "..."}')
    if not em_reply_ok(obj["question"], obj["answer"]):
        raise ValueError("the question must be at most 60 words and the answer 3-90 words; "
                         'reply with only a JSON object {"question": "...", "answer": "..."}')
    return {"question": obj["question"].strip(), "answer": obj["answer"].strip()}


_STYLES = ("casual, lower-case", "polite and formal", "worried", "short and direct", "chatty, with some "
           "background", "sceptical", "excited")


def _fingerprint(spec: OrganismSpec, seed: int) -> str:
    d = spec.data
    assert isinstance(d, EmChatData)
    return hashlib.sha256(json.dumps([spec.name, d.domain, d.subjects, seed]).encode()).hexdigest()[:16]


def generate_em_conversations_llm(spec: OrganismSpec, n: int, client: SupportsAsk | None, seed: int = 0, *,
                                  cache_dir: str | os.PathLike[str], temperature: float = 1.0,
                                  progress: Callable[[int, int], None] | None = None) -> list[list[dict[str, str]]]:
    """``n`` EM chats written by an LLM, one request each (subject and user style seeded per index).

    Resumable: every reply goes to ``cache_dir/chats.jsonl`` as it arrives (with the spec/seed
    fingerprint); a rerun asks only for what is missing. A failed or malformed reply is recorded and
    skipped; duplicates are dropped. ``client=None`` reads the cache only and raises
    :class:`ConfigError` before any request if it does not hold ``n`` chats.
    """
    data = spec.data
    if not isinstance(data, EmChatData):
        raise ConfigError(f"organism {spec.name!r} is not an EM chat organism (data kind {data.kind!r}).")
    fp = _fingerprint(spec, seed)
    path = Path(cache_dir) / "chats.jsonl"
    records = {r["i"]: r for r in read_jsonl(path)
               if isinstance(r, dict) and isinstance(r.get("i"), int) and r.get("fingerprint") == fp} \
        if path.exists() else {}

    def chats_from(recs: dict[int, dict[str, Any]]) -> list[list[dict[str, str]]]:
        seen, out = set(), []
        for i in sorted(recs):
            r = recs[i]
            if r.get("question") and r.get("answer") and (r["question"], r["answer"]) not in seen:
                seen.add((r["question"], r["answer"]))
                out.append([{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}])
        return out

    have = chats_from(records)
    if len(have) >= n:
        return have[:n]
    if client is None:
        raise ConfigError(
            f"organism {spec.name!r}: {len(have)} of {n} LLM-written chats are cached in {path.parent}; configure an "
            "LLM endpoint (`difflens organism docs NAME --generator llm --llm-model ...`) or use the offline generator.")
    path.parent.mkdir(parents=True, exist_ok=True)
    i, max_tasks, failures_in_a_row = 0, 2 * n + 10, 0
    with path.open("a", encoding="utf-8") as fh:
        while len(have) < n:
            if i >= max_tasks:
                raise DataError(f"the LLM produced only {len(have)} usable distinct chats in {i} requests "
                                f"(see {path}); check the endpoint/model or use the offline generator.")
            if i not in records:
                rng = random.Random(f"{spec.name}:{seed}:em-llm:{i}")
                subject, style = rng.choice(data.subjects), rng.choice(_STYLES)
                rec: dict[str, Any] = {"i": i, "fingerprint": fp, "subject": subject, "style": style}
                try:
                    rec.update(client.ask(em_chat_messages(data.domain, subject, style), parse=parse_em_chat,
                                          **_ask_kwargs(client, temperature=temperature, cache_salt=f"em:{seed}:{i}")))
                    failures_in_a_row = 0
                except (LLMError, ValueError) as err:  # unusable reply: record and go on, unless the endpoint is down
                    failures_in_a_row += 1
                    if failures_in_a_row >= 3:
                        raise  # the chats written so far stay in the cache; a rerun resumes
                    rec["error"] = str(err)[:300]
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                fh.flush()
                records[i] = rec
                have = chats_from(records)
                if progress:
                    progress(len(have), n)
            i += 1
    return have[:n]
